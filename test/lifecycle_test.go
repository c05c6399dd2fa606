package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

func TestBadInput(t *testing.T) {
	const anyNonZero = -1
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr []string // each must appear
	}{
		{
			name:   "interval below the minimum",
			args:   []string{"--simulate=1", "--interval=50ms"},
			code:   2,
			stderr: []string{"--interval"},
		},
		{
			name:   "unknown flag",
			args:   []string{"--simulate=1", "--no-such-flag"},
			code:   2,
			stderr: []string{"no-such-flag"},
		},
		{
			name:   "no NVML and no --simulate",
			args:   []string{"--nvml.library-path=/nonexistent/libnvidia-ml.so.1"},
			code:   anyNonZero,
			stderr: []string{"NVML", "not found", "--simulate"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A free port and no kubelet: should the agent wrongly start,
			// it must not collide with anything, and the timeout catches it.
			args := append([]string{"--web.listen-address=" + testutil.FreeAddrT(t),
				"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock"}, tt.args...)
			code, stderr, timedOut := runAgent(t, 5*time.Second, args...)
			if timedOut {
				t.Fatalf("gpu-agent %v still running after 5s, want it to exit; stderr:\n%s", tt.args, stderr)
			}
			if tt.code == anyNonZero && code == 0 || tt.code != anyNonZero && code != tt.code {
				t.Errorf("exit code %d, want %s; stderr:\n%s", code, describeCode(tt.code), stderr)
			}
			for _, s := range tt.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr does not mention %q:\n%s", s, stderr)
				}
			}
		})
	}
}

func describeCode(c int) string {
	if c < 0 {
		return "non-zero"
	}
	return fmt.Sprint(c)
}

// TestSIGTERMWhileScraped checks the drain: scrapes in flight when SIGTERM
// arrives complete, and the agent exits 0 within its shutdown budget.
func TestSIGTERMWhileScraped(t *testing.T) {
	a := startAgent(t, "--simulate=2", "--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var served, truncated atomic.Int64
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := httpClient.Get(a.url("/metrics"))
				if err != nil {
					time.Sleep(time.Millisecond) // refused once the listener is closed
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode != http.StatusOK:
				case err != nil:
					truncated.Add(1) // the 200 began but its body was cut
				default:
					served.Add(1)
				}
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()

	testutil.Eventually(t, 10*time.Second, "5 scrapes served", func() bool { return served.Load() >= 5 })
	sent := time.Now()
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("agent still running 5s after SIGTERM")
	}
	if code := a.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if n := truncated.Load(); n > 0 {
		t.Errorf("%d scrapes cut short by the shutdown, want every started response completed", n)
	}
	t.Logf("exited %s after SIGTERM, %d scrapes served", time.Since(sent).Round(time.Millisecond), served.Load())
}

// TestKubeletGoesAway checks that pod labels survive a kubelet restart:
// while the socket is gone the agent says so (kubelet_up 0, pod map
// stale) and keeps the last pod labels, and it reconnects by itself.
func TestKubeletGoesAway(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 2, Seed: 3, Static: true}).Devices()
	uuid := devs[0].UUID()
	kubelet := startKubelet(t, []*podresourcesv1.PodResources{
		fk.Pod("ml", "trainer", fk.Container("main", fk.Devices("nvidia.com/gpu", uuid))),
	})
	a := startAgent(t, "--simulate=2", "--simulate.seed=3", "--simulate.static",
		"--kubelet.pod-resources-socket="+kubelet.Path(), "--kubelet.poll-interval=200ms")

	// A GPU held by one pod: one series, the pod's.
	wantPods := []string{"ml/trainer/main"}
	state := func(up, stale float64) func(samples) error {
		return func(s samples) error {
			if err := s.expect("gpu_agent_kubelet_up", up); err != nil {
				return err
			}
			if err := s.expect("gpu_agent_kubelet_pod_map_stale", stale); err != nil {
				return err
			}
			if pods := s.pods("DCGM_FI_DEV_GPU_UTIL", uuid); !slices.Equal(pods, wantPods) {
				return fmt.Errorf("GPU 0 attributed to %v, want %v", pods, wantPods)
			}
			return nil
		}
	}
	a.waitMetrics(t, 10*time.Second, "pod labels from the kubelet", state(1, 0))

	kubelet.Stop()
	down := a.waitMetrics(t, 10*time.Second, "the agent to see the kubelet gone, keeping its pod labels", state(0, 1))
	if n, _ := down.value("gpu_agent_kubelet_refresh_failures_total"); n < 1 {
		t.Errorf("gpu_agent_kubelet_refresh_failures_total %v while the kubelet is down, want at least 1", n)
	}

	if err := kubelet.Restart(); err != nil {
		t.Fatal(err)
	}
	a.waitMetrics(t, 10*time.Second, "the agent to reconnect to the restarted kubelet", state(1, 0))
}

