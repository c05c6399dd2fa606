package test

import (
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// startPrometheus runs a Prometheus scraping target every second.
func startPrometheus(t *testing.T, bin, target string) *testutil.Prometheus {
	t.Helper()
	return testutil.StartPrometheusT(t, testutil.PrometheusOptions{Bin: bin, Targets: []string{target}})
}

// TestPrometheusScrape runs a real Prometheus against the agent's own
// simulated node (no kubelet): GPU i is held by default/inference-i,
// except the last, time-sliced between media/webrtc-sfu-0 and -1.
func TestPrometheusScrape(t *testing.T) {
	bin := testutil.RequireTool(t, "prometheus", "prometheus")
	a := startAgent(t, "--simulate=3", "--simulate.seed=11", "--simulate.static", "--interval=100ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	prom := startPrometheus(t, bin, a.addr)

	const avgQuery = `avg(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`
	got, err := waitValue(t.Context(), prom, avgQuery, time.Now().Add(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}

	devs := sim.New(sim.Options{Devices: 3, Seed: 11, Static: true}).Devices()
	held := devs[:2] // inference-0 and inference-1; GPU 2 is the time-sliced one
	var want float64
	for _, d := range held {
		want += d.GPUUtil(time.Now())
	}
	want /= float64(len(held))
	if got != want {
		t.Errorf("%s = %v, want %v (the simulation's mean over GPUs 0 and 1)", avgQuery, got, want)
	}

	for q, want := range map[string]float64{
		`count(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`:  2,
		`count(DCGM_FI_DEV_GPU_UTIL{pod=~"webrtc-sfu-.*"})`: 2,
	} {
		v, ok, err := prom.Query(t.Context(), q)
		if err != nil || !ok || v != want {
			t.Errorf("%s = %v (present %v, err %v), want %v", q, v, ok, err, want)
		}
	}
}

// TestPrometheusCounters: dcgm-exporter's counters (energy, PCIe replays)
// are counters again, and a real Prometheus, which asks for OpenMetrics
// first, still finds them under dcgm-exporter's names: OpenMetrics wants
// counters named _total, and the agent (as prometheus/common's expfmt)
// types one without the suffix "unknown" there rather than renaming its
// samples. Queries by the name, rate() included, answer; the _total names
// do not exist; Prometheus's metadata says what it was told.
func TestPrometheusCounters(t *testing.T) {
	bin := testutil.RequireTool(t, "prometheus", "prometheus")
	a := startAgent(t, "--simulate=2", "--simulate.seed=11", "--interval=100ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	prom := startPrometheus(t, bin, a.addr)
	deadline := time.Now().Add(60 * time.Second)
	// Three scrapes in: a rate over them has points.
	if _, err := waitValue(t.Context(), prom, `count_over_time(up{job="gpu-agent"}[1m]) >= 3`, deadline); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]float64{
		`count(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)`:                                               2, // once per GPU
		`count(DCGM_FI_DEV_PCIE_REPLAY_COUNTER)`:                                                    2,
		`count(rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[30s]) > 0)`:                                2, // the GPUs draw power
		`count(increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER[30s]) >= 0)`:                                2,
		`count({__name__=~"DCGM_FI_DEV_.*_total"}) or vector(0)`:                                    0,
		`count({__name__=~"DCGM_FI_DEV_PCIE_REPLAY_COUNTER|DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"})`: 4,
	} {
		v, ok, err := prom.Query(t.Context(), q)
		if err != nil || !ok || v != want {
			t.Errorf("%s = %v (present %v, err %v), want %v", q, v, ok, err, want)
		}
	}
	var meta map[string][]struct {
		Type string `json:"type"`
	}
	if err := prom.API(t.Context(), "/api/v1/metadata?metric=DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &meta); err != nil {
		t.Fatal(err)
	}
	// Negotiated OpenMetrics: "unknown", as docs/metrics.md says; were the
	// agent to serve the classic text format first, this would read
	// "counter" and docs/metrics.md's type note would need changing.
	if m := meta["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]; len(m) == 0 || m[0].Type != "unknown" {
		t.Errorf("Prometheus's metadata for the energy counter: %+v, want type unknown (OpenMetrics)", meta)
	}
}
