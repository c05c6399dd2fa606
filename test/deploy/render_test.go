package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

// repo is the repository root, from this package's directory.
const repo = "../.."

// object is one decoded manifest document.
type object struct {
	Source     string // file or template it came from
	APIVersion string
	Kind       string
	Name       string
	Namespace  string
	Obj        any    // the typed object: *appsv1.DaemonSet, ...
	JSON       []byte // the document as JSON
}

func (o object) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", o.Kind, o.Namespace, o.Name, o.Source)
}

// types are the kinds the deploy files may hold, each with the real Go
// type of its API group, as the API server (or the CRD's controller)
// decodes it.
var types = map[string]func() any{
	"v1/Namespace":      func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount": func() any { return &corev1.ServiceAccount{} },
	"v1/Service":        func() any { return &corev1.Service{} },
	"v1/Secret":         func() any { return &corev1.Secret{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
	"apps/v1/DaemonSet":                               func() any { return &appsv1.DaemonSet{} },
	"apps/v1/Deployment":                              func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":                   func() any { return &policyv1.PodDisruptionBudget{} },
	"monitoring.coreos.com/v1/ServiceMonitor":         func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule":         func() any { return &monitoringv1.PrometheusRule{} },
	"keda.sh/v1alpha1/ScaledObject":                   func() any { return &kedav1alpha1.ScaledObject{} },
}

// decodeStrict decodes one YAML document into its kind's Go type as the
// API server does: YAML duplicate keys, unknown fields and fields of the
// wrong case are errors (sigs.k8s.io/json is case-sensitive, unlike
// encoding/json).
func decodeStrict(source string, doc []byte) (object, error) {
	js, err := sigsyaml.YAMLToJSONStrict(doc)
	if err != nil {
		return object{}, fmt.Errorf("%s: %w", source, err)
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return object{}, fmt.Errorf("%s: %w", source, err)
	}
	newObj, ok := types[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("%s: %s %s: not a kind the deploy files may hold", source, tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return object{}, fmt.Errorf("%s: %s %s: %w", source, tm.Kind, tm.Metadata.Name, err)
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("%s: %s %s: %w", source, tm.Kind, tm.Metadata.Name, errors.Join(strict...))
	}
	if tm.Metadata.Name == "" {
		return object{}, fmt.Errorf("%s: %s without a name", source, tm.Kind)
	}
	return object{Source: source, APIVersion: tm.APIVersion, Kind: tm.Kind, Name: tm.Metadata.Name,
		Namespace: tm.Metadata.Namespace, Obj: obj, JSON: js}, nil
}

// decodeAll decodes every document of a multi-document YAML stream.
func decodeAll(source string, data []byte) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufioReader(data))
	var out []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		o, err := decodeStrict(source, doc)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
}

// stripComments drops whole-line comments, to tell an empty document.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// kustomized decodes a committed build of a kustomization
// (testdata/kustomize/NAME.yaml, which the kustomize package's test keeps
// equal to kubectl apply -k's). The build cannot run here: kustomize
// imports "plugin", whose link mode (-z now) stops a binary that also
// links go-nvml, as the agent's flag set does, from starting.
func kustomized(t *testing.T, name string) []object {
	t.Helper()
	p := filepath.Join("testdata", "kustomize", name+".yaml")
	y, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run: go test ./kustomize -update)", err)
	}
	objs, err := decodeAll(p, y)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// manifestFiles lists every YAML file under deploy/ that is a manifest
// (not a kustomization, not the Helm chart's templates or values).
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(repo, "deploy"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "helm" {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".yaml") && d.Name() != "kustomization.yaml" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// byKind indexes objects by kind.
func byKind(objs []object) map[string][]object {
	m := map[string][]object{}
	for _, o := range objs {
		m[o.Kind] = append(m[o.Kind], o)
	}
	return m
}

// one returns the only object of a kind with a name, failing otherwise.
func one[T any](t *testing.T, objs []object, kind, name string) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if o.Kind == kind && (name == "" || o.Name == name) {
			found = append(found, o.Obj.(T))
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %q, found %d", kind, name, len(found))
	}
	return found[0]
}
