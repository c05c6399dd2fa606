package fleet

import (
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTestStore(t *testing.T) (*Store, *clock) {
	t.Helper()
	c := &clock{t: epoch}
	return NewStore(Options{StaleAfter: time.Second, ForgetAfter: time.Minute, MaxWindow: time.Minute, Now: c.Now}), c
}

// dev is a device at util percent on every engine, held by pods "ns/name".
func dev(uuid string, util float64, pods ...string) *telemetryv1.Device {
	d := &telemetryv1.Device{Uuid: uuid, GpuUtil: &util, EncUtil: &util}
	for _, p := range pods {
		ns, name, _ := strings.Cut(p, "/")
		d.Pods = append(d.Pods, &telemetryv1.Pod{Namespace: ns, Name: name, Container: "c"})
	}
	return d
}

func snap(node string, seq uint64, at time.Time, devs ...*telemetryv1.Device) *telemetryv1.NodeSnapshot {
	return &telemetryv1.NodeSnapshot{
		Node: node, Sequence: seq,
		SampleTime: timestamppb.New(at), Interval: durationpb.New(250 * time.Millisecond),
		AgentStart: timestamppb.New(epoch), Devices: devs,
	}
}

func mustQuery(t testing.TB, kv ...string) *Query {
	t.Helper()
	q, err := ParseMetadata(md(kv...), "default", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func ingest(t testing.TB, s *Store, snaps ...*telemetryv1.NodeSnapshot) {
	t.Helper()
	for _, sn := range snaps {
		if err := s.Ingest(sn); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAggregations(t *testing.T) {
	s, _ := newTestStore(t)
	ingest(t, s,
		snap("n1", 1, epoch,
			dev("GPU-1", 10, "default/inference-0"),
			dev("GPU-2", 30, "default/inference-1", "default/inference-2"), // shared: counts for both
			dev("GPU-3", 99, "default/other-0"),
			dev("GPU-4", 99, "prod/inference-9")),
		snap("n2", 1, epoch,
			// A pod with two GPUs is at their mean: 50.
			dev("GPU-5", 40, "default/inference-3"),
			dev("GPU-6", 60, "default/inference-3"),
			dev("GPU-7", 100, "default/inference-4")),
	)
	// Pods: 10, 30, 30, 50, 100.
	for agg, want := range map[string]float64{"avg": 44, "max": 100, "sum": 220, "p95": 100} {
		res, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "target", "1", "aggregation", agg))
		if err != nil {
			t.Fatal(err)
		}
		if res.Value != want || res.Pods != 5 || res.Nodes != 2 {
			t.Errorf("%s = %v, want %v over 5 pods on 2 nodes", agg, res, want)
		}
	}
}

func TestP95NearestRank(t *testing.T) {
	s, _ := newTestStore(t)
	var devs []*telemetryv1.Device
	for i := 1; i <= 40; i++ { // pods at 1..40
		devs = append(devs, dev("GPU-"+string(rune('A'+i)), float64(i), "default/p-"+string(rune('A'+i))))
	}
	ingest(t, s, snap("n", 1, epoch, devs...))
	res, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "target", "1", "aggregation", "p95"))
	if err != nil || res.Value != 38 { // ceil(0.95*40) = 38th smallest
		t.Errorf("p95 = %v, %v; want 38", res, err)
	}
}

func TestWindow(t *testing.T) {
	s, _ := newTestStore(t)
	q := mustQuery(t, "metric", "enc_util", "podPattern", "webrtc-.*", "target", "1", "aggregation", "max", "window", "2s")
	s.Retain(q)
	at := func(d time.Duration) time.Time { return epoch.Add(d) }
	samples := func(from time.Duration, vals ...float64) []*telemetryv1.EngineSamples {
		es := &telemetryv1.EngineSamples{Engine: telemetryv1.Engine_ENGINE_ENCODER}
		for i, v := range vals {
			es.Samples = append(es.Samples, &telemetryv1.Sample{TimeUnixMicro: at(from + time.Duration(i)*100*time.Millisecond).UnixMicro(), Value: v})
		}
		return []*telemetryv1.EngineSamples{es}
	}
	d1 := dev("GPU-1", 20, "default/webrtc-0")
	d1.Samples = samples(0, 10, 95, 10) // a spike between two snapshots
	ingest(t, s, snap("n", 1, at(300*time.Millisecond), d1))
	d2 := dev("GPU-1", 20, "default/webrtc-0")
	d2.Samples = samples(time.Second, 20, 30)
	ingest(t, s, snap("n", 2, at(1100*time.Millisecond), d2))

	// The latest value misses the spike; max over the window does not.
	latest, _ := s.Evaluate(mustQuery(t, "metric", "enc_util", "podPattern", "webrtc-.*", "target", "1", "aggregation", "max"))
	res, err := s.Evaluate(q)
	if err != nil || latest.Value != 20 || res.Value != 95 {
		t.Errorf("latest max = %v, window max = %v (%v); want 20 and 95", latest, res, err)
	}
	// avg over the window is over every sample: (10+95+10+20+30)/5 = 33.
	if res, _ := s.Evaluate(mustQuery(t, "metric", "enc_util", "podPattern", "webrtc-.*", "target", "1", "window", "2s")); res.Value != 33 {
		t.Errorf("window avg = %v, want 33", res)
	}
	// fb has no hardware samples: the snapshots' values make the window.
	// gpu_util had no samples either: 20 at both snapshots.
	if res, _ := s.Evaluate(mustQuery(t, "metric", "gpu_util", "podPattern", "webrtc-.*", "target", "1", "window", "2s", "aggregation", "max")); res.Value != 20 {
		t.Errorf("gpu_util window max = %v, want 20", res)
	}
	// Three seconds on (node clock), the spike has left the window.
	d3 := dev("GPU-1", 20, "default/webrtc-0")
	d3.Samples = samples(3500*time.Millisecond, 40)
	ingest(t, s, snap("n", 3, at(3600*time.Millisecond), d3))
	if res, _ := s.Evaluate(q); res.Value != 40 {
		t.Errorf("window max after the spike left = %v, want 40", res)
	}
}

func TestFramebufferRatioAndEncoder(t *testing.T) {
	s, _ := newTestStore(t)
	used, total, fps, lat := uint64(3<<30), uint64(12<<30), 58.0, 0.012
	d := &telemetryv1.Device{Uuid: "GPU-1", FbUsedBytes: &used, FbTotalBytes: &total, EncoderFps: &fps, EncoderLatencySeconds: &lat,
		Pods: []*telemetryv1.Pod{{Namespace: "default", Name: "a"}}}
	ingest(t, s, snap("n", 1, epoch, d))
	for m, want := range map[string]float64{"fb_used_ratio": 0.25, "encoder_fps": 58, "encoder_latency": 0.012} {
		if res, err := s.Evaluate(mustQuery(t, "metric", m, "target", "1")); err != nil || res.Value != want {
			t.Errorf("%s = %v, %v; want %v", m, res, err, want)
		}
	}
	// No gpu_util reading at all: not a 0.
	if _, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "target", "1")); !errors.Is(err, ErrNoReading) {
		t.Errorf("absent reading: err = %v, want ErrNoReading", err)
	}
}

