package fleet_test

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
	"github.com/gpu-telemetry/agent/internal/fleet/keda"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
)

// The fleet of fake agents runs in a child process (this test binary,
// re-executed), so that the CPU time and RSS measured are the scaler's
// alone. Its knobs come from the environment.
const fleetEnv = "GPU_SCALER_BENCH_FLEET"

// TestMain runs the fleet in its child process, else the package's
// tests, failing them if a goroutine they started is still running when
// they end.
func TestMain(m *testing.M) {
	if os.Getenv(fleetEnv) != "" {
		runFleet()
		return
	}
	goleak.VerifyTestMain(m)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// raiseFileLimit lifts the soft limit on open files to the hard one:
// 5,000 agents are 5,000 listeners and 5,000 connections in the fleet,
// and 5,000 connections in the scaler.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// matches reports whether node i's pods are the ones the benchmark's
// triggers select: pct percent of the nodes, spread evenly.
func matches(i, pct int) bool { return (i+1)*pct/100 > i*pct/100 }

// runFleet serves FANIN_AGENTS agents of FANIN_GPUS GPUs each, publishing
// at FANIN_HZ, with each pod's own share when FANIN_SHARES=1, prints their
// addresses on one line, and runs until stdin closes (the benchmark ended
// or died). Each GPU holds one pod; on FANIN_MATCH percent (10) of the
// nodes they are "inference-" pods, which the triggers select, elsewhere
// "batch-" pods. With FANIN_FILTERS=1 the agents honour the scaler's
// request as the real agent does; with 0 they send every pod and field
// at every tick, as agents older than the filters (or a scaler asking
// for everything) do.
func runFleet() {
	raiseFileLimit()
	n, gpus, hz := envInt("FANIN_AGENTS", 1000), envInt("FANIN_GPUS", 8), envInt("FANIN_HZ", 4)
	shares := envInt("FANIN_SHARES", 0) > 0
	filters := os.Getenv("FANIN_FILTERS") != "0"
	pct := envInt("FANIN_MATCH", 10)
	period := time.Second / time.Duration(hz)
	fakes := make([]*scalertest.Agent, n)
	addrs := make([]string, n)
	for i := range fakes {
		a, err := scalertest.StartAgent(fmt.Sprintf("node-%04d", i), "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		a.Interval = period
		a.HonourFilters(filters)
		fakes[i], addrs[i] = a, a.Addr()
	}
	fmt.Println(strings.Join(addrs, ","))
	for i, a := range fakes {
		kind := "batch"
		if matches(i, pct) {
			kind = "inference"
		}
		// What does not change between ticks is made once: the fleet
		// shares the scaler's two cores, and the less it takes the
		// less it disturbs what is measured.
		uuids, pods := make([]string, gpus), make([][]*telemetryv1.Pod, gpus)
		for g := range gpus {
			uuids[g] = fmt.Sprintf("GPU-%04d-%d", i, g)
			pods[g] = scalertest.Device("", 0, fmt.Sprintf("default/%s-%04d-%d", kind, i, g)).Pods
		}
		go func() {
			time.Sleep(period * time.Duration(i) / time.Duration(n)) // staggered, as real nodes are
			t := time.NewTicker(period)
			used, total := uint64(4<<30), uint64(15<<30)
			for tick := 0; ; tick++ {
				devs := make([]*telemetryv1.Device, gpus)
				now := time.Now()
				// The driver's samples since the last message: about 1.5
				// per engine at 4 Hz with a 1/6 s sample period.
				perEngine := 1 + tick%2
				samples := make([]telemetryv1.Sample, gpus*4*perEngine)
				engines := make([]telemetryv1.EngineSamples, gpus*4)
				for g := range devs {
					u := 50 + 40*math.Sin(float64(tick+i*7+g)/10)
					d := &telemetryv1.Device{Uuid: uuids[g], ModelName: "Tesla T4", GpuUtil: &u, MemCopyUtil: &u, EncUtil: &u, DecUtil: &u,
						FbUsedBytes: &used, FbTotalBytes: &total, Pods: pods[g], Samples: make([]*telemetryv1.EngineSamples, 4)}
					if shares {
						// Per-process attribution on: the pod's own share of
						// every field, as the agent sends it.
						pu, sessions, fps, lat := u*0.9, uint32(4), 30.0, 0.003
						d.Pods = scalertest.Device("", 0, "default/"+pods[g][0].Name).Pods
						for _, p := range d.Pods {
							p.GpuUtil, p.MemCopyUtil, p.EncUtil, p.DecUtil, p.FbUsedBytes = &pu, &pu, &pu, &pu, &used
							p.EncoderSessions, p.EncoderFps, p.EncoderLatencySeconds, p.EncoderLatencyMaxSeconds = &sessions, &fps, &lat, &lat
						}
					}
					for e := range 4 {
						es := &engines[g*4+e]
						es.Engine = telemetryv1.Engine_ENGINE_GPU + telemetryv1.Engine(e)
						for k := range perEngine {
							sm := &samples[(g*4+e)*perEngine+k]
							sm.TimeUnixMicro, sm.Value = now.Add(-time.Duration(k)*166*time.Millisecond).UnixMicro(), u
							es.Samples = append(es.Samples, sm)
						}
						d.Samples[e] = es
					}
					devs[g] = d
				}
				a.Publish(devs...)
				<-t.C
			}
		}()
	}
	bufio.NewReader(os.Stdin).ReadString('\n') // EOF when the parent goes
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// recorder keeps the server-side GetMetrics durations.
type recorder struct {
	mu sync.Mutex
	d  []time.Duration
}

func (r *recorder) Observe(s float64) {
	r.mu.Lock()
	r.d = append(r.d, time.Duration(s*float64(time.Second)))
	r.mu.Unlock()
}

// since returns the durations after the first skip (the warm-up calls).
func (r *recorder) since(skip int) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.d[min(skip, len(r.d)):]...)
}

// procCPU is a process's user+system CPU time, from /proc/<pid>/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func rssMiB() (rss, hwm float64) {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// untilAnswered calls GetMetrics for ref every 10 ms until it answers
// other than Unavailable, and returns how long after the first call it
// did: a new trigger's Unavailable window.
func untilAnswered(ctx context.Context, client externalscaler.ExternalScalerClient, ref *externalscaler.ScaledObjectRef) (time.Duration, error) {
	start := time.Now()
	for {
		_, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref})
		if status.Code(err) != codes.Unavailable {
			return time.Since(start), err
		}
		if time.Since(start) > 2*time.Minute {
			return 0, fmt.Errorf("still unavailable after 2 min: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkFanIn: the scaler (store, agent pool over real gRPC on
// loopback, the demand that re-subscribes the agents, KEDA server) fed by
// FANIN_AGENTS (1,000) agents of 8 GPUs at 4 Hz, while KEDA's client
// calls GetMetrics 50 times a second over three triggers (over the
// "inference-" pods, FANIN_MATCH percent of them; one with a 5 s window)
// and one StreamIsActive stream is open. The agents honour the scaler's
// request (FANIN_FILTERS=1, the default) or send everything (0). It
// reports the scaler process's CPU (cores), RSS, GetMetrics p50/p99 in the
// server and at the client and the snapshots ingested per second, over
// FANIN_SECONDS (20) after every agent has reported and the triggers
// are answered; and the Unavailable window of the first triggers and of
// one more trigger added after the measurement (from its first GetMetrics
// to its first answer). FANIN_MEMLIMIT_MIB sets the scaler's soft memory
// limit, as GOMEMLIMIT would (not the fleet's); FANIN_PROFILE_DIR keeps
// the measurement's CPU profile and the heap and goroutines at its end.
// Run it alone:
//
//	go test -run '^$' -bench FanIn -benchtime 1x ./internal/fleet/
func BenchmarkFanIn(b *testing.B) {
	nAgents, seconds := envInt("FANIN_AGENTS", 1000), envInt("FANIN_SECONDS", 20)
	for b.Loop() {
		fanIn(b, nAgents, time.Duration(seconds)*time.Second)
	}
}

func fanIn(b *testing.B, nAgents int, span time.Duration) {
	raiseFileLimit()
	if os.Getenv("GOGC") == "" {
		// As cmd/scaler sets it (the fleet, a child, keeps Go's own).
		defer debug.SetGCPercent(debug.SetGCPercent(fleet.DefaultGCPercent))
	}
	if mib := envInt("FANIN_MEMLIMIT_MIB", 0); mib > 0 {
		// The scaler's soft memory limit (GOMEMLIMIT), not the fleet's.
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(mib) << 20))
	}
	load0 := loadavg()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), fleetEnv+"=1")
	child.Stderr = os.Stderr
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); child.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("fleet: %v", err)
	}
	addrs := strings.Split(strings.TrimSpace(line), ",")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := fleet.NewStore(fleet.Options{MaxWindow: 15 * time.Second})
	queries := fleet.NewQueryCache(15*time.Second, 4096, store.Retain)
	answers := &recorder{}
	pool, err := agents.New(store, agents.Options{Static: addrs, AnswerDuration: answers,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}})
	if err != nil {
		b.Fatal(err)
	}
	// As cmd/scaler wires them: the agents are asked for what the live
	// triggers need.
	store.SetAnswered(pool.Answered)
	pool.SetRequest(store.Subscription())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); pool.Run(ctx) }()
	go func() { defer wg.Done(); store.RunDemand(ctx, fleet.DemandOptions{}, pool.SetRequest) }()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				store.Sweep()
			}
		}
	}()
	gs := grpc.NewServer()
	serverSide := &recorder{}
	ks := keda.New(store, queries, keda.Options{GetMetricsDuration: serverSide})
	ks.Register(gs)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go gs.Serve(ln)
	defer func() { ks.Shutdown(); gs.Stop(); cancel(); wg.Wait() }()
	conn, _ := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	client := externalscaler.NewExternalScalerClient(conn)

	t0 := time.Now()
	deadline := t0.Add(3 * time.Minute)
	for {
		if fresh, _ := store.NodeCounts(); fresh == nAgents {
			b.Logf("%d agents connected and fresh in %s", nAgents, time.Since(t0).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			fresh, stale := store.NodeCounts()
			if os.Getenv("FANIN_FILTERS") != "0" {
				b.Fatalf("after 3 min, %d fresh and %d stale nodes of %d", fresh, stale, nAgents)
			}
			// Full subscriptions can be more than the machine can take:
			// that is what the comparison shows. Measure what it gets.
			b.Logf("saturated: after 3 min, %d fresh and %d stale nodes of %d; measuring what the scaler takes", fresh, stale, nAgents)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	ref := func(kv ...string) *externalscaler.ScaledObjectRef {
		md := map[string]string{"metric": "gpu_util", "podPattern": "inference-.*", "target": "70", "activationTarget": "50"}
		for i := 0; i < len(kv); i += 2 {
			md[kv[i]] = kv[i+1]
		}
		return &externalscaler.ScaledObjectRef{Name: "so", Namespace: "default", ScalerMetadata: md}
	}
	refs := []*externalscaler.ScaledObjectRef{
		ref("aggregation", "avg"),
		ref("aggregation", "p95"),
		ref("metric", "enc_util", "aggregation", "max", "window", "5s"),
	}
	stream, err := client.StreamIsActive(ctx, refs[0])
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	// The first triggers, KEDA's first polls: one re-subscription, and
	// Unavailable until every agent answered it.
	var firstWindow time.Duration
	var mu sync.Mutex
	var eg sync.WaitGroup
	for _, r := range refs {
		eg.Add(1)
		go func() {
			defer eg.Done()
			w, err := untilAnswered(ctx, client, r)
			if err != nil {
				b.Error(err)
			}
			mu.Lock()
			firstWindow = max(firstWindow, w)
			mu.Unlock()
		}()
	}
	eg.Wait()
	if b.Failed() {
		return
	}
	time.Sleep(6 * time.Second) // let the window fill
	runtime.GC()

	load1 := loadavg()
	dir := os.Getenv("FANIN_PROFILE_DIR")
	if dir != "" {
		// The measurement's CPU, not the connections' set-up.
		if f, err := os.Create(filepath.Join(dir, "cpu.pprof")); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer f.Close()
			}
		}
	}
	snaps0, cpu0, fleet0, m0 := pool.Stats().Snapshots, cpuTime(), procCPU(child.Process.Pid), time.Now()
	srv0 := len(serverSide.since(0))
	var lat []time.Duration
	unavailable := 0 // answers Unavailable: a scaler too loaded to keep its nodes fresh
	var lastUnavailable error
	tick := time.NewTicker(20 * time.Millisecond)
	for i := 0; time.Since(m0) < span; i++ {
		<-tick.C
		start := time.Now()
		_, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: refs[i%len(refs)]})
		switch {
		case status.Code(err) == codes.Unavailable:
			unavailable++
			lastUnavailable = err
		case err != nil:
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	tick.Stop()
	wall := time.Since(m0)
	cpu := cpuTime() - cpu0
	fleetCPU := procCPU(child.Process.Pid) - fleet0
	snaps := pool.Stats().Snapshots - snaps0
	rss, hwm := rssMiB()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	goroutines := runtime.NumGoroutine()
	load2 := loadavg()
	if dir != "" {
		pprof.StopCPUProfile()
		// What the scaler holds while it serves, not after it stopped.
		for _, name := range []string{"heap", "goroutine"} {
			if f, err := os.Create(filepath.Join(dir, name+".pprof")); err == nil {
				pprof.Lookup(name).WriteTo(f, 0)
				f.Close()
			}
		}
	}
	srv := serverSide.since(srv0)

	// What stays of the heap after a collection: what the scaler needs,
	// RSS being that plus the garbage GOGC lets it keep, and the stacks.
	runtime.GC()
	var live runtime.MemStats
	runtime.ReadMemStats(&live)

	// One more trigger, on fields the subscription does not send yet: the
	// agents are re-subscribed, and it is Unavailable until all answered.
	newWindow, err := untilAnswered(ctx, client, ref("metric", "fb_used_ratio", "aggregation", "avg"))
	if err != nil {
		b.Fatal(err)
	}
	ans := answers.since(0)
	var lastAnswer time.Duration
	if len(ans) > 0 {
		lastAnswer = ans[len(ans)-1]
	}

	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores")
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(hwm, "rss-peak-MiB")
	b.ReportMetric(float64(snaps)/wall.Seconds(), "snapshots/s")
	b.ReportMetric(ms(scalertest.Percentile(lat, 50)), "getmetrics-p50-ms")
	b.ReportMetric(ms(scalertest.Percentile(lat, 99)), "getmetrics-p99-ms")
	b.ReportMetric(ms(scalertest.Percentile(srv, 50)), "getmetrics-server-p50-ms")
	b.ReportMetric(ms(scalertest.Percentile(srv, 99)), "getmetrics-server-p99-ms")
	b.ReportMetric(fleetCPU.Seconds()/wall.Seconds(), "fleet-cpu-cores")
	b.ReportMetric(float64(live.HeapAlloc)/(1<<20), "live-heap-MiB")
	b.ReportMetric(float64(unavailable), "getmetrics-unavailable")
	if unavailable > 0 {
		b.Logf("%d of %d GetMetrics answered Unavailable, the last: %v", unavailable, len(lat), lastUnavailable)
	}
	b.ReportMetric(ms(firstWindow), "unavailable-first-ms")
	b.ReportMetric(ms(newWindow), "unavailable-new-ms")
	b.ReportMetric(ms(lastAnswer), "resub-answer-ms")
	b.Logf("filters=%s match=%d%%: %d agents x 8 GPUs: %.0f snapshots/s (%.0f at full rate) over %s, scaler CPU %.2f cores (fleet %.2f), RSS %.0f MiB (peak %.0f), Go heap in use %.0f MiB (live after a GC %.0f MiB), stacks %.0f MiB, %d goroutines",
		os.Getenv("FANIN_FILTERS"), envInt("FANIN_MATCH", 10), nAgents, float64(snaps)/wall.Seconds(), float64(nAgents*envInt("FANIN_HZ", 4)), wall.Round(time.Millisecond),
		cpu.Seconds()/wall.Seconds(), fleetCPU.Seconds()/wall.Seconds(), rss, hwm, float64(mem.HeapInuse)/(1<<20), float64(live.HeapAlloc)/(1<<20), float64(mem.StackInuse)/(1<<20), goroutines)
	b.Logf("GetMetrics in the server: p50 %s p99 %s; at the client: p50 %s p99 %s max %s (%d calls)",
		scalertest.Percentile(srv, 50), scalertest.Percentile(srv, 99),
		scalertest.Percentile(lat, 50), scalertest.Percentile(lat, 99), scalertest.Percentile(lat, 100), len(lat))
	b.Logf("Unavailable: the first triggers %s, a new trigger %s (the last re-subscription answered by every agent in %s; all: %v)",
		firstWindow.Round(time.Millisecond), newWindow.Round(time.Millisecond), lastAnswer.Round(time.Millisecond), ans)
	b.Logf("load average: %s at the start, %s before the measurement, %s after it", load0, load1, load2)
}
