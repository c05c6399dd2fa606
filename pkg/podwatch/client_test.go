package podwatch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A kubeconfig of the shape kubectl writes; NewClient only parses it, so
// the server need not exist.
const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: agent
  user:
    token: not-a-real-token
contexts:
- name: lab
  context: {cluster: lab, user: agent}
current-context: lab
`

func TestNewClientFromKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(path)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if c == nil {
		t.Fatal("nil client")
	}
}

func TestNewClientOutsideAClusterWithoutKubeconfig(t *testing.T) {
	// What rest.InClusterConfig reads to decide it is in a pod.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	_, err := NewClient("")
	if !errors.Is(err, ErrNoCluster) {
		t.Fatalf("err = %v, want ErrNoCluster", err)
	}
	if !strings.Contains(err.Error(), "not in a cluster and no --kubeconfig") {
		t.Errorf("err = %q does not say what to do", err)
	}
}

func TestNewClientNamesAMissingKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	_, err := NewClient(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want one naming %s", err, path)
	}
}