func TestStaleness(t *testing.T) {
	s, c := newTestStore(t)
	q := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "target", "1", "aggregation", "sum")
	if _, err := s.Evaluate(q); !errors.Is(err, ErrNoAgents) {
		t.Fatalf("no agent yet: err = %v, want ErrNoAgents", err)
	}
	ingest(t, s, snap("n1", 1, epoch, dev("GPU-1", 10, "default/inference-0")),
		snap("n2", 1, epoch, dev("GPU-2", 20, "default/inference-1")))
	if res, _ := s.Evaluate(q); res.Value != 30 {
		t.Fatalf("sum = %v, want 30", res)
	}
	// n2 goes silent past the timeout: its pod leaves the aggregate.
	c.Add(800 * time.Millisecond)
	ingest(t, s, snap("n1", 2, epoch, dev("GPU-1", 10, "default/inference-0")))
	c.Add(400 * time.Millisecond)
	if res, err := s.Evaluate(q); err != nil || res.Value != 10 || res.Nodes != 1 {
		t.Errorf("n2 silent 1.2s: %v, %v; want 10 from n1 alone", res, err)
	}
	// Everything silent: Unavailable, never 0.
	c.Add(time.Second)
	if _, err := s.Evaluate(q); !errors.Is(err, ErrNoAgents) {
		t.Errorf("all silent: err = %v, want ErrNoAgents", err)
	}
	// n1 back, but the only pods matching another pattern are on silent n2.
	ingest(t, s, snap("n1", 3, epoch, dev("GPU-1", 10, "default/inference-0")))
	if _, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "podPattern", "inference-1", "target", "1")); !errors.Is(err, ErrStale) {
		t.Errorf("matching pods all on a silent node: err = %v, want ErrStale", err)
	}
	// No matching pod anywhere, agents healthy: a real 0.
	if res, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "podPattern", "nothing-.*", "target", "1")); err != nil || res.Value != 0 || res.Pods != 0 {
		t.Errorf("no matching pod: %v, %v; want 0", res, err)
	}
	// After ForgetAfter, n2 is gone: its pods are no longer waited for.
	c.Add(time.Minute)
	ingest(t, s, snap("n1", 4, epoch, dev("GPU-1", 10, "default/inference-0")))
	s.Sweep()
	if res, err := s.Evaluate(mustQuery(t, "metric", "gpu_util", "podPattern", "inference-1", "target", "1")); err != nil || res.Value != 0 {
		t.Errorf("forgotten node: %v, %v; want a real 0", res, err)
	}
	if fresh, stale := s.NodeCounts(); fresh != 1 || stale != 0 {
		t.Errorf("nodes fresh %d stale %d, want 1 and 0", fresh, stale)
	}
}

