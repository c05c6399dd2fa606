// Command bench measures the agent as a whole process: it builds the
// agent, runs it on a simulated 8-GPU node sampled at 10 Hz with a fake
// kubelet serving 64 pods, scrapes it as Prometheus does, and reports CPU,
// RSS, scrape latency, ticks taken against ticks expected and the size of
// /metrics, as a Markdown table and a JSON file.
//
//	go run ./test/bench                     # what `make bench` runs
//	go run ./test/bench -duration 10s       # a quick look
//	go run ./test/bench -nvml=mock -podwatch 500 -scrapers 1   # `make bench-mem`: memory with the pod watch on
//
// It exits non-zero if the agent crashes, fails to shut down cleanly, a
// scrape fails, or more than 1% of ticks are missed (-max-missed-percent). Targets it misses are
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
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v2"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
	"github.com/gpu-telemetry/agent/test/internal/fakedcgm"
	"github.com/gpu-telemetry/agent/test/internal/nvmlmock"
)

// config is the bench's shape; the defaults are BENCHMARKS.md's.
type config struct {
	// NVML is "sim" (the simulated node, GPUs and Pods as set) or "mock"
	// (NVIDIA's mock libnvidia-ml.so.1 with its T4 profile: its GPUs, no
	// pods).
	NVML string `json:"nvml"`
	// DCGM is "off", "fake" (--dcgm=embedded over the fake libdcgm.so.4,
	// which lists the mock's GPUs) or "both" (each run twice, DCGM off
	// then on); not with NVML "sim", which has no DCGM.
	DCGM string `json:"dcgm"`
	// Peer adds a run of nvidia_gpu_exporter per scraper count.
	Peer bool `json:"peer"`
	// Floor adds a run of test/bench/floor, one NVML call per GPU per
	// interval: the mock library's own cost.
	Floor bool `json:"floor"`
	// PodWatch, with NVML "mock", is the number of pods on the node in a
	// fake API server the agent's pod watch lists (--kubeconfig), 64 of
	// them the kubelet's pods sharing the mock's GPUs; 0 runs without
	// the watch and without pods.
	PodWatch int `json:"pod_watch_pods"`
	// AgentEnv is added to the agent's environment (GOGC=50, say).
	AgentEnv   []string      `json:"agent_env,omitempty"`
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
	flag.DurationVar(&cfg.Interval, "interval", cfg.Interval, "the agent's --interval (and the peer's --collect.interval)")
	flag.DurationVar(&cfg.Warmup, "warmup", 10*time.Second, "time each run scrapes before measuring, so the heap is at its steady size")
	scrapers := flag.String("scrapers", "1,20", "comma-separated scraper counts, one run each; every scraper scrapes once a second, all at the same instant")
	jsonOut := flag.String("json", "bench-result.json", "where to write the JSON report")
	bin := flag.String("agent", "", "agent binary to run; empty builds ./cmd/agent")
	strict := flag.Bool("strict", false, "exit non-zero when a target is missed, too")
	flag.StringVar(&cfg.NVML, "nvml", "sim", `"sim": the simulated node; "mock": NVIDIA's mock NVML library (T4 profile, no pods unless -podwatch)`)
	flag.StringVar(&cfg.DCGM, "dcgm", "off", `with -nvml=mock: "off", "fake" (--dcgm=embedded over the fake libdcgm.so.4), or "both" (each run with DCGM off, then on)`)
	flag.IntVar(&cfg.PodWatch, "podwatch", 0, "with -nvml=mock: the kubelet serves 64 pods sharing the mock's GPUs, and a fake API server serves this many realistic pods of the node (the 64 among them) to the agent's pod watch; 0: no pods, no watch")
	agentEnv := flag.String("agent-env", "", "comma-separated KEY=VALUE pairs added to the agent's environment (GOGC=50,GOMAXPROCS=1)")
	flag.BoolVar(&cfg.Peer, "peer", false, "with -nvml=mock: also run utkuozdemir/nvidia_gpu_exporter (NVML backend, --collect.interval = -interval) on the same mock library, built from ../shared/third_party/nvidia_gpu_exporter")
	flag.BoolVar(&cfg.Floor, "floor", false, "with -nvml=mock: also run test/bench/floor (one nvmlDeviceGetUtilizationRates per GPU per -interval, a one-line /metrics) on the same mock library: what any exporter pays the library per interval")
	peerBin := flag.String("peer-bin", "", "the peer's binary; empty builds it")
	flag.StringVar(&profileDir, "profile", "", "folder for each agent run's CPU profile over the measured window and its allocation profile at the end (runs the agent with --web.enable-pprof)")
	flag.Float64Var(&maxMissedPercent, "max-missed-percent", maxMissedPercent, "fail a run that misses more than this percentage of its ticks (CI's short run, on a shared machine, allows more)")
	flag.Parse()
	switch {
	case cfg.NVML != "sim" && cfg.NVML != "mock":
		log.Fatalf(`-nvml %q: want "sim" or "mock"`, cfg.NVML)
	case cfg.DCGM != "off" && cfg.DCGM != "fake" && cfg.DCGM != "both":
		log.Fatalf(`-dcgm %q: want "off", "fake" or "both"`, cfg.DCGM)
	case cfg.NVML == "sim" && cfg.DCGM != "off":
		log.Fatalf("-dcgm %s: needs -nvml=mock (the simulated node has no DCGM)", cfg.DCGM)
	case cfg.NVML == "sim" && cfg.Peer:
		log.Fatal("-peer: needs -nvml=mock (the peer reads NVML only)")
	case cfg.Floor && cfg.NVML != "mock":
		log.Fatal("-floor: needs -nvml=mock")
	case cfg.PodWatch < 0 || cfg.PodWatch > 0 && cfg.PodWatch < mockGPUPods:
		log.Fatalf("-podwatch %d: 0, or at least the %d pods of the GPUs", cfg.PodWatch, mockGPUPods)
	case cfg.NVML == "sim" && cfg.PodWatch > 0:
		log.Fatal("-podwatch: needs -nvml=mock (the simulated node names its own pods)")
	}
	for kv := range strings.SplitSeq(*agentEnv, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			log.Fatalf("-agent-env: %q is not KEY=VALUE", kv)
		}
		cfg.AgentEnv = append(cfg.AgentEnv, kv)
	}
	peerBinary = *peerBin
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

	var b backend
	if cfg.NVML == "mock" {
		if b, err = mockBackend(dir); err != nil {
			return nil, err
		}
		cfg.GPUs, cfg.Pods = len(b.uuids), 0
		if cfg.PodWatch > 0 {
			cfg.Pods = mockGPUPods
		}
	}

	kubelet, err := fk.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		return nil, err
	}
	defer kubelet.Stop()
	switch {
	case cfg.NVML == "sim":
		kubelet.SetPods(benchPods(cfg))
	case cfg.PodWatch > 0:
		kubelet.SetPods(sharedPods(b.uuids, cfg.Pods))
		api := fakeapi.Start(apiPods(benchNode, cfg.PodWatch, cfg.Pods)...)
		defer api.Close()
		kc, err := api.Kubeconfig(dir)
		if err != nil {
			return nil, err
		}
		b.kubeconfig = kc
	}

	variants := []string{cfg.NVML}
	switch cfg.DCGM {
	case "fake":
		variants = []string{cfg.NVML + "+dcgm"}
	case "both":
		variants = append(variants, cfg.NVML+"+dcgm")
	}
	if cfg.Peer {
		if b.peerBin, err = buildPeer(dir, peerBinary); err != nil {
			return nil, err
		}
		variants = append(variants, "peer")
	}
	if cfg.Floor {
		if b.floorBin, err = buildFloor(dir); err != nil {
			return nil, err
		}
		variants = append(variants, "floor")
	}
	rep := &report{Machine: describeMachine(), Config: cfg, Command: "go run ./test/bench " + strings.Join(os.Args[1:], " ")}
	for _, n := range cfg.Scrapers {
		for _, v := range variants {
			log.Printf("run: %s, %d scraper(s) at 1 Hz, %s warm-up, %s measured", v, n, cfg.Warmup, cfg.Duration)
			vv := b.forVariant(cfg, v)
			vv.name = v
			r, err := measure(cfg, bin, kubelet.Path(), n, vv)
			if err != nil {
				return rep, fmt.Errorf("run %s with %d scraper(s): %w", v, n, err)
			}
			r.Variant = v
			rep.Runs = append(rep.Runs, r)
		}
	}
	return rep, nil
}

