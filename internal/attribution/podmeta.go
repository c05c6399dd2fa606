package attribution

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// PodMeta is what the API server knows of a pod beyond its name, as
// dcgm-exporter's --kubernetes-enable-pod-uid and
// --kubernetes-enable-pod-labels add it to a pod's series: its UID and its
// labels. The kubelet's pod-resources API, which names the pods holding
// devices, carries neither (its PodResources message has a name, a
// namespace and containers only), so they come from the node's pod watch,
// joined by namespace and name.
//
// A PodMeta is immutable once made (NewPodMeta), so a pod's is shared by
// every view and every reader.
type PodMeta struct {
	// UID is the pod's metadata.uid; empty when it was not asked for.
	UID string
	// Labels are the pod's labels that the allowlist let through, each
	// name sanitised into a Prometheus label name (SanitizeLabelName),
	// sorted by name, names unique; nil when labels were not asked for.
	Labels []PodLabel
}

// PodLabel is one pod label as the exporter writes it.
type PodLabel struct{ Name, Value string }

// PodMetas gives the metadata of the node's pods by namespace and name:
// the pod watch (internal/podwatch), or the simulated node's table.
type PodMetas interface {
	// PodMeta returns the pod's metadata, or nil when the pod is not known
	// (yet): its series then go without, as before the watch's first list.
	PodMeta(namespace, name string) *PodMeta
}

// NewPodMeta makes the metadata of a pod from its UID ("" to leave it
// out) and the labels to keep (nil when labels were not asked for; the
// caller has applied the allowlist, to the keys as the API server gives
// them). Each key is sanitised into a label name; where two keys sanitise
// to the same name ("app.kubernetes.io/name" and "app_kubernetes_io_name"),
// the first key in byte order keeps it and the other is left out:
// dcgm-exporter copies a map, so which one it keeps is chance, and a
// series whose labels change between scrapes is a new series.
func NewPodMeta(uid string, labels map[string]string) *PodMeta {
	m := &PodMeta{UID: uid}
	if labels == nil {
		return m
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	m.Labels = make([]PodLabel, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		n := SanitizeLabelName(k)
		if seen[n] {
			continue
		}
		seen[n] = true
		m.Labels = append(m.Labels, PodLabel{Name: n, Value: labels[k]})
	}
	slices.SortFunc(m.Labels, func(a, b PodLabel) int { return cmp.Compare(a.Name, b.Name) })
	return m
}

// SanitizeLabelName turns a pod label's key into a Prometheus label name
// as dcgm-exporter does (its internal/pkg/utils/utils.go,
// SanitizeLabelName, since commit 7ad58324; before it, only the first
// rule): every character but [a-zA-Z0-9_] becomes "_"; an empty result is
// "_"; a leading digit gets a "_" in front; a leading run of underscores
// becomes one, since names starting with "__" are Prometheus's own.
// So "app.kubernetes.io/name" is "app_kubernetes_io_name", "123label" is
// "_123label" and "__name__" is "_name__".
func SanitizeLabelName(key string) string {
	s := invalidLabelChar.ReplaceAllString(key, "_")
	if s == "" {
		return "_"
	}
	if s[0] >= '0' && s[0] <= '9' {
		s = "_" + s
	}
	if strings.HasPrefix(s, "__") {
		s = "_" + strings.TrimLeft(s, "_")
	}
	return s
}

// invalidLabelChar is dcgm-exporter's invalidLabelCharRE: one match per
// rune (an invalid UTF-8 byte is one), each replaced by one "_".
var invalidLabelChar = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// LabelAllowlist is dcgm-exporter's --kubernetes-pod-label-allowlist-regex:
// a pod label is kept when any pattern matches its key (Go's regexp,
// unanchored, on the key as the API server gives it, before it is
// sanitised); with no patterns every label is kept. An empty pattern
// matches every key, so "app," keeps every label, as it does in
// dcgm-exporter.
type LabelAllowlist struct {
	patterns []*regexp.Regexp
}

// NewLabelAllowlist compiles the patterns. Unlike dcgm-exporter, which
// logs a pattern that does not compile and goes on without it (and keeps
// every label when none compiles), a bad pattern is an error: the agent
// then fails to start rather than export labels nobody asked for.
func NewLabelAllowlist(patterns []string) (*LabelAllowlist, error) {
	a := &LabelAllowlist{}
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", p, err)
		}
		a.patterns = append(a.patterns, re)
	}
	return a, nil
}

// Allows reports whether a label with this key is kept. A nil allowlist
// keeps every label.
func (a *LabelAllowlist) Allows(key string) bool {
	if a == nil || len(a.patterns) == 0 {
		return true
	}
	for _, re := range a.patterns {
		if re.MatchString(key) {
			return true
		}
	}
	return false
}

// Filter returns the labels it allows: labels itself when it allows them
// all, nil when it allows none of them.
func (a *LabelAllowlist) Filter(labels map[string]string) map[string]string {
	n := 0
	for k := range labels {
		if a.Allows(k) {
			n++
		}
	}
	switch n {
	case len(labels):
		return labels
	case 0:
		return nil
	}
	out := make(map[string]string, n)
	for k, v := range labels {
		if a.Allows(k) {
			out[k] = v
		}
	}
	return out
}
