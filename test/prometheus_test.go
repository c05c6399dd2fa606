package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
)

// prometheus is a Prometheus server the test runs.
type prometheus struct {
	*proc
	addr string
}

// startPrometheus runs prometheus scraping target every second and waits
// until it is ready.
func startPrometheus(t *testing.T, bin, target string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gpu-agent
    honor_labels: true
    static_configs:
      - targets: [%q]
`, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		p := &prometheus{addr: addr, proc: startProc(t, "prometheus", bin,
			"--config.file="+config,
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+addr,
		)}
		err := p.waitReady()
		if err == nil {
			return p
		}
		if attempt < 3 && p.exited() && strings.Contains(p.output.String(), "address already in use") {
			continue
		}
		t.Fatalf("prometheus: %v", err)
	}
}

func (p *prometheus) waitReady() error {
	const timeout = 30 * time.Second
	deadline := time.Now().Add(timeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("exited with code %d before becoming ready", p.exitCode())
		}
		resp, err := httpClient.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(pollEvery)
	}
	return fmt.Errorf("/-/ready not 200 within %s; last: %s", timeout, last)
}

// query runs an instant query whose result is a single number; ok is
// false while the result is empty.
func (p *prometheus) query(q string) (v float64, ok bool, err error) {
	resp, err := httpClient.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false, err
	}
	var r struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     []struct {
				Value [2]any
			}
		}
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, false, fmt.Errorf("%s: %w: %s", resp.Status, err, body)
	}
	switch {
	case r.Status != "success":
		return 0, false, fmt.Errorf("query %s: %s", q, r.Error)
	case r.Data.ResultType != "vector" || len(r.Data.Result) > 1:
		return 0, false, fmt.Errorf("query %s: want at most one sample, got %s", q, body)
	case len(r.Data.Result) == 0:
		return 0, false, nil
	}
	s, isString := r.Data.Result[0].Value[1].(string)
	if !isString {
		return 0, false, fmt.Errorf("query %s: value %v is not a string", q, r.Data.Result[0].Value[1])
	}
	v, err = strconv.ParseFloat(s, 64)
	return v, err == nil, err
}

// TestPrometheusScrape runs a real Prometheus against the agent's own
// simulated node (no kubelet): GPU i is held by default/inference-i,
// except the last, time-sliced between media/webrtc-sfu-0 and -1.
func TestPrometheusScrape(t *testing.T) {
	bin := requireTool(t, "prometheus")
	a := startAgent(t, "--simulate=3", "--simulate.seed=11", "--simulate.static", "--interval=100ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	prom := startPrometheus(t, bin, a.addr)

	const avgQuery = `avg(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`
	const timeout = 60 * time.Second
	deadline := time.Now().Add(timeout)
	var got float64
	for {
		v, ok, err := prom.query(avgQuery)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = v
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still empty after %s", avgQuery, timeout)
		}
		time.Sleep(200 * time.Millisecond)
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
		v, ok, err := prom.query(q)
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
	bin := requireTool(t, "prometheus")
	a := startAgent(t, "--simulate=2", "--simulate.seed=11", "--interval=100ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	prom := startPrometheus(t, bin, a.addr)
	deadline := time.Now().Add(60 * time.Second)
	// Three scrapes in: a rate over them has points.
	if _, err := prom.waitValue(`count_over_time(up{job="gpu-agent"}[1m]) >= 3`, deadline); err != nil {
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
		v, ok, err := prom.query(q)
		if err != nil || !ok || v != want {
			t.Errorf("%s = %v (present %v, err %v), want %v", q, v, ok, err, want)
		}
	}
	var meta map[string][]struct {
		Type string `json:"type"`
	}
	if err := prom.api("/api/v1/metadata?metric=DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &meta); err != nil {
		t.Fatal(err)
	}
	// Negotiated OpenMetrics: "unknown", as docs/metrics.md says; were the
	// agent to serve the classic text format first, this would read
	// "counter" and docs/metrics.md's type note would need changing.
	if m := meta["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]; len(m) == 0 || m[0].Type != "unknown" {
		t.Errorf("Prometheus's metadata for the energy counter: %+v, want type unknown (OpenMetrics)", meta)
	}
}
