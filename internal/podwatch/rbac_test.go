package podwatch

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"io"
	"os"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifests returns the documents of a multi-document YAML file, each with
// its kind.
func manifests(t *testing.T, path string) map[string][][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string][][]byte{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if tm.Kind != "" {
			docs[tm.Kind] = append(docs[tm.Kind], doc)
		}
	}
}

// one decodes the only document of a kind, strictly: a misspelt field
// (resourceName for resourceNames) would otherwise vanish silently.
func one(t *testing.T, docs map[string][][]byte, kind string, into any) {
	t.Helper()
	if len(docs[kind]) != 1 {
		t.Fatalf("%d %s documents, want 1", len(docs[kind]), kind)
	}
	if err := yaml.UnmarshalStrict(docs[kind][0], into); err != nil {
		t.Fatalf("%s: %v", kind, err)
	}
}

// The agent's account may read pods and nothing else: the informer needs
// get, list and watch on pods; a wider grant (secrets, pods/log, exec) on
// every GPU node would be a cluster-wide leak through one compromised
// agent.
func TestRBACGrantsReadOnPodsOnly(t *testing.T) {
	docs := manifests(t, "../../deploy/rbac.yaml")
	for kind := range docs {
		switch kind {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
		default:
			t.Errorf("unexpected %s in rbac.yaml", kind)
		}
	}
	var sa corev1.ServiceAccount
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	one(t, docs, "ServiceAccount", &sa)
	one(t, docs, "ClusterRole", &role)
	one(t, docs, "ClusterRoleBinding", &binding)

	type grant struct{ group, resource, verb string }
	var got []grant
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: resourceNames or nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, grant{g, res, v})
				}
			}
		}
	}
	if role.AggregationRule != nil {
		t.Error("an aggregated ClusterRole grants whatever other roles add")
	}
	want := []grant{{"", "pods", "get"}, {"", "pods", "list"}, {"", "pods", "watch"}}
	slices.SortFunc(got, func(a, b grant) int {
		return cmp.Compare(a.group+"/"+a.resource+"/"+a.verb, b.group+"/"+b.resource+"/"+b.verb)
	})
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants %+v, want exactly %+v", got, want)
	}

	if sa.Name != "gpu-agent" {
		t.Errorf("ServiceAccount %q, want gpu-agent", sa.Name)
	}
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("roleRef = %+v, want ClusterRole %q", binding.RoleRef, role.Name)
	}
	wantSubject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}
	if len(binding.Subjects) != 1 || binding.Subjects[0] != wantSubject {
		t.Errorf("subjects = %+v, want only %+v", binding.Subjects, wantSubject)
	}

	// The account must live where the DaemonSet runs, or the pods cannot
	// use it.
	var ds appsv1.DaemonSet
	one(t, manifests(t, "../../deploy/daemonset.yaml"), "DaemonSet", &ds)
	if sa.Namespace != ds.Namespace {
		t.Errorf("ServiceAccount in %q, DaemonSet in %q", sa.Namespace, ds.Namespace)
	}
}

// A DaemonSet that names no account runs its pods as "default", which
// this RBAC does not bind: the pod watch would fail with 403.
func TestDaemonSetRunsAsTheAgentAccount(t *testing.T) {
	var ds appsv1.DaemonSet
	one(t, manifests(t, "../../deploy/daemonset.yaml"), "DaemonSet", &ds)
	if sa := ds.Spec.Template.Spec.ServiceAccountName; sa != "gpu-agent" {
		t.Errorf("DaemonSet runs as %q; deploy/rbac.yaml binds gpu-agent", cmp.Or(sa, "default"))
	}
}
