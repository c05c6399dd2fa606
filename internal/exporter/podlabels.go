package exporter

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/attribution"
)

// Pod UIDs and pod labels (dcgm-exporter's --kubernetes-enable-pod-uid and
// --kubernetes-enable-pod-labels) on the series of a pod: a GPU one pod
// holds, each pod's series of a shared GPU, a MIG instance's pod. The
// view's pods carry them (attribution.Pod.Meta, from the pod watch) only
// where they were asked for, so a pod without Meta is written as before.
//
// dcgm-exporter writes them as its template orders them: the device's
// labels, then its "Labels" map sorted by name (the field list's label
// fields such as DCGM_FI_DRIVER_VERSION and the pod labels, merged), then
// its "Attributes" sorted (container, namespace, pod, pod_uid). The agent
// writes every series' labels sorted by name, as the registry does; order
// carries no meaning in Prometheus.
//
// A pod label whose (sanitised) name is one the series already has is
// left out here. dcgm-exporter writes a pod label named like a device or
// pod label ("pod", "gpu", "Hostname", ...) a second time, which makes
// Prometheus reject the whole scrape, and one named like a field list's
// label field (DCGM_FI_DRIVER_VERSION) overwrites that field's value; the
// series' own labels keep their meaning here instead.

// podUIDLabel is dcgm-exporter's uidAttribute.
const podUIDLabel = "pod_uid"

// familyLabels are the labels that families add to a target's (their
// extra label names): a pod label of one of these names would clash on
// those families only, so it is left out of every series, for a pod's
// series to carry the same pod labels in every family.
// TestPodLabelsNeverClash finds any family label missing here.
var familyLabels = []string{"err_code", "err_msg", "engine", "codec", "stat", "xid", "window_size_in_ms"}

// podMetaTarget is the target of a pod with metadata: names and values
// (the device's labels and the pod's namespace, pod and container), then
// pod_uid and the pod labels that clash with none of the series' labels.
func podMetaTarget(names, values []string, m *attribution.PodMeta, mig bool) target {
	n := len(names) + 1 + len(m.Labels)
	ns := append(make([]string, 0, n), names...)
	vs := append(make([]string, 0, n), values...)
	if m.UID != "" {
		ns, vs = append(ns, podUIDLabel), append(vs, m.UID)
	}
	for _, l := range m.Labels {
		if !reservedLabel(names, l.Name) {
			ns, vs = append(ns, l.Name), append(vs, l.Value)
		}
	}
	t := target{labels: newLabelSet(ns, vs), mig: mig, pod: true}
	// Only a target with labels beyond the layout's needs a Desc of its own.
	t.meta = len(ns) > len(names)
	return t
}

// reservedLabel reports whether a pod label of this name would clash with
// a label the exporter writes on a device series: names (the target's
// device and pod labels, in the layout's spelling), a MIG instance's, the
// pod UID's, or a family's own.
func reservedLabel(names []string, name string) bool {
	return name == podUIDLabel || slices.Contains(names, name) ||
		slices.Contains(migLabels, name) || slices.Contains(familyLabels, name)
}

// metaDesc is a family's Desc for a target with pod metadata, whose label
// names vary from pod to pod. Only the registry's path (Latest, tests)
// asks for it: the text writer writes labels without a Desc.
func (f *family) metaDesc(t target) *prometheus.Desc {
	names := make([]string, len(t.labels))
	for i, p := range t.labels {
		names[i] = p.GetName()
	}
	return prometheus.NewDesc(f.name, f.help, names, nil)
}
