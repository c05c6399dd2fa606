// Command bench measures the agent as a whole process: it builds the
// agent, runs it on a simulated 8-GPU node sampled at 10 Hz with a fake
// kubelet serving 64 pods, scrapes it as Prometheus does, and reports CPU,
// RSS, scrape latency, ticks taken against ticks expected and the size of
// /metrics, as a Markdown table and a JSON file.
//
//	go run ./test/bench                     # what `make bench` runs
//	go run ./test/bench -duration 10s       # a quick look
//
// It exits non-zero if the agent crashes, fails to shut down cleanly, a
// scrape fails, or more than 1% of ticks are missed. Targets it misses are
// reported, not failed, unless -strict.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// config is the bench's shape; the defaults are BENCHMARKS.md's.
type config struct {
	GPUs       int           `json:"gpus"`
	Pods       int           `json:"pods"`
	Interval   time.Duration `json:"interval_ns"`
	Duration   time.Duration `json:"duration_ns"`
	Warmup     time.Duration `json:"warmup_ns"`
	Scrapers   []int         `json:"scrapers"`
	ScrapeRate time.Duration `json:"scrape_interval_ns"`
	Seed       int64         `json:"seed"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	cfg := config{GPUs: 8, Pods: 64, Interval: 100 * time.Millisecond, ScrapeRate: time.Second, Seed: 1}
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "measured time of each run")
	flag.DurationVar(&cfg.Warmup, "warmup", 10*time.Second, "time each run scrapes before measuring, so the heap is at its steady size")
	scrapers := flag.String("scrapers", "1,20", "comma-separated scraper counts, one run each; every scraper scrapes once a second, all at the same instant")
	jsonOut := flag.String("json", "bench-result.json", "where to write the JSON report")
	bin := flag.String("agent", "", "agent binary to run; empty builds ./cmd/agent")
	strict := flag.Bool("strict", false, "exit non-zero when a target is missed, too")
	flag.Parse()
	for _, s := range strings.Split(*scrapers, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			log.Fatalf("-scrapers: %q is not a positive count", s)
		}
		cfg.Scrapers = append(cfg.Scrapers, n)
	}
	if cfg.Duration < 5*time.Second {
		log.Fatalf("-duration %s: at least 5s, or the CPU reading (10 ms resolution) is noise", cfg.Duration)
	}

	rep, err := run(cfg, *bin)
	if rep != nil {
		fmt.Print(rep.table())
		if werr := rep.writeJSON(*jsonOut); werr != nil {
			log.Print(werr)
		} else {
			log.Printf("wrote %s", *jsonOut)
		}
	}
	if err != nil {
		log.Fatalf("FAIL: %v", err)
	}
	if missed := rep.missedTargets(); len(missed) > 0 {
		log.Printf("targets missed: %s", strings.Join(missed, "; "))
		if *strict {
			os.Exit(1)
		}
	}
}

func run(cfg config, bin string) (*report, error) {
	dir, err := os.MkdirTemp("", "gpu-agent-bench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		bin = filepath.Join(dir, "gpu-agent")
		log.Printf("building ./cmd/agent")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if os.Getenv("CGO_CFLAGS") == "" {
			cmd.Env = append(cmd.Env, "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}

	kubelet, err := fk.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		return nil, err
	}
	defer kubelet.Stop()
	kubelet.SetPods(benchPods(cfg))

	rep := &report{Machine: describeMachine(), Config: cfg, Command: "go run ./test/bench " + strings.Join(os.Args[1:], " ")}
	for _, n := range cfg.Scrapers {
		log.Printf("run: %d scraper(s) at 1 Hz, %s warm-up, %s measured", n, cfg.Warmup, cfg.Duration)
		r, err := measure(cfg, bin, kubelet.Path(), n)
		if err != nil {
			return rep, fmt.Errorf("run with %d scraper(s): %w", n, err)
		}
		rep.Runs = append(rep.Runs, r)
	}
	return rep, nil
}

// benchPods time-slices every simulated GPU between pods/gpus pods, as the
// NVIDIA device plugin's replicas (<uuid>::<n>) spell it.
func benchPods(cfg config) []*podresourcesv1.PodResources {
	devs := sim.New(sim.Options{Devices: cfg.GPUs, Seed: cfg.Seed}).Devices()
	pods := make([]*podresourcesv1.PodResources, cfg.Pods)
	for p := range pods {
		d := devs[p%len(devs)]
		pods[p] = fk.Pod("media", fmt.Sprintf("webrtc-sfu-%02d", p), fk.Container("sfu",
			fk.Devices("nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", d.UUID(), p/len(devs)))))
	}
	return pods
}

func describeMachine() machine {
	m := machine{GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// measure runs the agent once with n scrapers and returns what it saw.
func measure(cfg config, bin, socket string, n int) (result, error) {
	r := result{Scrapers: n}
	a, err := startAgent(bin,
		fmt.Sprintf("--simulate=%d", cfg.GPUs), fmt.Sprintf("--simulate.seed=%d", cfg.Seed),
		"--interval="+cfg.Interval.String(), "--kubelet.pod-resources-socket="+socket,
		"--node-name=bench-node", "--log.level=warn")
	if err != nil {
		return r, err
	}
	stopped := false
	defer func() {
		if !stopped {
			a.Kill()
		}
	}()
	client := newClient(n)
	url := "http://" + a.addr + "/metrics"

	// Ready, and every pod attributed: one GPU-utilization series per pod,
	// plus each GPU's own (the simulator reports per-process figures, so
	// the pod series carry the pods' shares and the device series stays).
	if err := testutil.Poll(context.Background(), 30*time.Second, func() (bool, error) {
		if err := a.Alive(); err != nil {
			return true, err
		}
		_, v, err := textScrape(client, url)
		if err != nil {
			return false, err
		}
		if got := v["count:DCGM_FI_DEV_GPU_UTIL"]; got != float64(cfg.Pods+cfg.GPUs) || v["gpu_agent_kubelet_up"] != 1 {
			return false, fmt.Errorf("%v GPU-utilization series, kubelet_up %v", got, v["gpu_agent_kubelet_up"])
		}
		return true, nil
	}); err != nil {
		return r, fmt.Errorf("waiting for every pod attributed: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lat := startScrapers(ctx, client, url, n, cfg.ScrapeRate)
	if err := sleepAlive(a, cfg.Warmup); err != nil {
		return r, err
	}
	lat.reset()

	// The window: counters and CPU at both ends, RSS every second.
	body, v0, err := textScrape(client, url)
	if err != nil {
		return r, err
	}
	cpu0, err := cpuSeconds(a.PID())
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	var rss, anon, file []uint64
	var peak uint64
	for time.Since(t0) < cfg.Duration {
		if err := sleepAlive(a, time.Second); err != nil {
			return r, err
		}
		m, err := readMemory(a.PID())
		if err != nil {
			return r, err
		}
		rss, anon, file = append(rss, m.RSS), append(anon, m.Anon), append(file, m.File)
		peak = max(peak, m.RSS)
	}
	cpu1, err := cpuSeconds(a.PID())
	if err != nil {
		return r, err
	}
	wall := time.Since(t0).Seconds()
	mem, err := readMemory(a.PID())
	if err != nil {
		return r, err
	}
	_, v1, err := textScrape(client, url)
	if err != nil {
		return r, err
	}
	cancel()
	lats, ages, wire, failures := lat.results()
	if len(failures) > 0 {
		return r, fmt.Errorf("%d scrapes failed, the first: %v", len(failures), failures[0])
	}

	r.CPUPercent = 100 * (cpu1 - cpu0) / wall
	r.TickPercent = 100 * (v1["gpu_agent_sample_duration_seconds_sum"] - v0["gpu_agent_sample_duration_seconds_sum"]) / wall
	r.RSSSteadyMiB = mib(median(rss))
	r.RSSAnonMiB, r.RSSFileMiB = mib(median(anon)), mib(median(file))
	// VmHWM, or a higher reading: the kernel's RSS counters are per-CPU
	// and approximate, so a sample can exceed the high-water mark.
	r.RSSPeakMiB = mib(max(mem.HWM, peak))
	r.Scrapes = len(lats)
	r.ScrapeP50ms = ms(percentile(lats, 50))
	r.ScrapeP99ms = ms(percentile(lats, 99))
	r.ScrapeMaxms = ms(percentile(lats, 100))
	r.AgeP50ms, r.AgeMaxms = ms(percentile(ages, 50)), ms(percentile(ages, 100))
	r.MetricsBytes = len(body)
	r.MetricsGzipBytes = wire
	r.Series = countSeries(body)
	r.Ticks = int(v1["gpu_agent_samples_total"] - v0["gpu_agent_samples_total"])
	r.MissedTicks = int(v1["gpu_agent_missed_samples_total"] - v0["gpu_agent_missed_samples_total"])
	// Ticks expected between the two snapshots the window's ends read.
	span := v1["gpu_agent_last_sample_timestamp_seconds"] - v0["gpu_agent_last_sample_timestamp_seconds"]
	r.ExpectedTicks = int(span/cfg.Interval.Seconds() + 0.5)

	if err := a.Stop(testutil.StopTimeout); err != nil {
		return r, err
	}
	stopped = true
	if r.Scrapes == 0 {
		return r, errors.New("no scrape completed in the window")
	}
	if lost := r.ExpectedTicks - r.Ticks; r.MissedTicks*100 > r.ExpectedTicks || lost*100 > r.ExpectedTicks {
		return r, fmt.Errorf("%d ticks taken of %d expected (%d reported missed): more than 1%% missed", r.Ticks, r.ExpectedTicks, r.MissedTicks)
	}
	return r, nil
}

// sleepAlive sleeps d, failing as soon as the agent exits.
func sleepAlive(a *agentProc, d time.Duration) error {
	select {
	case <-a.Done():
		return a.Alive()
	case <-time.After(d):
		return nil
	}
}

func mib(b uint64) float64       { return float64(b) / (1 << 20) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