func TestDerivedStaleTimeout(t *testing.T) {
	c := &clock{t: epoch}
	s := NewStore(Options{Now: c.Now, MaxWindow: time.Minute})
	sn := snap("n", 1, epoch, dev("GPU-1", 10, "default/a"))
	sn.Interval = durationpb.New(2 * time.Second) // 4 intervals: 8s
	ingest(t, s, sn)
	q := mustQuery(t, "metric", "gpu_util", "target", "1")
	c.Add(7 * time.Second)
	if _, err := s.Evaluate(q); err != nil {
		t.Errorf("7s of an 8s timeout: %v", err)
	}
	c.Add(2 * time.Second)
	if _, err := s.Evaluate(q); err == nil {
		t.Error("9s of an 8s timeout: still fresh")
	}
}

func TestAgentRestartReplacesState(t *testing.T) {
	s, _ := newTestStore(t)
	q := mustQuery(t, "metric", "gpu_util", "target", "1", "aggregation", "sum")
	ingest(t, s, snap("n", 41, epoch, dev("GPU-1", 10, "default/a"), dev("GPU-2", 10, "default/b")))
	// The restarted agent's sequence starts over; its pods replace the old.
	r := snap("n", 1, epoch, dev("GPU-1", 70, "default/c"))
	r.AgentStart = timestamppb.New(epoch.Add(time.Hour))
	ingest(t, s, r)
	if res, _ := s.Evaluate(q); res.Value != 70 || res.Pods != 1 {
		t.Errorf("after restart: %v, want 70 over 1 pod", res)
	}
	// A late message of the old agent (another address) is ignored, and
	// so is a duplicate.
	ingest(t, s, snap("n", 42, epoch, dev("GPU-1", 10, "default/a")))
	dup := snap("n", 1, epoch, dev("GPU-1", 99, "default/c"))
	dup.AgentStart = r.AgentStart
	ingest(t, s, dup)
	if res, _ := s.Evaluate(q); res.Value != 70 {
		t.Errorf("old agent or duplicate overwrote the node: %v", res)
	}
	if err := s.Ingest(&telemetryv1.NodeSnapshot{}); err == nil {
		t.Error("a snapshot without a node accepted")
	}
}

