package podwatch

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-telemetry/agent/internal/testutil"
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

// apiServer serves the two calls the watcher makes, in JSON: a list of
// pods, and a watch that sends one event then stays open. It answers a
// watch-list request (sendInitialEvents) as a server without that feature
// does, so the reflector falls back to list and watch.
func apiServer(t *testing.T, list *corev1.PodList, event *corev1.Pod) (url string, selectors func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/pods" || r.Method != http.MethodGet {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		if q.Get("sendInitialEvents") == "true" {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(metav1.Status{
				TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status:   metav1.StatusFailure, Reason: metav1.StatusReasonBadRequest, Code: http.StatusBadRequest,
				Message: "sendInitialEvents is forbidden",
			})
			return
		}
		mu.Lock()
		seen = append(seen, q.Get("watch")+" "+q.Get("fieldSelector"))
		mu.Unlock()
		if q.Get("watch") != "true" {
			_ = json.NewEncoder(w).Encode(list)
			return
		}
		_ = json.NewEncoder(w).Encode(metav1.WatchEvent{Type: string(watch.Added), Object: runtime.RawExtension{Object: event}})
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// NewClient's core/v1-only client does what the watcher needs of the API
// server: a list and a watch, on this node's pods, decoded.
func TestNewClientListsAndWatchesThroughTheAPI(t *testing.T) {
	listed := webrtcPod()
	listed.ResourceVersion = "10"
	list := &corev1.PodList{
		TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: "10"},
		Items:    []corev1.Pod{*listed},
	}
	added := pod("default", "encoder", uidOther, node, status("enc", "cri-o://"+cidOther))
	added.TypeMeta = metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}
	added.ResourceVersion = "11"
	url, selectors := apiServer(t, list, added)

	path := filepath.Join(t.TempDir(), "config")
	cfg := strings.Replace(kubeconfig, "https://127.0.0.1:6443", url, 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(c, node, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
		t.Fatal("not synced")
	}
	if p, name, ok := w.Container(cidMain); !ok || p.Name != "webrtc-0" || name != "sfu" {
		t.Errorf("listed pod: %+v, %q, %v", p, name, ok)
	}
	testutil.Eventually(t, 5*time.Second, "watched pod", func() bool { _, ok := w.Lookup(uidOther); return ok })
	got := selectors()
	if len(got) < 2 {
		t.Fatalf("calls = %q, want a list and a watch", got)
	}
	for i, want := range []string{" spec.nodeName=" + node, "true spec.nodeName=" + node} {
		if got[i] != want {
			t.Errorf("call %d = %q, want %q (watch, field selector)", i, got[i], want)
		}
	}
}
