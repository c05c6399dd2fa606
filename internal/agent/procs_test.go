package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// Outside a cluster without --kubeconfig the agent runs without pod names:
// one log line says so, and no stage is started.
func TestProcessStageWithoutCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	procs, w, err := processStage(parse(t), telemetry.NewStore(time.Second, time.Second), nil, log)
	if err != nil || procs != nil || w != nil {
		t.Fatalf("processStage = %v, %v, %v; want nothing and no error", procs, w, err)
	}
	if n := strings.Count(logs.String(), "not attributed to pods"); n != 1 {
		t.Errorf("%d log lines about it, want 1:\n%s", n, logs.String())
	}
}

// On --simulate the simulated node's procfs and table name every process.
func TestProcessStageSimulated(t *testing.T) {
	l := sim.New(sim.Options{Devices: 2, Seed: 1})
	names := SimulatedNames(l)
	for _, p := range l.Processes() {
		ref := names.Containers[p.ContainerID]
		if ref.Namespace != p.Namespace || ref.Name != p.Pod || ref.Container != p.Container {
			t.Errorf("PID %d: named %+v, want %s/%s/%s", p.PID, ref, p.Namespace, p.Pod, p.Container)
		}
	}
	procs, w, err := processStage(parse(t, "--simulate=2"), telemetry.NewStore(time.Second, time.Second), l, slog.New(slog.DiscardHandler))
	if err != nil || procs == nil || w != nil {
		t.Fatalf("processStage = %v, %v, %v; want a stage without a pod watch", procs, w, err)
	}
}
