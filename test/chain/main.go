// Command chain measures how long a GPU load step takes to reach a scaling
// decision, on the real binaries: agents on simulated nodes, the scaler,
// and KEDA's own generated external-scaler client.
//
//	go run ./test/chain -mode push    # make bench-push: publish -> GetMetrics / StreamIsActive, p50/p99
//	go run ./test/chain -mode chain   # make bench-chain: the push path and the Prometheus path side by side
//	go run ./test/chain -mode app     # make bench-chain: an app's p95 latency step, push path and Prometheus path
//
// Every delay is measured from the moment the stepped snapshot was
// published on the agent (its sample time, which the harness reads from
// its own Watch of that agent), so what a load needs to show up in the
// GPU's counters, and the sampling interval itself, are left out alike
// for both paths.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

type config struct {
	Mode     string        `json:"mode"`
	Nodes    int           `json:"nodes"`
	GPUs     int           `json:"gpus_per_node"`
	Interval time.Duration `json:"interval_ns"`
	Steps    int           `json:"steps"`
	Low      float64       `json:"low_percent"`
	High     float64       `json:"high_percent"`
	// Prometheus path only.
	ScrapeInterval time.Duration `json:"scrape_interval_ns"`
	QueryInterval  time.Duration `json:"query_interval_ns"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("chain: ")
	cfg := config{Low: 10, High: 90, ScrapeInterval: time.Second, QueryInterval: time.Second}
	flag.StringVar(&cfg.Mode, "mode", "push", "push: the push path alone, many steps; chain: push and Prometheus paths side by side; app: an app's latency step on both paths")
	check := flag.Bool("check", false, "app mode: exit 1 if the push path's p99 misses the budget (app interval + 5% of the window + 50ms)")
	flag.IntVar(&cfg.Nodes, "nodes", 3, "simulated nodes, one agent each")
	flag.IntVar(&cfg.GPUs, "gpus", 4, "simulated GPUs per node")
	flag.DurationVar(&cfg.Interval, "interval", 100*time.Millisecond, "the agents' sampling interval")
	flag.IntVar(&cfg.Steps, "steps", 0, "load steps to time (default: 1000 for push, 20 for chain)")
	jsonOut := flag.String("json", "", "also write the report as JSON to this file")
	agentBin := flag.String("agent", "", "agent binary; empty builds ./cmd/agent")
	scalerBin := flag.String("scaler", "", "scaler binary; empty builds ./cmd/scaler")
	flag.Parse()
	if cfg.Mode != "push" && cfg.Mode != "chain" && cfg.Mode != "app" {
		log.Fatalf("-mode %q: push, chain or app", cfg.Mode)
	}
	if cfg.Steps == 0 {
		cfg.Steps = map[string]int{"push": 1000, "chain": 20, "app": 50}[cfg.Mode]
	}
	if cfg.Nodes < 1 || cfg.GPUs < 1 || cfg.Steps < 1 {
		log.Fatal("-nodes, -gpus and -steps must be positive")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := run
	if cfg.Mode == "app" {
		run = runApp
	}
	rep, err := run(ctx, cfg, *agentBin, *scalerBin)
	if rep != nil {
		fmt.Print(rep.table())
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); werr != nil {
				log.Print(werr)
			}
		}
	}
	if err != nil {
		log.Fatalf("FAIL: %v", err)
	}
	if cfg.Mode == "app" && len(rep.Stream) > 0 {
		p99 := time.Duration(max(rep.Stream.quantile(.99), rep.GetMetrics.quantile(.99)) * float64(time.Millisecond))
		verdict := "within"
		if p99 > appBudget {
			verdict = "OVER"
		}
		fmt.Printf("\npush path p99 %s: %s the budget of %s (app interval %s + 5%% of window %s + 50ms)\n",
			p99.Round(time.Millisecond), verdict, appBudget, appInterval, appWindow)
		if *check && p99 > appBudget {
			os.Exit(1)
		}
	}
}

// report is what one run measured.
type report struct {
	Config config `json:"config"`
	// Push path: publish -> StreamIsActive message, and publish -> the
	// first GetMetrics answer with the new value.
	Stream     durations `json:"stream_is_active"`
	GetMetrics durations `json:"get_metrics"`
	// Prometheus path (chain mode): publish -> the first polled query
	// result past the threshold.
	Prometheus durations `json:"prometheus,omitempty"`
	// Flaps counts StreamIsActive messages that arrived between steps:
	// transitions no step caused (a node going stale, say).
	Flaps int `json:"flaps"`
}

// durations keeps every observation, in milliseconds.
type durations []float64

func (d *durations) add(x time.Duration) { *d = append(*d, float64(x)/float64(time.Millisecond)) }

func (d durations) quantile(q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

func (d durations) max() float64 {
	if len(d) == 0 {
		return 0
	}
	return slices.Max(d)
}

func (r *report) table() string {
	var b strings.Builder
	if r.Config.Mode == "app" {
		fmt.Fprintf(&b, "\nan app's latency at %d/s steps %s -> %s; p95 over %s, target %g ms; app scraped every %s; %d steps\n\n",
			appRate, appLow, appHigh, appWindow, appTarget, appInterval, len(r.Stream))
		fmt.Fprintln(&b, "| path: latency step -> | n | p50 | p99 | max |")
	} else {
		fmt.Fprintf(&b, "\n%d nodes x %d simulated GPUs, sampled every %s; %d steps %g%% <-> %g%%\n\n",
			r.Config.Nodes, r.Config.GPUs, r.Config.Interval, len(r.Stream), r.Config.Low, r.Config.High)
		fmt.Fprintln(&b, "| path: snapshot published -> | n | p50 | p99 | max |")
	}
	fmt.Fprintln(&b, "|---|---|---|---|---|")
	row := func(name string, d durations) {
		if len(d) > 0 {
			fmt.Fprintf(&b, "| %s | %d | %.2f ms | %.2f ms | %.2f ms |\n", name, len(d), d.quantile(.5), d.quantile(.99), d.max())
		}
	}
	row("scaler `StreamIsActive` message at KEDA's client", r.Stream)
	row("scaler `GetMetrics` answers the new value", r.GetMetrics)
	row(fmt.Sprintf("Prometheus (scrape %s) query polled every %s crosses", r.Config.ScrapeInterval, r.Config.QueryInterval), r.Prometheus)
	fmt.Fprintf(&b, "\nStreamIsActive messages between steps (transitions no step caused): %d\n", r.Flaps)
	if len(r.Prometheus) > 0 && len(r.Stream) > 0 {
		fmt.Fprintf(&b, "\nPrometheus path / push path, p50: %.0fx; p99: %.0fx\n",
			r.Prometheus.quantile(.5)/r.Stream.quantile(.5), r.Prometheus.quantile(.99)/r.Stream.quantile(.99))
	}
	return b.String()
}

func tempDir() (string, func(), error) {
	dir, err := os.MkdirTemp("", "gpu-agent-chain")
	if err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

func binaries(ctx context.Context, dir, agent, scaler string) (string, string, error) {
	var err error
	if agent == "" {
		if agent, err = buildBin(ctx, dir, "./cmd/agent"); err != nil {
			return "", "", err
		}
	}
	if scaler == "" {
		if scaler, err = buildBin(ctx, dir, "./cmd/scaler"); err != nil {
			return "", "", err
		}
	}
	return agent, scaler, nil
}

func loadFile(dir string, node int) string {
	return filepath.Join(dir, fmt.Sprintf("load-node-%d.json", node))
}

// Every trigger the harness asks the scaler about: the most loaded
// inference pod's GPU, as a WebRTC or inference ScaledObject would.
var triggerMetadata = map[string]string{
	"metric":           "gpu_util",
	"podPattern":       "inference-.*",
	"namespace":        "default",
	"aggregation":      "max",
	"target":           "70",
	"activationTarget": "50",
}

// promQuery is the same question in PromQL, as a KEDA prometheus trigger
// asks it.
const promQuery = `max(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`

func buildBin(ctx context.Context, dir, pkg string) (string, error) {
	return testutil.Build(ctx, dir, pkg, testutil.BuildOptions{CGO: true})
}
