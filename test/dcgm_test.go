package test

import (
	"strings"
	"testing"
	"time"
)

// startDCGMAgent starts the agent as a dcgm-exporter DaemonSet would, with
// its args and environment only (the listen address from
// $DCGM_EXPORTER_LISTEN), plus --simulate so that it runs without a GPU.
func startDCGMAgent(t *testing.T, env []string, args ...string) *agent {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		e := append([]string{"DCGM_EXPORTER_LISTEN=" + addr, "NODE_NAME=golden-node"}, env...)
		a := &agent{addr: addr, proc: startProcEnv(t, "gpu-agent", e, agentBin,
			append([]string{"--grpc.listen-address=", "--simulate=2", "--simulate.static"}, args...)...)}
		err := a.waitReady()
		if err == nil {
			return a
		}
		if attempt < 3 && a.exited() && strings.Contains(a.output.String(), "address already in use") {
			continue
		}
		t.Fatalf("agent %v %v: %v\n%s", env, args, err, a.output.String())
	}
}

// The environment dcgm-exporter's Helm chart sets (templates/daemonset.yaml)
// and the args of a typical DaemonSet: the agent starts, listens where
// $DCGM_EXPORTER_LISTEN says, samples at -c, and warns once about each
// option it ignores.
func TestDCGMExporterCommandLine(t *testing.T) {
	a := startDCGMAgent(t,
		[]string{"DCGM_EXPORTER_KUBERNETES=true", "DCGM_EXPORTER_INTERVAL=3000", "KUBERNETES_ENABLE_DRA=true"},
		"-c", "500", "--kubernetes-gpu-id-type", "uid", "--fake-gpus", "--remote-hostengine-info=localhost:5555", "--dump-enabled")
	s := parseSamples(t, a.scrape(t))
	if err := s.expect("gpu_agent_sampling_interval_seconds", 0.5); err != nil {
		t.Errorf("-c 500 (over $DCGM_EXPORTER_INTERVAL): %v", err)
	}
	out := a.output.String()
	for _, opt := range []string{"--fake-gpus", "--remote-hostengine-info", "--dump-enabled", "$KUBERNETES_ENABLE_DRA"} {
		if n := strings.Count(out, "option="+opt+" "); n != 1 {
			t.Errorf("%d warnings about %s, want 1:\n%s", n, opt, out)
		}
	}
}

func TestDCGMExporterUnknownFlag(t *testing.T) {
	code, stderr, timedOut := runAgent(t, 10*time.Second, "--simulate=1", "--collectorz=/etc/x.csv")
	if timedOut || code != 2 || !strings.Contains(stderr, "collectorz") {
		t.Errorf("unknown flag: exit %d (timed out %v), want 2 naming it:\n%s", code, timedOut, stderr)
	}
}
