package attribution

import (
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
)

// dcgm-exporter's own cases (internal/pkg/utils/utils_test.go,
// TestSanitizeLabelName) and the label keys Kubernetes allows: a DNS
// prefix, a slash, dots and dashes.
func TestSanitizeLabelName(t *testing.T) {
	for in, want := range map[string]string{
		"label.with.dots/and-slashes":  "label_with_dots_and_slashes",
		"label@with#special!chars":     "label_with_special_chars",
		"valid_label_name":             "valid_label_name",
		"123label":                     "_123label",
		"__name__":                     "_name__",
		"":                             "_",
		"app.kubernetes.io/name":       "app_kubernetes_io_name",
		"app":                          "app",
		"CamelCase":                    "CamelCase",
		"pod-template-hash":            "pod_template_hash",
		"9":                            "_9",
		"___":                          "_",
		"/x":                           "_x",
		"__9abc":                       "_9abc",
		"team.example.com/cost-center": "team_example_com_cost_center",
		"é":                            "_", // one rune, one "_", as Go's regexp replaces it
		"a\xffb":                       "a_b",
	} {
		if got := SanitizeLabelName(in); got != want {
			t.Errorf("SanitizeLabelName(%q) = %q, want %q", in, got, want)
		}
	}
}

// Whatever the key, the name is a valid legacy Prometheus label name, not
// one of Prometheus's reserved "__" names, and sanitising it again changes
// nothing.
func FuzzSanitizeLabelName(f *testing.F) {
	for _, s := range []string{"", "app.kubernetes.io/name", "__name__", "1", "_", "__", "a-b", "é/ü", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		n := SanitizeLabelName(key)
		if !model.LegacyValidation.IsValidLabelName(n) {
			t.Fatalf("SanitizeLabelName(%q) = %q: not a valid label name", key, n)
		}
		if strings.HasPrefix(n, "__") {
			t.Fatalf("SanitizeLabelName(%q) = %q: a reserved name", key, n)
		}
		if again := SanitizeLabelName(n); again != n {
			t.Fatalf("SanitizeLabelName(%q) = %q, then %q", key, n, again)
		}
	})
}

func TestLabelAllowlist(t *testing.T) {
	labels := map[string]string{
		"app.kubernetes.io/name": "sfu", "app.kubernetes.io/instance": "sfu-0",
		"team": "media", "pod-template-hash": "7c9d8f", "controller-revision-hash": "sfu-5d4",
	}
	for _, tc := range []struct {
		name     string
		patterns []string
		want     []string // the keys kept
	}{
		{"no patterns keep every label", nil, []string{"app.kubernetes.io/instance", "app.kubernetes.io/name", "controller-revision-hash", "pod-template-hash", "team"}},
		// Unanchored, as Go's MatchString, on the key before sanitising:
		// "name" matches inside app.kubernetes.io/name.
		{"unanchored", []string{"name"}, []string{"app.kubernetes.io/name"}},
		{"the raw key", []string{`^app\.kubernetes\.io/`}, []string{"app.kubernetes.io/instance", "app.kubernetes.io/name"}},
		{"the sanitised name does not match", []string{"^app_kubernetes_io_"}, nil},
		{"any pattern", []string{"^team$", "hash$"}, []string{"controller-revision-hash", "pod-template-hash", "team"}},
		{"an empty pattern matches every key", []string{"^team$", ""}, []string{"app.kubernetes.io/instance", "app.kubernetes.io/name", "controller-revision-hash", "pod-template-hash", "team"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewLabelAllowlist(tc.patterns)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for k := range a.Filter(labels) {
				got = append(got, k)
			}
			if !sameSet(got, tc.want) {
				t.Errorf("kept %v, want %v", got, tc.want)
			}
			for _, k := range tc.want {
				if !a.Allows(k) {
					t.Errorf("Allows(%q) = false", k)
				}
			}
		})
	}
	var none *LabelAllowlist
	if !none.Allows("anything") {
		t.Error("a nil allowlist refuses a label")
	}
	if _, err := NewLabelAllowlist([]string{"^ok$", "a(b"}); err == nil || !strings.Contains(err.Error(), `"a(b"`) {
		t.Errorf("a bad pattern: err = %v, want one naming it", err)
	}
}

func sameSet(a, b []string) bool {
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestNewPodMeta(t *testing.T) {
	m := NewPodMeta("0b6f2c3e-5a71-4d2b-9c84-2f1e7a9d3c10", map[string]string{
		"team":                   "media",
		"app.kubernetes.io/name": "sfu",
		// Both sanitise to app_kubernetes_io_name: the first key in byte
		// order ('.' < '_') keeps the name.
		"app_kubernetes_io_name": "other",
		"1st":                    "one",
	})
	want := &PodMeta{UID: "0b6f2c3e-5a71-4d2b-9c84-2f1e7a9d3c10", Labels: []PodLabel{
		{"_1st", "one"}, {"app_kubernetes_io_name", "sfu"}, {"team", "media"},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("NewPodMeta = %+v, want %+v", m, want)
	}
	// Labels not asked for, and asked for on a pod that has none.
	if m := NewPodMeta("u", nil); m.UID != "u" || m.Labels != nil {
		t.Errorf("without labels: %+v", m)
	}
	if m := NewPodMeta("", map[string]string{}); m.UID != "" || m.Labels == nil || len(m.Labels) != 0 {
		t.Errorf("a pod without labels: %+v", m)
	}
}

type metaTable map[string]*PodMeta

func (m metaTable) PodMeta(ns, name string) *PodMeta { return m[ns+"/"+name] }

// The view joins every device's pods with their metadata by namespace and
// name: a whole GPU's, a shared GPU's, a MIG instance's. A pod the source
// does not know has none, and the pod map itself is never written to.
func TestViewJoinsPodMetas(t *testing.T) {
	inference := NewPodMeta("uid-inference", map[string]string{"app": "inference"})
	sfu0 := NewPodMeta("uid-sfu-0", map[string]string{"app": "sfu"})
	small := NewPodMeta("uid-small", nil)
	metas := metaTable{"ml/inference-0": inference, "media/sfu-0": sfu0, "ml/small": small}
	a := assignments()
	at := NewAttributor(fixedSnap{node()}, fixedAssignments{a}, nil, WithPodMetas(metas))
	v := at.Latest()
	got := map[string]*PodMeta{}
	for _, d := range v.Devices {
		for _, p := range d.Pods {
			got[d.UUID()+" "+p.Namespace+"/"+p.Name] = p.Meta
		}
	}
	want := map[string]*PodMeta{
		uuidWhole + " ml/inference-0": inference,
		uuidShared + " media/sfu-0":   sfu0,
		uuidShared + " media/sfu-1":   nil, // not known to the source (yet)
		migB + " ml/small":            small,
		uuidLost + " ml/trainer":      nil,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pods' metadata:\n%v\nwant\n%v", got, want)
	}
	for _, uuid := range []string{uuidWhole, uuidShared, migB} {
		for _, p := range a.Pods(uuid) {
			if p.Meta != nil {
				t.Errorf("the pod map's %s/%s was given metadata", p.Namespace, p.Name)
			}
		}
	}
	// Without the option, no pod has metadata.
	for _, d := range NewAttributor(fixedSnap{node()}, fixedAssignments{a}, nil).Latest().Devices {
		for _, p := range d.Pods {
			if p.Meta != nil {
				t.Errorf("%s/%s has metadata nobody asked for", p.Namespace, p.Name)
			}
		}
	}
}
