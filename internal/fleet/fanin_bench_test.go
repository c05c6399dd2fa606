package fleet_test

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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

// runFleet serves FANIN_AGENTS agents of FANIN_GPUS GPUs each, publishing
// at FANIN_HZ, with each pod's own share when FANIN_SHARES=1, prints their
// addresses on one line, and runs until stdin closes (the benchmark ended
// or died).
func runFleet() {
	n, gpus, hz := envInt("FANIN_AGENTS", 1000), envInt("FANIN_GPUS", 8), envInt("FANIN_HZ", 4)
	shares := envInt("FANIN_SHARES", 0) > 0
	fakes := make([]*scalertest.Agent, n)
	addrs := make([]string, n)
	for i := range fakes {
		a, err := scalertest.StartAgent(fmt.Sprintf("node-%04d", i), "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fakes[i], addrs[i] = a, a.Addr()
	}
	fmt.Println(strings.Join(addrs, ","))
	period := time.Second / time.Duration(hz)
	for i, a := range fakes {
		go func() {
			time.Sleep(period * time.Duration(i) / time.Duration(n)) // staggered, as real nodes are
			t := time.NewTicker(period)
			for tick := 0; ; tick++ {
				devs := make([]*telemetryv1.Device, gpus)
				now := time.Now()
				for g := range devs {
					u := 50 + 40*math.Sin(float64(tick+i*7+g)/10)
					d := scalertest.Device(fmt.Sprintf("GPU-%04d-%d", i, g), u, fmt.Sprintf("default/inference-%04d-%d", i, g))
					used, total := uint64(4<<30), uint64(15<<30)
					d.FbUsedBytes, d.FbTotalBytes = &used, &total
					if shares {
						// Per-process attribution on: the pod's own share of
						// every field, as the agent sends it.
						pu, sessions, fps, lat := u*0.9, uint32(4), 30.0, 0.003
						for _, p := range d.Pods {
							p.GpuUtil, p.MemCopyUtil, p.EncUtil, p.DecUtil, p.FbUsedBytes = &pu, &pu, &pu, &pu, &used
							p.EncoderSessions, p.EncoderFps, p.EncoderLatencySeconds, p.EncoderLatencyMaxSeconds = &sessions, &fps, &lat, &lat
						}
					}
					// The driver's samples since the last message: about 1.5
					// per engine at 4 Hz with a 1/6 s sample period.
					for e := telemetryv1.Engine_ENGINE_GPU; e <= telemetryv1.Engine_ENGINE_DECODER; e++ {
						es := &telemetryv1.EngineSamples{Engine: e}
						for k := range 1 + tick%2 {
							es.Samples = append(es.Samples, &telemetryv1.Sample{TimeUnixMicro: now.Add(-time.Duration(k) * 166 * time.Millisecond).UnixMicro(), Value: u})
						}
						d.Samples = append(d.Samples, es)
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

// BenchmarkFanIn: the scaler (store, agent pool over real gRPC on
// loopback, KEDA server) fed by FANIN_AGENTS (1,000) agents of 8 GPUs at
// 4 Hz, while KEDA's client calls GetMetrics 50 times a second over three
// triggers (8,000 matching pods each; one with a 5 s window) and one
// StreamIsActive stream is open. It reports the scaler process's CPU
// (cores), RSS, GetMetrics p50/p99 and the snapshots ingested per second,
// over FANIN_SECONDS (10) after every agent has reported. Run it alone:
//
//	go test -run '^$' -bench FanIn -benchtime 1x ./internal/fleet/
func BenchmarkFanIn(b *testing.B) {
	nAgents, seconds := envInt("FANIN_AGENTS", 1000), envInt("FANIN_SECONDS", 10)
	for b.Loop() {
		fanIn(b, nAgents, time.Duration(seconds)*time.Second)
	}
}

func fanIn(b *testing.B, nAgents int, span time.Duration) {
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
	pool, err := agents.New(store, agents.Options{Static: addrs,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pool.Run(ctx) }()
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

	deadline := time.Now().Add(2 * time.Minute)
	for {
		if fresh, _ := store.NodeCounts(); fresh == nAgents {
			break
		}
		if time.Now().After(deadline) {
			fresh, stale := store.NodeCounts()
			b.Fatalf("after 2 min, %d fresh and %d stale nodes of %d", fresh, stale, nAgents)
		}
		time.Sleep(100 * time.Millisecond)
	}
	refs := []*externalscaler.ScaledObjectRef{}
	for _, kv := range [][]string{
		{"aggregation", "avg"},
		{"aggregation", "p95"},
		{"metric", "enc_util", "aggregation", "max", "window", "5s"},
	} {
		md := map[string]string{"metric": "gpu_util", "podPattern": "inference-.*", "target": "70", "activationTarget": "50"}
		for i := 0; i < len(kv); i += 2 {
			md[kv[i]] = kv[i+1]
		}
		refs = append(refs, &externalscaler.ScaledObjectRef{Name: "so", Namespace: "default", ScalerMetadata: md})
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
	for _, r := range refs { // parse once, and let the window fill
		if _, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: r}); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(6 * time.Second)
	runtime.GC()

	snaps0, cpu0, fleet0, t0 := pool.Stats().Snapshots, cpuTime(), procCPU(child.Process.Pid), time.Now()
	var lat []time.Duration
	tick := time.NewTicker(20 * time.Millisecond)
	for i := 0; time.Since(t0) < span; i++ {
		<-tick.C
		start := time.Now()
		if _, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: refs[i%len(refs)]}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	tick.Stop()
	wall := time.Since(t0)
	cpu := cpuTime() - cpu0
	fleetCPU := procCPU(child.Process.Pid) - fleet0
	snaps := pool.Stats().Snapshots - snaps0
	rss, hwm := rssMiB()
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores")
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(hwm, "rss-peak-MiB")
	b.ReportMetric(float64(snaps)/wall.Seconds(), "snapshots/s")
	b.ReportMetric(float64(scalertest.Percentile(lat, 50).Microseconds())/1000, "getmetrics-p50-ms")
	b.ReportMetric(float64(scalertest.Percentile(lat, 99).Microseconds())/1000, "getmetrics-p99-ms")
	b.ReportMetric(fleetCPU.Seconds()/wall.Seconds(), "fleet-cpu-cores")
	srv := serverSide.since(len(refs))
	b.ReportMetric(float64(scalertest.Percentile(srv, 99).Microseconds())/1000, "getmetrics-server-p99-ms")
	b.Logf("GetMetrics inside the server (evaluation alone): p50 %s p99 %s", scalertest.Percentile(srv, 50), scalertest.Percentile(srv, 99))
	b.Logf("%d agents x 8 GPUs: %.0f snapshots/s (%.0f asked) over %s, scaler CPU %.2f cores (fleet %.2f), RSS %.0f MiB (peak %.0f), GetMetrics p50 %s p99 %s max %s (%d calls)",
		nAgents, float64(snaps)/wall.Seconds(), float64(nAgents*envInt("FANIN_HZ", 4)), wall.Round(time.Millisecond), cpu.Seconds()/wall.Seconds(), fleetCPU.Seconds()/wall.Seconds(), rss, hwm,
		scalertest.Percentile(lat, 50), scalertest.Percentile(lat, 99), scalertest.Percentile(lat, 100), len(lat))
}
