package deploy

import (
	"os"
	"strings"
	"testing"
)

// Every manifest file under deploy/ decodes strictly into its real Go
// type, and so does every kustomization's build (deploy/, and deploy/
// with components/mig-monitor).
func TestManifestsDecodeStrictly(t *testing.T) {
	files := manifestFiles(t)
	if len(files) < 8 {
		t.Fatalf("found only %d manifest files under deploy/: %v", len(files), files)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeAll(f, raw)
		if err != nil {
			t.Error(err)
			continue
		}
		if len(objs) == 0 {
			t.Errorf("%s: no object", f)
		}
	}
	for _, dir := range []string{"deploy", "mig"} {
		objs := kustomized(t, dir)
		kinds := byKind(objs)
		for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment", "PodDisruptionBudget", "Service", "ServiceMonitor", "PrometheusRule"} {
			if len(kinds[k]) == 0 {
				t.Errorf("kustomize build %s: no %s", dir, k)
			}
		}
		for _, o := range objs {
			if o.Kind != "Namespace" && o.Kind != "ClusterRole" && o.Kind != "ClusterRoleBinding" && o.Namespace != "gpu-agent" {
				t.Errorf("%s: namespace %q, want gpu-agent", o, o.Namespace)
			}
		}
	}
}

// The decoder is strict: a misspelt field, a field of the wrong case, a
// duplicate key and an unknown kind each fail. (Otherwise every check
// above would pass on anything.)
func TestStrictDecoderRejects(t *testing.T) {
	raw, err := os.ReadFile(repo + "/deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	good := string(raw)
	if _, err := decodeAll("daemonset.yaml", raw); err != nil {
		t.Fatalf("the DaemonSet itself: %v", err)
	}
	for name, bad := range map[string]string{
		"misspelt field":  strings.Replace(good, "readOnlyRootFilesystem:", "readOnlyRootFileSystem:", 1),
		"unknown field":   strings.Replace(good, "      nodeSelector:", "      nodeSelectr:", 1),
		"wrong case":      strings.Replace(good, "serviceAccountName:", "serviceaccountname:", 1),
		"duplicate key":   strings.Replace(good, "      runtimeClassName: nvidia", "      runtimeClassName: nvidia\n      runtimeClassName: nvidia", 1),
		"unknown kind":    strings.Replace(good, "kind: DaemonSet", "kind: DaemonSett", 1),
		"wrong api group": strings.Replace(good, "apiVersion: apps/v1", "apiVersion: extensions/v1beta1", 1),
	} {
		if bad == good {
			t.Fatalf("%s: the replacement did not apply; fix the test", name)
		}
		if _, err := decodeAll(name, []byte(bad)); err == nil {
			t.Errorf("%s: decoded without error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