func TestWatchTransitionsOnly(t *testing.T) {
	s, c := newTestStore(t)
	q := mustQuery(t, "metric", "enc_util", "podPattern", "webrtc-.*", "target", "80", "activationTarget", "50", "aggregation", "max")
	ingest(t, s, snap("n", 1, epoch, dev("GPU-1", 10, "default/webrtc-0")))
	active, ch, cancel := s.Watch(q)
	defer cancel()
	if active {
		t.Fatal("initial state active at 10")
	}
	next := func() (bool, bool) {
		select {
		case a := <-ch:
			return a, true
		default:
			return false, false
		}
	}
	seq := uint64(2)
	step := func(node string, v float64) {
		ingest(t, s, snap(node, seq, epoch, dev("GPU-"+node, v, "default/webrtc-"+node)))
		seq++
	}
	step("n", 20)
	if _, ok := next(); ok {
		t.Error("a message without a transition")
	}
	step("n", 60) // crosses on ingest: no timer involved
	if a, ok := next(); !ok || !a {
		t.Errorf("crossing: got %v, %v; want true", a, ok)
	}
	step("n", 90)
	step("m", 55) // another node's pod, still above: no message
	if _, ok := next(); ok {
		t.Error("a message while staying active")
	}
	step("n", 10)
	if _, ok := next(); ok {
		t.Error("max is still 55 from node m: no transition expected")
	}
	step("m", 0)
	if a, ok := next(); !ok || a {
		t.Errorf("fall: got %v, %v; want false", a, ok)
	}
	// Silence makes the data stale: the sweep turns an active watcher off.
	step("m", 70)
	if a, _ := next(); !a {
		t.Fatal("want true")
	}
	c.Add(2 * time.Second)
	s.Sweep()
	if a, ok := next(); !ok || a {
		t.Errorf("stale: got %v, %v; want false", a, ok)
	}
	// Two streams of one trigger share a watcher; it goes with the last.
	_, _, cancel2 := s.Watch(q)
	if s.Watchers() != 1 {
		t.Errorf("watchers = %d, want 1", s.Watchers())
	}
	cancel2()
	cancel()
	if s.Watchers() != 0 {
		t.Errorf("watchers = %d after cancel, want 0", s.Watchers())
	}
}

func TestTrimKeepsWindowMemoryBounded(t *testing.T) {
	s, _ := newTestStore(t)
	q := mustQuery(t, "metric", "gpu_util", "target", "1", "window", "1s")
	s.Retain(q)
	for i := range 10000 {
		ingest(t, s, snap("n", uint64(i+1), epoch.Add(time.Duration(i)*100*time.Millisecond), dev("GPU-1", float64(i%100), "default/a")))
	}
	v := (*s.nodes.Load())[0].view.Load()
	ser := v.devices[0].series[GPUUtil]
	if len(ser) > 11 || cap(ser) > 256 {
		t.Errorf("series len %d cap %d after 10,000 snapshots of a 1s window", len(ser), cap(ser))
	}
	if res, _ := s.Evaluate(q); math.Abs(res.Value-94) > 1e-9 { // mean of 89..99 (i%100 of the last 11, the horizon inclusive)
		t.Errorf("window avg = %v", res)
	}
}

// The watchers' running totals (the push path's fast path) agree with a
// full evaluation after every snapshot of a random walk, for every
// aggregation, with nodes joining, pods moving and values rising and
// falling across the activation target.
func TestWatcherAgreesWithEvaluate(t *testing.T) {
	s, c := newTestStore(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var qs []*Query
	var chans []<-chan bool
	state := map[*Query]bool{}
	for _, agg := range []string{"avg", "max", "sum", "p95"} {
		q := mustQuery(t, "metric", "gpu_util", "podPattern", "w-.*", "target", "50", "activationTarget", "60", "aggregation", agg)
		a, ch, cancel := s.Watch(q)
		defer cancel()
		qs, chans, state[q] = append(qs, q), append(chans, ch), a
	}
	for i := range 3000 {
		node := "n" + strconv.Itoa(rng.IntN(6))
		var devs []*telemetryv1.Device
		for g := range rng.IntN(3) {
			pod := "default/w-" + strconv.Itoa(rng.IntN(8))
			if rng.IntN(4) == 0 {
				pod = "default/other"
			}
			devs = append(devs, dev(node+"-"+strconv.Itoa(g), float64(rng.IntN(101)), pod))
		}
		ingest(t, s, snap(node, uint64(i+1), epoch, devs...))
		if i%500 == 499 {
			c.Add(300 * time.Millisecond)
		}
		for j, q := range qs {
			select {
			case a := <-chans[j]:
				state[q] = a
			default:
			}
			res, err := s.Evaluate(q)
			if want := err == nil && q.Active(res.Value); state[q] != want {
				t.Fatalf("step %d, %s: watcher active %v, evaluation %v (%v)", i, q.Aggregation, state[q], want, res)
			}
		}
	}
}
