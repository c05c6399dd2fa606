// Package kustomize builds deploy/'s kustomizations as kubectl apply -k
// does and keeps the committed builds (../testdata/kustomize) equal to
// them, for the checks of the parent package, which cannot link
// kustomize (see kustomized there).
package kustomize

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

var update = flag.Bool("update", false, "rewrite ../testdata/kustomize from the kustomizations")

const deployDir = "../../../deploy"

// overlay writes an overlay of deploy/ with one of its components, as
// docs/deploy.md tells users to, and returns its directory.
func overlay(t *testing.T, component string) string {
	t.Helper()
	deploy, err := filepath.Abs(deployDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, deploy) // kustomize refuses absolute roots
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("resources: [%s]\ncomponents: [%s]\n", rel, filepath.Join(rel, "components", component))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildsCommitted(t *testing.T) {
	for name, dir := range map[string]string{"deploy": deployDir, "mig": overlay(t, "mig-monitor"), "grpc-tls": overlay(t, "grpc-tls")} {
		k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
		m, err := k.Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", name, err)
		}
		y, err := m.AsYaml()
		if err != nil {
			t.Fatal(err)
		}
		y = append([]byte("# kustomize build of "+map[string]string{"deploy": "deploy/", "mig": "deploy/ with components/mig-monitor", "grpc-tls": "deploy/ with components/grpc-tls"}[name]+"; rewritten by: go test ./kustomize -update\n"), y...)
		golden := filepath.Join("..", "testdata", "kustomize", name+".yaml")
		if *update {
			if err := os.WriteFile(golden, y, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		old, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run: go test ./kustomize -update)", err)
		}
		if !bytes.Equal(old, y) {
			t.Errorf("%s differs from kustomize build %s; run: go test ./kustomize -update", golden, name)
		}
	}
}
