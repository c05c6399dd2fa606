package livekit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// OptIn is the environment variable that runs the tests that start the
// SFU: see the package documentation.
const OptIn = "GPU_AGENT_LIVEKIT"

// Load is how the load generator runs: Publishers each publish one
// Opus-like track, Subscribers each subscribe to all of them. The pacing
// fields are loadgen's flags of the same names (see loadgen/config.go).
type Load struct {
	Publishers, Subscribers int
	// Bitrate is one publisher's mean payload bit rate at load factor 1.
	Bitrate            int
	PhaseMin, PhaseMax time.Duration
	Loads              []float64
	Skips              []float64
	Gaps               []time.Duration
	GapProb            float64
	Seed               int64
}

// args returns loadgen's pacing flags.
func (l Load) args() []string {
	fs := func(xs []float64) string {
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = strconv.FormatFloat(x, 'g', -1, 64)
		}
		return strings.Join(s, ",")
	}
	ds := make([]string, len(l.Gaps))
	for i, d := range l.Gaps {
		ds[i] = d.String()
	}
	args := []string{
		"-bitrate=" + strconv.Itoa(l.Bitrate),
		"-phase-min=" + l.PhaseMin.String(), "-phase-max=" + l.PhaseMax.String(),
		"-loads=" + fs(l.Loads),
		"-gap-prob=" + strconv.FormatFloat(l.GapProb, 'g', -1, 64),
		"-seed=" + strconv.FormatInt(l.Seed, 10),
	}
	if len(l.Skips) > 0 {
		args = append(args, "-skips="+fs(l.Skips))
	}
	if len(ds) > 0 {
		args = append(args, "-gaps="+strings.Join(ds, ","))
	}
	return args
}

// Options say what Start runs.
type Options struct {
	Load Load
	// Down shapes what the SFU sends the subscribers; Up what the
	// publishers send the SFU.
	Down, Up Shaper
	// ScrapeInterval is Prometheus's; zero: one second.
	ScrapeInterval time.Duration
	// ExtraTargets are host:port addresses Prometheus scrapes beside
	// LiveKit, such as an agent started after Start on an address chosen
	// before it (testutil.FreeAddrT).
	ExtraTargets []string
	// Room is the room everyone joins; empty: "load".
	Room string
}

// DefaultOptions is the load and impairment that spread LiveKit's
// jitter, RTT and loss histograms over several buckets each (see
// TestImpairedSFUHistograms for what they showed).
//
// Load: 4 publishers at a mean 200 kbit/s of payload each (about 230
// kbit/s on the wire), 3 subscribers, so the SFU forwards 12 streams.
// Load phases of 1-4 s, shared by the publishers, scale them by 0.4,
// 0.8, 1.1 or 1.4: the forwarded total swings between about 1.3 and 3.7
// Mbit/s on the wire. Each publisher's own phases skip 0, 0.3%, 2% or 8%
// of packets and hold packets for up to 0, 60, 150, 300 or 600 ms (a hold
// starting on 5% of packets), releasing them as a burst.
//
// Down: 3 Mbit/s with a 200 ms queue, so the low phases leave the queue
// empty (RTT under 50 ms), 1.1 sits at the edge (the queue wanders) and
// 1.4 fills it (RTT near 200 ms, drops). Up: 1.2 Mbit/s with a 100 ms
// queue, which the publishers (0.4-1.2 Mbit/s) reach only at 1.4.
func DefaultOptions() Options {
	return Options{
		Load: Load{
			Publishers: 4, Subscribers: 3,
			Bitrate:  200_000,
			PhaseMin: time.Second, PhaseMax: 4 * time.Second,
			Loads:   []float64{0.4, 0.8, 1.1, 1.4},
			Skips:   []float64{0, 0.003, 0.02, 0.08},
			Gaps:    []time.Duration{0, 60 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond},
			GapProb: 0.05,
			Seed:    1,
		},
		Down: Shaper{RateKbit: 3000, BurstBytes: 6000, Latency: 200 * time.Millisecond},
		Up:   Shaper{RateKbit: 1200, BurstBytes: 6000, Latency: 100 * time.Millisecond},
	}
}

// Env is a running SFU with its load, its network and a Prometheus
// scraping it.
type Env struct {
	// SFUAddr is LiveKit's signalling address (host:port), reachable from
	// the host; URL is its WebSocket URL.
	SFUAddr, URL string
	// MetricsAddr (host:port) and MetricsURL are LiveKit's Prometheus
	// endpoint, reachable from the host.
	MetricsAddr, MetricsURL string
	// PromURL is the Prometheus scraping MetricsAddr (and ExtraTargets)
	// every ScrapeInterval, as job gpu-agent with honor_labels.
	PromURL string
	Prom    *testutil.Prometheus
	// APIKey and APISecret sign access tokens; Room is the room the load
	// joined.
	APIKey, APISecret, Room string
	Net                     *Net
	SFU                     *testutil.Proc
	Publishers, Subscribers *testutil.Proc
	// Dir holds the configuration and every process's log.
	Dir     string
	Options Options
}