// TestHungGPU runs a node where one GPU's calls stop returning: the agent
// keeps sampling and serving the other GPUs, says which GPU is stalled
// (its series absent, not stale), stays ready, and still exits 0 within
// 5 s of SIGTERM with the call in flight, skipping NVML's shutdown.
func TestHungGPU(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 4, Seed: 5}).Devices()
	hung := devs[2].UUID()
	a := startAgent(t, "--simulate=4", "--simulate.seed=5", "--interval=100ms",
		"--simulate.hang-gpu=2", "--simulate.hang-after=1s",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	s := a.waitMetrics(t, 10*time.Second, "GPU 2 reported stalled", func(s samples) error {
		for _, x := range s {
			if x.name == "gpu_agent_device_stalled" && x.labels["UUID"] == hung && x.value == 1 {
				return nil
			}
		}
		return fmt.Errorf("GPU 2 not stalled yet")
	})
	// Sampling goes on: ticks keep completing while GPU 2's call hangs.
	// How many per second is the bench harness's figure, not this test's.
	ticks, _ := s.value("gpu_agent_samples_total")
	missed, _ := s.value("gpu_agent_missed_samples_total")
	const more = 5
	s = a.waitMetrics(t, 10*time.Second, fmt.Sprintf("%d more ticks while GPU 2 hangs", more), func(s samples) error {
		if n, _ := s.value("gpu_agent_samples_total"); n < ticks+more {
			return fmt.Errorf("%v ticks since GPU 2 stalled", n-ticks)
		}
		return nil
	})
	m, _ := s.value("gpu_agent_missed_samples_total")
	t.Logf("%d ticks sampled, %v missed, while GPU 2 hangs", more, m-missed)
	for i, d := range devs {
		values := s.values("DCGM_FI_DEV_GPU_UTIL", d.UUID())
		if i == 2 && len(values) != 0 {
			t.Errorf("stalled GPU 2 still served: %v", values)
		}
		if i != 2 && len(values) == 0 {
			t.Errorf("GPU %d not served while GPU 2 hangs", i)
		}
	}
	resp, err := httpClient.Get(a.url("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz %s while the other GPUs are sampled", resp.Status)
	}

	sent := time.Now()
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("agent still running 5s after SIGTERM with a GPU call in flight")
	}
	if code := a.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(a.Output(), "skipping NVML shutdown") {
		t.Errorf("the skipped NVML shutdown is not logged")
	}
	t.Logf("exited %s after SIGTERM with GPU 2 hung", time.Since(sent).Round(time.Millisecond))
}

// TestGPUHungFromStart: a GPU whose calls hang from the first (its
// inventory: the simulated hang starts with GetMemoryInfo) does not keep
// the agent from serving: after the start-up bound the other GPUs are
// served, and the hung one is left out with a warning.
func TestGPUHungFromStart(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 3, Seed: 6}).Devices()
	a := startAgent(t, "--simulate=3", "--simulate.seed=6", "--simulate.hang-gpu=1",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	s := parseSamples(t, a.scrape(t))
	for i, d := range devs {
		up := s.values("gpu_agent_device_up", d.UUID())
		served := len(s.values("DCGM_FI_DEV_GPU_UTIL", d.UUID())) > 0
		switch {
		case i == 1 && (len(up) != 0 || served):
			t.Errorf("GPU 1, hung in its inventory: up %v, served %v; want it left out", up, served)
		case i != 1 && (len(up) != 1 || up[0] != 1 || !served):
			t.Errorf("GPU %d: up %v, served %v; want it served", i, up, served)
		}
	}
	if !strings.Contains(a.Output(), "inventory calls did not return") {
		t.Errorf("the GPU left out is not logged")
	}
}

// TestSIGTERMDuringStartup: the agent serves /healthz (and /readyz as 503
// "starting") while its start-up probe waits on a GPU hung from its first
// call, and a SIGTERM sent then ends it with 0 within 5 s, saying that
// start-up was interrupted and leaving NVML up under the call in flight.
func TestSIGTERMDuringStartup(t *testing.T) {
	var a *agent
	for attempt := 1; ; attempt++ {
		addr := testutil.FreeAddrT(t)
		a = &agent{addr: addr, Proc: testutil.StartT(t, "gpu-agent", testutil.ProcOptions{}, agentBin, "--web.listen-address="+addr,
			"--grpc.listen-address=", "--node-name=golden-node", "--simulate=3", "--simulate.hang-gpu=1",
			"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")}
		err := a.WaitHTTP(t.Context(), httpClient, a.url("/healthz"), readyTimeout)
		if err == nil {
			break
		}
		if attempt < 3 && a.Exited() && strings.Contains(a.Output(), "address already in use") {
			continue
		}
		t.Fatal(err)
	}
	resp, err := httpClient.Get(a.url("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(string(body), "starting") {
		t.Fatalf("/readyz %s %q while the probe waits on GPU 1, want 503 starting", resp.Status, body)
	}

	sent := time.Now()
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("agent still running 5s after SIGTERM during start-up")
	}
	if code := a.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM during start-up, want 0", code)
	}
	out := a.Output()
	for _, want := range []string{"start-up interrupted", "skipping NVML shutdown"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not say %q", want)
		}
	}
	t.Logf("exited %s after SIGTERM during start-up", time.Since(sent).Round(time.Millisecond))
}
