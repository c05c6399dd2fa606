package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpu-telemetry/agent/internal/stream"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// backSlack is how far above its baseline a count may settle once the
// clients have left and still be "back": a keep-alive connection of the
// harness's own, a gRPC transport goroutine finishing.
const backSlack = 2

func run(ctx context.Context, cfg config, agentBin, scalerBin string) (*report, error) {
	dir, err := os.MkdirTemp("", "gpu-agent-soak")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if agentBin == "" {
		log.Print("building ./cmd/agent")
		if agentBin, err = testutil.Build(ctx, dir, "./cmd/agent", testutil.BuildOptions{CGO: true}); err != nil {
			return nil, err
		}
	}
	if scalerBin == "" {
		log.Print("building ./cmd/scaler")
		if scalerBin, err = testutil.Build(ctx, dir, "./cmd/scaler", testutil.BuildOptions{}); err != nil {
			return nil, err
		}
	}
	rep := &report{Config: cfg, Load: [2]string{loadAverage()}}

	kubelet, err := startKubelet(dir, cfg.GPUs, cfg.Pods, 1)
	if err != nil {
		return nil, err
	}
	defer kubelet.Stop()
	// Every scraper keeps its connection, as Prometheus does: at the
	// default --web.max-connections (64) the rest would wait for a slot
	// that a busy keep-alive connection never frees. --web.max-requests
	// stays at its default (40): what it refuses is counted.
	agent, err := startProc("agent", agentBin,
		fmt.Sprintf("--simulate=%d", cfg.GPUs), "--simulate.seed=1", "--interval="+cfg.Interval.String(),
		"--kubelet.pod-resources-socket="+kubelet.Path(), "--node-name=soak-node",
		"--web.enable-exporter-metrics", fmt.Sprintf("--web.max-connections=%d", max(64, cfg.Scrapers+16)))
	if err != nil {
		return nil, err
	}
	defer agent.Kill()
	if err := testutil.Poll(ctx, time.Minute, func() (bool, error) {
		if err := agent.Alive(); err != nil {
			return true, err
		}
		v, err := scrapeValues(ctx, agent.metrics, "http://"+agent.web+"/metrics")
		if err != nil {
			return false, err
		}
		if got := v["count:DCGM_FI_DEV_GPU_UTIL"]; got != float64(cfg.Pods+cfg.GPUs) || v["gpu_agent_kubelet_up"] != 1 {
			return false, fmt.Errorf("%v GPU-utilization series, kubelet_up %v", got, v["gpu_agent_kubelet_up"])
		}
		return true, nil
	}); err != nil {
		return nil, fmt.Errorf("waiting for the agent to attribute every pod: %w", err)
	}

	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	fakes, err := fleetOf(fleetCtx, cfg.FakeAgents, cfg.FakePeriod)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, a := range fakes {
			a.Stop()
		}
	}()
	addrs := []string{agent.grpc}
	for _, a := range fakes {
		addrs = append(addrs, a.Addr())
	}
	scaler, err := startProc("scaler", scalerBin, "--agents="+strings.Join(addrs, ","))
	if err != nil {
		return nil, err
	}
	defer scaler.Kill()
	const nodes = `gpu_scaler_nodes{state="fresh"}`
	if err := testutil.Poll(ctx, time.Minute, func() (bool, error) {
		if err := scaler.Alive(); err != nil {
			return true, err
		}
		v, err := scrapeValues(ctx, scaler.metrics, "http://"+scaler.web+"/metrics")
		if err != nil {
			return false, err
		}
		if v[nodes] != float64(len(addrs)) {
			return false, fmt.Errorf("%v fresh nodes of %d", v[nodes], len(addrs))
		}
		return true, nil
	}); err != nil {
		return nil, fmt.Errorf("waiting for the scaler to hear every agent: %w", err)
	}

	// Baselines: both binaries at rest with their agents connected, the
	// fewest goroutines of three readings.
	log.Print("reading the baselines")
	for _, p := range []*proc{agent, scaler} {
		var b usage
		for i := range 3 {
			time.Sleep(time.Second)
			u, err := p.usage(ctx)
			if err != nil {
				return nil, err
			}
			if i == 0 || u.Goroutines < b.Goroutines {
				b = u
			}
		}
		rep.bin(p.Name).Baseline = b
	}

	smp, stopSampling := sample(ctx, cfg.Sample, agent, scaler)
	clientsCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var wg sync.WaitGroup
	scrapes, gets, churnErrs := newTimings(), newTimings(), newTimings()
	var churned, streamed atomic.Int64
	log.Printf("clients: %d scrapers, %d Watch readers, %d that never read, %d that connect and drop; %d KEDA clients",
		cfg.Scrapers, cfg.Readers, cfg.Stalled, cfg.Churners, cfg.KEDA)
	tr := scrapers(clientsCtx, &wg, "http://"+agent.web+"/metrics", cfg.Scrapers, cfg.ScrapePeriod, scrapes)
	rs, err := readers(clientsCtx, &wg, agent.grpc, cfg.Readers)
	if err == nil {
		err = stalled(clientsCtx, &wg, agent.grpc, cfg.Stalled)
	}
	if err == nil {
		churners(clientsCtx, &wg, agent.grpc, cfg.Churners, &churned, churnErrs)
		err = kedaClients(clientsCtx, &wg, scaler.grpc, cfg.KEDA, cfg.KEDAPeriod, gets, &streamed)
	}
	if err != nil {
		return rep, fmt.Errorf("starting the clients: %w", err)
	}

	if err := watch(cfg.Warmup, agent, scaler); err != nil {
		return rep, err
	}
	scrapes.reset()
	gets.reset()
	churnErrs.reset()
	churned0, streamed0 := churned.Load(), streamed.Load()
	v0, err := agent.read(ctx)
	if err != nil {
		return rep, err
	}
	t0 := time.Now()
	log.Printf("measuring for %s", cfg.Duration)
	if err := watch(cfg.Duration, agent, scaler); err != nil {
		return rep, err
	}
	v1, err := agent.read(ctx)
	if err != nil {
		return rep, err
	}
	rep.Window = time.Since(t0)
	stopSampling()
	if smp.err != nil {
		return rep, smp.err
	}

	// The clients leave; their connections close.
	stopClients()
	wg.Wait()
	tr.CloseIdleConnections()
	rep.Churned = churned.Load() - churned0
	rep.StreamIsActive = streamed.Load() - streamed0
	rep.Scrapes = latencyOf(scrapes)
	rep.GetMetrics = latencyOf(gets)
	rep.ChurnFailures = latencyOf(churnErrs).Failures
	rep.Ticks = int(v1["gpu_agent_samples_total"] - v0["gpu_agent_samples_total"])
	rep.MissedTicks = int(v1["gpu_agent_missed_samples_total"] - v0["gpu_agent_missed_samples_total"])
	span := v1["gpu_agent_last_sample_timestamp_seconds"] - v0["gpu_agent_last_sample_timestamp_seconds"]
	rep.ExpectedTicks = int(span/cfg.Interval.Seconds() + 0.5)
	rep.Dropped = v1["gpu_agent_stream_dropped_snapshots_total"] - v0["gpu_agent_stream_dropped_snapshots_total"]
	for _, r := range rs {
		a := account(r.messages(), stream.DefaultBuffer)
		if r.err != nil {
			a.Unaccounted = append(a.Unaccounted, "the stream ended: "+r.err.Error())
		}
		rep.Readers = append(rep.Readers, a)
	}
	for _, p := range []*proc{agent, scaler} {
		b := rep.bin(p.Name)
		during := smp.since(p.Name, t0.Add(-cfg.Warmup))
		for _, u := range during {
			b.Peak.RSS, b.Peak.Anon = max(b.Peak.RSS, u.RSS), max(b.Peak.Anon, u.Anon)
			b.Peak.FDs, b.Peak.Goroutines = max(b.Peak.FDs, u.FDs), max(b.Peak.Goroutines, u.Goroutines)
		}
		window := smp.since(p.Name, t0)
		if len(window) > 0 {
			b.WarmedUp, b.End = window[0], window[len(window)-1]
		}
		if cfg.Mode == "long" {
			var gs, fds []float64
			for _, u := range window {
				gs, fds = append(gs, u.Goroutines), append(fds, float64(u.FDs))
			}
			if b.GoroutineGrowth, err = judgeGrowth(gs, slackFor(b.Baseline.Goroutines)); err != nil {
				return rep, err
			}
			if b.FDGrowth, err = judgeGrowth(fds, slackFor(float64(b.Baseline.FDs))); err != nil {
				return rep, err
			}
		}
	}

	// Back to the baseline: the clients are gone, so each binary's
	// goroutines and descriptors should return to what they were.
	log.Printf("clients gone; waiting up to %s for goroutines and descriptors to return to their baselines", cfg.Settle)
	left := time.Now()
	for _, p := range []*proc{agent, scaler} {
		b := rep.bin(p.Name)
		err := testutil.Poll(ctx, cfg.Settle, func() (bool, error) {
			u, err := p.usage(ctx)
			if err != nil {
				return true, err
			}
			b.After, b.AfterIn = u, time.Since(left)
			return b.back(), nil
		})
		if err != nil && !strings.Contains(err.Error(), "not within") {
			return rep, err
		}
	}

	// SIGTERM: each exits 0 within its budget.
	stopFleet()
	var stopErr []error
	for _, p := range []*proc{scaler, agent} {
		if err := p.Stop(testutil.StopTimeout); err != nil {
			stopErr = append(stopErr, err)
		}
	}
	return rep, errors.Join(stopErr...)
}

// watch waits d, failing as soon as either binary exits.
func watch(d time.Duration, ps ...*proc) error {
	end := time.After(d)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, p := range ps {
			if err := p.Alive(); err != nil {
				return err
			}
		}
		select {
		case <-end:
			return nil
		case <-tick.C:
		}
	}
}

func latencyOf(t *timings) latency {
	lats, failures, refused := t.snapshot()
	l := latency{N: len(lats), Refused: refused, Failures: failures}
	if len(lats) > 0 {
		slices.Sort(lats)
		q := func(p float64) float64 {
			return ms(lats[min(len(lats)-1, int(p*float64(len(lats))+0.999999)-1)])
		}
		l.P50, l.P99, l.Max = q(0.5), q(0.99), ms(lats[len(lats)-1])
	}
	return l
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