// Start runs the SFU in its namespace, Prometheus on the host and the
// load in theirs, and returns once every participant has joined. It
// skips t unless OptIn is 1; then a missing prerequisite skips it on a
// laptop and fails it under CI=true. Everything stops, and the
// namespaces go, at t's cleanup.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	requirements(t)
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = time.Second
	}
	if o.Room == "" {
		o.Room = "load"
	}
	ctx := t.Context()
	dir := t.TempDir()

	server, err := BuildServer(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	loadgen, err := testutil.Build(ctx, dir, "./loadgen", testutil.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}

	n, err := NewNet(o.Down, o.Up)
	if err != nil {
		if os.Getenv("CI") != "true" && strings.Contains(err.Error(), "tbf") {
			t.Skipf("this kernel cannot shape with tbf (sch_tbf): %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qdiscs at the end:\n%s", n.QdiscStats())
		}
		if err := n.Close(); err != nil {
			t.Errorf("%v", err)
		}
	})
	t.Logf("SFU %s in %s; down: %s; up: %s", n.SFUIP, n.SFUNS, o.Down, o.Up)

	e := &Env{
		SFUAddr:     hostPort(n.SFUIP, SignalPort),
		MetricsAddr: hostPort(n.SFUIP, PrometheusPort),
		APIKey:      DevAPIKey, APISecret: DevAPISecret, Room: o.Room,
		Net: n, Dir: dir, Options: o,
	}
	e.URL = "ws://" + e.SFUAddr
	e.MetricsURL = "http://" + e.MetricsAddr + "/metrics"

	config := filepath.Join(dir, "livekit.yaml")
	if err := os.WriteFile(config, []byte(sfuConfig(n.SFUIP)), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := n.Command(n.SFUNS, server, "--dev", "--config", config)
	e.SFU = testutil.StartT(t, "livekit-server", procOptions(dir, "livekit-server"), argv[0], argv[1:]...)
	if err := e.SFU.WaitHTTP(ctx, nil, "http://"+e.SFUAddr+"/", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := e.SFU.WaitHTTP(ctx, nil, e.MetricsURL, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	e.Prom = testutil.StartPrometheusT(t, testutil.PrometheusOptions{
		Dir: dir, Targets: append([]string{e.MetricsAddr}, o.ExtraTargets...), ScrapeInterval: o.ScrapeInterval,
		Proc: testutil.ProcOptions{LogFile: filepath.Join(dir, "prometheus.log")},
	})
	e.PromURL = e.Prom.URL()

	common := []string{"-url=" + e.URL, "-api-key=" + e.APIKey, "-api-secret=" + e.APISecret, "-room=" + o.Room}
	// Subscribers first, so that they see every track published.
	argv = n.Command(n.SubNS, append(append([]string{loadgen}, common...), "-subscribers="+strconv.Itoa(o.Load.Subscribers))...)
	e.Subscribers = testutil.StartT(t, "loadgen-sub", procOptions(dir, "loadgen-sub"), argv[0], argv[1:]...)
	argv = n.Command(n.PubNS, append(append(append([]string{loadgen}, common...), o.Load.args()...), "-publishers="+strconv.Itoa(o.Load.Publishers))...)
	e.Publishers = testutil.StartT(t, "loadgen-pub", procOptions(dir, "loadgen-pub"), argv[0], argv[1:]...)
	for _, p := range []*testutil.Proc{e.Subscribers, e.Publishers} {
		err := testutil.Poll(ctx, time.Minute, func() (bool, error) {
			if err := p.Alive(); err != nil {
				return true, err
			}
			return strings.Contains(p.Output(), "msg=joined"), nil
		})
		if err != nil {
			t.Fatalf("waiting for %s to join: %v", p.Name, err)
		}
	}
	return e
}

func procOptions(dir, name string) testutil.ProcOptions {
	return testutil.ProcOptions{Group: true, LogFile: filepath.Join(dir, name+".log")}
}

// errSkip marks a missing prerequisite: skipped on a laptop, failed
// under CI=true.
var errSkip = errors.New("missing prerequisite")

// requirements skips t unless OptIn is 1, then skips or, under CI=true,
// fails it when a tool or privilege the harness needs is missing.
func requirements(t testing.TB) {
	t.Helper()
	if os.Getenv(OptIn) != "1" {
		t.Skipf("the real SFU runs only with %s=1: the first run builds livekit-server (minutes), and it needs root", OptIn)
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the SFU and the load run in network namespaces)")
	}
	for _, tool := range []struct{ bin, pkg string }{{"ip", "iproute2"}, {"tc", "iproute2"}, {"prometheus", "prometheus"}, {"go", "the Go toolchain"}} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian: %s)", tool.bin, tool.pkg))
		}
	}
	if len(missing) == 0 {
		return
	}
	err := fmt.Errorf("%w: %s", errSkip, strings.Join(missing, ", "))
	if os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	t.Fatal(err)
}
