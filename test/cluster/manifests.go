package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// deployBuild is the committed kustomize build of deploy/ (kubectl apply
// -k deploy/), which test/deploy's TestBuildsCommitted keeps equal to the
// kustomization: kustomize itself cannot be linked into this module.
const deployBuild = "../deploy/testdata/kustomize/deploy.yaml"

// PrometheusOperatorCRDs returns the ServiceMonitor and PrometheusRule CRD
// files of the Prometheus Operator's module at PrometheusOperatorVersion,
// as its release publishes them (example/prometheus-operator-crd),
// downloading the module if needed.
func PrometheusOperatorCRDs(ctx context.Context) ([]string, error) {
	const module = "github.com/prometheus-operator/prometheus-operator"
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module+"@"+PrometheusOperatorVersion)
	cmd.Dir = os.TempDir() // outside any module: the version is the pin
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); err != nil || jerr != nil || m.Dir == "" {
		return nil, fmt.Errorf("%w: go mod download %s@%s: %v %v %s", errSkip, module, PrometheusOperatorVersion, err, jerr, m.Error)
	}
	var files []string
	for _, kind := range []string{"servicemonitors", "prometheusrules"} {
		f := filepath.Join(m.Dir, "example", "prometheus-operator-crd", "monitoring.coreos.com_"+kind+".yaml")
		if _, err := os.Stat(f); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// Objects splits a multi-document YAML file into objects, in file order.
func Objects(path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if m == nil {
			continue // an empty document
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// ApplyStrict server-side applies obj as kubectl apply --server-side
// --force-conflicts --validate=strict does, and returns what the API
// server stored and the warnings it sent. dryRun asks it to validate and
// admit without storing.
func (c *ControlPlane) ApplyStrict(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, []string, error) {
	gvr, namespaced, err := c.resourceFor(obj.GroupVersionKind())
	if err != nil {
		return nil, nil, err
	}
	warnings := &warningSink{}
	cfg := rest.CopyConfig(c.Config)
	cfg.WarningHandlerWithContext = warnings
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	var ri dynamic.ResourceInterface = client.Resource(gvr)
	if namespaced {
		if obj.GetNamespace() == "" {
			return nil, nil, fmt.Errorf("%s %s is namespaced and names no namespace", obj.GetKind(), obj.GetName())
		}
		ri = client.Resource(gvr).Namespace(obj.GetNamespace())
	}
	data, err := json.Marshal(obj.Object)
	if err != nil {
		return nil, nil, err
	}
	opts := metav1.PatchOptions{FieldManager: "gpu-agent-cluster-test", Force: new(true), FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	out, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
	return out, warnings.msgs, err
}

// warningSink keeps the API server's warnings (Warning headers) of one
// request instead of logging them.
type warningSink struct{ msgs []string }

func (w *warningSink) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, msg string) {
	w.msgs = append(w.msgs, msg)
}

// Delete deletes obj (cluster-scoped or in its namespace).
func (c *ControlPlane) Delete(ctx context.Context, obj *unstructured.Unstructured) error {
	ri, err := c.resourceInterface(obj)
	if err != nil {
		return err
	}
	return ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
}

func (c *ControlPlane) resourceInterface(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvr, namespaced, err := c.resourceFor(obj.GroupVersionKind())
	if err != nil {
		return nil, err
	}
	if namespaced {
		if obj.GetNamespace() == "" {
			return nil, fmt.Errorf("%s %s is namespaced and names no namespace", obj.GetKind(), obj.GetName())
		}
		return c.Dynamic.Resource(gvr).Namespace(obj.GetNamespace()), nil
	}
	return c.Dynamic.Resource(gvr), nil
}

// TokenConfig mints a token for the ServiceAccount namespace/name with the
// TokenRequest API (what the kubelet does for a pod's projected token) and
// returns a client config that authenticates with it alone.
func (c *ControlPlane) TokenConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return &rest.Config{
		Host:            c.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.pki.CA.path},
		BearerToken:     tr.Status.Token,
		QPS:             100, Burst: 200, // not client-go's 5/s, which makes the RBAC test wait on itself
	}, nil
}

// WriteTokenKubeconfig writes a kubeconfig of cfg's host, CA and bearer
// token, for a process such as the agent (--kubeconfig).
func (c *ControlPlane) WriteTokenKubeconfig(cfg *rest.Config, name string) (string, error) {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, certificate-authority: %q}
users:
- name: token
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: token}
current-context: test
`, cfg.Host, cfg.CAFile, cfg.BearerToken)
	path := filepath.Join(c.dir, name)
	return path, os.WriteFile(path, []byte(kc), 0o600)
}
