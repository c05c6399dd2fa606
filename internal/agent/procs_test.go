package agent

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Outside a cluster without --kubeconfig a real node runs without pod
// names: one log line says so, and no process stage is started; the
// kubelet client is the pod source.
func TestNodeSourceWithoutCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	st, err := newSource(parse(t), log).start(telemetry.NewStore(time.Second, time.Second))
	if err != nil || st.processes != nil {
		t.Fatalf("start = %+v, %v; want no process stage and no error", st, err)
	}
	defer st.close() // its stages never run
	if _, ok := st.pods.(*podresources.Client); !ok || len(st.run) != 1 {
		t.Errorf("pods from %T, %d runners; want the kubelet client, running alone", st.pods, len(st.run))
	}
	if n := strings.Count(logs.String(), "not attributed to pods"); n != 1 {
		t.Errorf("%d log lines about it, want 1:\n%s", n, logs.String())
	}
}

// On --simulate without a kubelet the simulated node hands its pods to
// attribution directly, and its procfs and table name every process.
func TestSimSource(t *testing.T) {
	l := sim.New(sim.Options{Devices: 2, Seed: 1})
	names := SimulatedNames(l)
	for _, p := range l.Processes() {
		ref := names.Containers[p.ContainerID]
		if ref.Namespace != p.Namespace || ref.Name != p.Pod || ref.Container != p.Container {
			t.Errorf("PID %d: named %+v, want %s/%s/%s", p.PID, ref, p.Namespace, p.Pod, p.Container)
		}
	}
	cfg := parse(t, "--simulate=2", "--kubelet.pod-resources-socket="+filepath.Join(t.TempDir(), "none.sock"))
	src := newSource(cfg, slog.New(slog.DiscardHandler)).(*simSource)
	st, err := src.start(telemetry.NewStore(time.Second, time.Second))
	if err != nil || st.processes == nil {
		t.Fatalf("start = %+v, %v; want a process stage", st, err)
	}
	devs := src.lib.Devices()
	pods := st.pods.DevicePods()
	if got := pods.Pods(devs[0].UUID()); len(got) != 1 || got[0].Name != "inference-0" {
		t.Errorf("GPU 0 held by %v, want inference-0", got)
	}
	if got := pods.Pods(devs[1].UUID()); len(got) != 2 || got[0].Name != "webrtc-sfu-0" || got[1].Name != "webrtc-sfu-1" {
		t.Errorf("the last GPU held by %v, want the two WebRTC pods", got)
	}
	if len(st.metrics) != 0 {
		t.Errorf("%d kubelet or pod watch collectors without either", len(st.metrics))
	}
}
