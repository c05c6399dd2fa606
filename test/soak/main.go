// Command soak runs the agent and the scaler together, as real processes,
// under load for a while, and reports whether they keep their cadence,
// their memory, their goroutines and descriptors, and every snapshot.
//
//	go run ./test/soak -mode load -duration 60s   # make soak-load: hostile clients on both binaries
//	go run ./test/soak -mode long -duration 30m   # make soak: steady clients, leaks over time
//
// The agent runs as test/bench runs it: 8 simulated GPUs sampled every
// 100 ms, 64 pods through a fake kubelet. The scaler subscribes to it
// and to fake agents (internal/fleet/scalertest), and KEDA's own
// external scaler client calls it.
//
// It prints a Markdown table. It exits non-zero when a binary crashes or
// does not exit 0 on SIGTERM, when a subscriber's sequences are not
// accounted for (a sequence neither received nor counted as skipped), a
// reader that kept up lost a snapshot (proven, see account), or, in
// long mode, goroutines or descriptors grow without bound (judgeGrowth).
// Everything else (latencies, memory, goroutines back to their baseline,
// ticks missed) is reported against its threshold, not failed: on a
// loaded machine those are the machine's, unless -strict.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"strings"
	"time"
)

// config is a run's shape; the defaults are each mode's.
type config struct {
	Mode     string        `json:"mode"`
	Duration time.Duration `json:"duration_ns"`
	Warmup   time.Duration `json:"warmup_ns"`
	Sample   time.Duration `json:"sample_period_ns"`
	// The agent's node.
	GPUs     int           `json:"gpus"`
	Pods     int           `json:"pods"`
	Interval time.Duration `json:"interval_ns"`
	// Its clients. ScrapePeriod 0 is a closed loop.
	Scrapers     int           `json:"scrapers"`
	ScrapePeriod time.Duration `json:"scrape_period_ns"`
	Readers      int           `json:"watch_readers"`
	Stalled      int           `json:"watch_never_read"`
	Churners     int           `json:"watch_churners"`
	// The scaler's agents besides the real one, and its clients.
	FakeAgents int           `json:"fake_agents"`
	FakePeriod time.Duration `json:"fake_agent_period_ns"`
	KEDA       int           `json:"keda_clients"`
	KEDAPeriod time.Duration `json:"keda_get_metrics_period_ns"`
	// How long the clients have to leave before goroutines are read.
	Settle time.Duration `json:"settle_ns"`
}

func defaults(mode string) (config, error) {
	base := config{Mode: mode, GPUs: 8, Pods: 64, Interval: 100 * time.Millisecond, FakePeriod: 250 * time.Millisecond, Settle: 30 * time.Second}
	switch mode {
	case "load":
		base.Duration, base.Warmup, base.Sample = 60*time.Second, 5*time.Second, time.Second
		base.Scrapers, base.ScrapePeriod = 200, 0
		base.Readers, base.Stalled, base.Churners = 50, 50, 20
		base.FakeAgents, base.KEDA, base.KEDAPeriod = 200, 50, 100*time.Millisecond
	case "long":
		base.Duration, base.Sample = 30*time.Minute, 5*time.Second
		base.Scrapers, base.ScrapePeriod = 1, time.Second
		base.Readers = 1
		base.FakeAgents, base.KEDA, base.KEDAPeriod = 10, 1, time.Second
	default:
		return base, fmt.Errorf("-mode %q: load or long", mode)
	}
	return base, nil
}

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("soak: ")
	mode := flag.String("mode", "load", "load: hostile clients on both binaries (make soak-load); long: steady clients, leaks over time (make soak)")
	duration := flag.Duration("duration", 0, "measured time (default: 60s for load, 30m for long)")
	warmup := flag.Duration("warmup", 0, "time under load before measuring (default: 5s for load; for long, a sixth of -duration, 20s to 2m)")
	agentBin := flag.String("agent", "", "agent binary; empty builds ./cmd/agent")
	scalerBin := flag.String("scaler", "", "scaler binary; empty builds ./cmd/scaler")
	jsonOut := flag.String("json", "", "also write the report as JSON to this file")
	strict := flag.Bool("strict", false, "also exit non-zero when a reported threshold is missed")
	flag.Parse()
	cfg, err := defaults(*mode)
	if err != nil {
		log.Fatal(err)
	}
	if *duration > 0 {
		cfg.Duration = *duration
	}
	switch {
	case *warmup > 0:
		cfg.Warmup = *warmup
	case cfg.Mode == "long":
		cfg.Warmup = min(max(cfg.Duration/6, 20*time.Second), 2*time.Minute)
	}
	if cfg.Mode == "long" && cfg.Duration < minSamples*cfg.Sample {
		log.Fatalf("-duration %s: long mode needs at least %s to judge growth", cfg.Duration, minSamples*cfg.Sample)
	}

	start := time.Now()
	rep, err := run(context.Background(), cfg, *agentBin, *scalerBin)
	if rep != nil {
		rep.Command = "go run ./test/soak " + strings.Join(os.Args[1:], " ")
		rep.Load = [2]string{rep.Load[0], loadAverage()}
		fmt.Print(rep.table())
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); werr != nil {
				log.Print(werr)
			}
		}
	}
	log.Printf("took %s", time.Since(start).Round(time.Second))
	if err != nil {
		log.Fatalf("FAIL: %v", err)
	}
	if fails := rep.failures(); len(fails) > 0 {
		log.Fatalf("FAIL: %s", strings.Join(fails, "; "))
	}
	if missed := rep.missed(); len(missed) > 0 {
		log.Printf("thresholds missed: %s", strings.Join(missed, "; "))
		if *strict {
			os.Exit(1)
		}
	}
}

// loadAverage is /proc/loadavg's three averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return fmt.Sprintf("%s %s %s (%d CPUs)", f[0], f[1], f[2], runtime.NumCPU())
}
