package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Pod labels and UIDs come from the pod watch: where it cannot reach the
// API server the agent does not start (dcgm-exporter warns and serves its
// series without them); the error names the flags that asked.
func TestPodMetaNeedsTheAPIServer(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	dir := t.TempDir()
	socket := filepath.Join(dir, "kubelet.sock")
	store := telemetry.NewStore(time.Second, time.Second)
	log := slog.New(slog.DiscardHandler)

	for _, tc := range []struct {
		name string
		args []string
		want []string // in the error; none: no error
	}{
		{"a node, labels and UIDs", []string{"--kubernetes-enable-pod-labels", "--kubernetes-enable-pod-uid"},
			[]string{"--kubernetes-enable-pod-labels, --kubernetes-enable-pod-uid: ", "not in a cluster and no --kubeconfig"}},
		{"a node, UIDs", []string{"--kubernetes-enable-pod-uid"}, []string{"--kubernetes-enable-pod-uid: ", "not in a cluster"}},
		{"a node, neither", nil, nil},
		{"a node, labels off", []string{"--kubernetes-enable-pod-labels=false"}, nil},
		// --simulate with a real kubelet: its pods are the API server's.
		{"simulated GPUs, a kubelet", []string{"--simulate=1", "--kubernetes-enable-pod-labels", "--kubelet.pod-resources-socket=" + socket},
			[]string{"--kubernetes-enable-pod-labels: ", "--simulate with a kubelet socket watches the API server only with --kubernetes.pod-watch and --kubeconfig"}},
		{"simulated GPUs, a kubelet, no pod watch", []string{"--simulate=1", "--kubernetes-enable-pod-uid", "--kubernetes.pod-watch=false", "--kubelet.pod-resources-socket=" + socket},
			[]string{"--kubernetes-enable-pod-uid: ", "only with --kubernetes.pod-watch and --kubeconfig"}},
		// Without a kubelet the simulated pods are named, and described,
		// by the simulator: no watch is needed.
		{"simulated GPUs, no kubelet, no pod watch", []string{"--simulate=1", "--kubernetes-enable-pod-uid", "--kubernetes.pod-watch=false"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--kubelet.pod-resources-socket=" + socket}, tc.args...)
			cfg := parse(t, args...)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(tc.name, "a kubelet") {
				if err := os.WriteFile(socket, nil, 0o600); err != nil { // exists() is all --simulate asks
					t.Fatal(err)
				}
				defer os.Remove(socket)
			}
			st, err := newSource(cfg, log).start(store)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				defer st.close() // its stages never run
				if wantMetas := cfg.podMetaFlags() != ""; (st.metas != nil) != wantMetas {
					t.Fatalf("start: metas %v, want some: %v", st.metas, wantMetas)
				}
				return
			}
			if err == nil {
				t.Fatal("started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to say %q", err, w)
				}
			}
		})
	}
}

// The pod watch is where pod labels and UIDs come from: turning it off
// while asking for them is a bad command line.
func TestPodMetaNeedsThePodWatch(t *testing.T) {
	err := parse(t, "--kubernetes.pod-watch=false", "--kubernetes-enable-pod-uid").Validate()
	if err == nil || !strings.Contains(err.Error(), "--kubernetes.pod-watch=false: pod labels and UIDs (--kubernetes-enable-pod-uid) come from the pod watch") {
		t.Errorf("Validate = %v", err)
	}
}

// On --simulate without a kubelet the simulated pods have UIDs (those
// their processes' cgroups name) and labels, through the allowlist.
func TestSimulatedPodMetas(t *testing.T) {
	cfg := parse(t, "--simulate=2", "--kubelet.pod-resources-socket="+filepath.Join(t.TempDir(), "none.sock"),
		"--kubernetes-enable-pod-labels", "--kubernetes-enable-pod-uid", "--kubernetes-pod-label-allowlist-regex=/name$")
	src := newSource(cfg, slog.New(slog.DiscardHandler)).(*simSource)
	st, err := src.start(telemetry.NewStore(time.Second, time.Second))
	if err != nil || st.metas == nil {
		t.Fatalf("start: metas %v, err %v", st.metas, err)
	}
	procs := src.lib.Processes()
	if len(procs) != 3 {
		t.Fatalf("%d simulated processes, want 3", len(procs))
	}
	for _, p := range procs {
		want := &attribution.PodMeta{UID: p.PodUID, Labels: []attribution.PodLabel{
			{Name: "app_kubernetes_io_name", Value: strings.TrimSuffix(strings.TrimSuffix(p.Pod, "-0"), "-1")}}}
		if got := st.metas.PodMeta(p.Namespace, p.Pod); !reflect.DeepEqual(got, want) {
			t.Errorf("%s/%s: %+v, want %+v", p.Namespace, p.Pod, got, want)
		}
	}
	// UIDs only.
	cfg = parse(t, "--simulate=2", "--kubelet.pod-resources-socket="+filepath.Join(t.TempDir(), "none.sock"), "--kubernetes-enable-pod-uid")
	src = newSource(cfg, slog.New(slog.DiscardHandler)).(*simSource)
	if st, err = src.start(telemetry.NewStore(time.Second, time.Second)); err != nil {
		t.Fatal(err)
	}
	p := src.lib.Processes()[0]
	if got := st.metas.PodMeta(p.Namespace, p.Pod); got == nil || got.UID != p.PodUID || got.Labels != nil {
		t.Errorf("UIDs only: %+v", got)
	}
}