// backend is how the agent reaches its GPUs: the simulated node's flags,
// or the mock library's, with the fake DCGM's where a variant has it.
type backend struct {
	uuids    []string // the mock's GPUs
	mockArgs []string // --nvml.library-path=...
	mockEnv  []string // MOCK_NVML_CONFIG=...
	mockDir  string   // the mock library's folder, for the peer's LD_LIBRARY_PATH
	peerBin  string
	floorBin string
	fakeDCGM string // the fake libdcgm.so.4's folder
	dcgmCtl  string // its control file

	kubeconfig string // the fake API server's, with -podwatch
}

// mockBackend builds NVIDIA's mock NVML library and the fake DCGM, which
// lists the mock profile's GPUs (its default values).
func mockBackend(dir string) (backend, error) {
	lib, configs, err := nvmlmock.Build()
	if err != nil {
		return backend{}, err
	}
	profile := filepath.Join(configs, "mock-nvml-config-t4.yaml")
	raw, err := os.ReadFile(profile)
	if err != nil {
		return backend{}, err
	}
	var doc struct {
		Devices []struct {
			UUID string `yaml:"uuid"`
		} `yaml:"devices"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return backend{}, fmt.Errorf("reading %s: %w", profile, err)
	}
	var uuids []string
	for _, d := range doc.Devices {
		uuids = append(uuids, d.UUID)
	}
	fake, err := fakedcgm.Build(dir)
	if err != nil {
		return backend{}, err
	}
	ctl := fakedcgm.Control{Path: filepath.Join(dir, "dcgm-control")}
	if err := ctl.Set("gpus=" + strings.Join(uuids, ",")); err != nil {
		return backend{}, err
	}
	return backend{uuids: uuids, mockArgs: []string{"--nvml.library-path=" + lib}, mockDir: filepath.Dir(lib),
		mockEnv: []string{"MOCK_NVML_CONFIG=" + profile}, fakeDCGM: fake, dcgmCtl: ctl.Path}, nil
}

// variant is one run's agent flags and environment.
type variant struct {
	name string
	args []string
	env  []string
	dcgm bool
	// podWatch is the pods the agent's watch must hold before the run
	// begins; 0 without the watch.
	podWatch int
	peer     string // the peer's binary: the run is the peer's, not the agent's
	// floor: the peer is test/bench/floor.
	floor bool
}

// peerBinary is -peer-bin.
var peerBinary string

// profileDir is -profile.
var profileDir string

// maxMissedPercent is -max-missed-percent.
var maxMissedPercent = 1.0

// buildFloor builds test/bench/floor.
func buildFloor(dir string) (string, error) {
	out := filepath.Join(dir, "floor")
	cmd := exec.Command("go", "build", "-o", out, "./test/bench/floor")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building test/bench/floor: %v\n%s", err, b)
	}
	return out, nil
}

// buildPeer builds nvidia_gpu_exporter from its source beside this
// repository (MIT; the module proxy does not serve it), unless bin is set.
func buildPeer(dir, bin string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	root, err := testutil.ModuleRoot()
	if err != nil {
		return "", err
	}
	src := filepath.Join(root, "..", "shared", "third_party", "nvidia_gpu_exporter")
	if _, err := os.Stat(filepath.Join(src, "go.mod")); err != nil {
		return "", fmt.Errorf("-peer: no nvidia_gpu_exporter source at %s: %w", src, err)
	}
	out := filepath.Join(dir, "nvidia_gpu_exporter")
	log.Printf("building nvidia_gpu_exporter from %s", src)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/nvidia_gpu_exporter")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building nvidia_gpu_exporter: %v\n%s", err, b)
	}
	return out, nil
}

func (b backend) forVariant(cfg config, v string) variant {
	if v == "floor" {
		return variant{peer: b.floorBin, floor: true, args: []string{"--library=" + strings.TrimPrefix(b.mockArgs[0], "--nvml.library-path="),
			"--interval=" + cfg.Interval.String()}, env: b.mockEnv}
	}
	if v == "peer" {
		return variant{peer: b.peerBin, env: append(slices.Clone(b.mockEnv), "LD_LIBRARY_PATH="+b.mockDir),
			args: []string{"--collect.backend=nvml", "--collect.interval=" + cfg.Interval.String(), "--log.level=warn"}}
	}
	if cfg.NVML == "sim" {
		return variant{args: []string{fmt.Sprintf("--simulate=%d", cfg.GPUs), fmt.Sprintf("--simulate.seed=%d", cfg.Seed)}}
	}
	out := variant{args: b.mockArgs, env: b.mockEnv}
	if b.kubeconfig != "" {
		out.args = append(slices.Clone(out.args), "--kubeconfig="+b.kubeconfig)
		out.podWatch = cfg.PodWatch
	}
	if strings.HasSuffix(v, "+dcgm") {
		out.args = append(slices.Clone(out.args), "--dcgm=embedded")
		out.env = append(slices.Clone(out.env), "LD_LIBRARY_PATH="+b.fakeDCGM, fakedcgm.ControlEnv+"="+b.dcgmCtl)
		out.dcgm = true
	}
	return out
}

// mockGPUPods is how many pods share the mock's GPUs with -podwatch, as
// many as the simulated node's.
const mockGPUPods = 64

// benchPods time-slices every simulated GPU between pods/gpus pods, as the
// NVIDIA device plugin's replicas (<uuid>::<n>) spell it.
func benchPods(cfg config) []*podresourcesv1.PodResources {
	var uuids []string
	for _, d := range sim.New(sim.Options{Devices: cfg.GPUs, Seed: cfg.Seed}).Devices() {
		uuids = append(uuids, d.UUID())
	}
	return sharedPods(uuids, cfg.Pods)
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
func measure(cfg config, bin, socket string, n int, v variant) (result, error) {
	r := result{Scrapers: n}
	var a *agentProc
	var err error
	if v.peer != "" {
		a, err = startPeer(v.peer, v.env, v.args...)
	} else {
		args := append(slices.Clone(v.args),
			"--interval="+cfg.Interval.String(), "--kubelet.pod-resources-socket="+socket,
			"--node-name="+benchNode, "--log.level=warn")
		if profileDir != "" {
			args = append(args, "--web.enable-pprof")
		}
		a, err = startAgent(bin, append(slices.Clone(v.env), cfg.AgentEnv...), args...)
	}
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
		_, vals, err := textScrape(client, url)
		if err != nil {
			return false, err
		}
		if v.floor {
			if vals["floor_gpus"] != float64(cfg.GPUs) || vals["floor_reads_total"] == 0 {
				return false, fmt.Errorf("the floor reads %v GPUs, %v reads", vals["floor_gpus"], vals["floor_reads_total"])
			}
			return true, nil
		}
		if v.peer != "" {
			if got := vals["count:nvidia_smi_count"]; got != float64(cfg.GPUs) {
				return false, fmt.Errorf("the peer serves %v GPUs", got)
			}
			return true, nil
		}
		if got := vals["count:DCGM_FI_DEV_GPU_UTIL"]; got != float64(cfg.Pods+cfg.GPUs) || vals["gpu_agent_kubelet_up"] != 1 {
			return false, fmt.Errorf("%v GPU-utilization series, kubelet_up %v", got, vals["gpu_agent_kubelet_up"])
		}
		if v.podWatch > 0 && (vals["gpu_agent_pod_watch_synced"] != 1 || vals["gpu_agent_pod_watch_pods"] != float64(v.podWatch)) {
			return false, fmt.Errorf("pod watch synced %v, %v pods of %d", vals["gpu_agent_pod_watch_synced"], vals["gpu_agent_pod_watch_pods"], v.podWatch)
		}
		if v.dcgm && (vals["gpu_agent_dcgm_up"] != 1 || vals["count:DCGM_FI_PROF_GR_ENGINE_ACTIVE"] != float64(cfg.GPUs)) {
			return false, fmt.Errorf("DCGM up %v, %v GR_ENGINE_ACTIVE series", vals["gpu_agent_dcgm_up"], vals["count:DCGM_FI_PROF_GR_ENGINE_ACTIVE"])
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
	var prof *profiler
	if profileDir != "" && v.peer == "" {
		prof = startProfile(a.addr, cfg.Duration, filepath.Join(profileDir, fmt.Sprintf("%s-%d", v.name, n)))
	}
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
	if prof != nil {
		if err := prof.finish(); err != nil {
			return r, err
		}
	}
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
	if v.peer != "" {
		// No sampling ticks of its own to count: its cost is the CPU.
		if err := a.Stop(testutil.StopTimeout); err != nil {
			return r, err
		}
		stopped = true
		return r, nil
	}
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
	if lost := r.ExpectedTicks - r.Ticks; float64(r.MissedTicks*100) > maxMissedPercent*float64(r.ExpectedTicks) ||
		float64(lost*100) > maxMissedPercent*float64(r.ExpectedTicks) {
		return r, fmt.Errorf("%d ticks taken of %d expected (%d reported missed): more than %g%% missed", r.Ticks, r.ExpectedTicks, r.MissedTicks, maxMissedPercent)
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
