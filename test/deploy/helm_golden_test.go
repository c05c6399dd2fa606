package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"
)

// The chart's default render is committed (testdata/helm/default.yaml)
// for test/cluster, which applies it to a real API server and cannot link
// helm: it is in the agent's module.
func TestHelmDefaultCommitted(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("# helm template gpu-agent deploy/helm/gpu-agent --namespace gpu-agent, default values;\n# rewritten by: go test -run TestHelmDefaultCommitted -update\n")
	for _, o := range mustRender(t, map[string]any{}) {
		y, err := sigsyaml.JSONToYAML(o.JSON)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n# Source: " + o.Source + "\n")
		b.Write(y)
	}
	golden := filepath.Join("testdata", "helm", "default.yaml")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run: go test -run TestHelmDefaultCommitted -update)", err)
	}
	if !bytes.Equal(old, b.Bytes()) {
		t.Errorf("%s differs from the chart's default render; run: go test -run TestHelmDefaultCommitted -update", golden)
	}
}
