package fleet

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// resubscriber runs a store's RunDemand on a timer the test fires.
type resubscriber struct {
	timer    chan time.Time
	afters   atomic.Int64 // timers asked: one per gathered burst
	applied  chan applied
	answered atomic.Uint64
}

type applied struct {
	req *telemetryv1.WatchRequest
	gen uint64
}

func newResubscriber(t *testing.T, s *Store) *resubscriber {
	t.Helper()
	r := &resubscriber{timer: make(chan time.Time), applied: make(chan applied, 16)}
	_, gen := s.Subscription()
	r.answered.Store(gen)
	s.SetAnswered(r.answered.Load)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunDemand(ctx, DemandOptions{After: func(time.Duration) <-chan time.Time {
			r.afters.Add(1)
			return r.timer
		}}, func(req *telemetryv1.WatchRequest, gen uint64) { r.applied <- applied{req, gen} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// fire ends the gathering delay and returns the re-subscription made.
func (r *resubscriber) fire(t *testing.T) applied {
	t.Helper()
	select {
	case r.timer <- time.Time{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no re-subscription was waiting")
	}
	select {
	case a := <-r.applied:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no re-subscription after the delay")
	}
	return applied{}
}

func selectorsOf(req *telemetryv1.WatchRequest) []string {
	var out []string
	for _, s := range req.GetPodFilter().GetSelectors() {
		out = append(out, s.GetNamespace()+"/"+s.GetPodPattern())
	}
	return out
}

// The subscription is the union of the live triggers: their pods, the
// fields their metrics read, their app families, every snapshot once one
// is pushed or windowed (else one a second). A burst of new triggers is
// one re-subscription, each answering ErrPending (Unavailable) until the
// agents have answered it; a trigger the subscription already serves is
// answered at once; expired triggers narrow it again.
func TestDemandDerivesTheUnionOfLiveTriggers(t *testing.T) {
	s, c := newTestStore(t)
	r := newResubscriber(t, s)
	req, gen := s.Subscription()
	if gen != 1 || req.GetPodFilter() == nil || len(req.GetPodFilter().GetSelectors()) != 0 || req.GetDeviceFields() == nil ||
		len(req.GetDeviceFields().GetPaths()) != 0 || req.GetHeartbeat().AsDuration() != DefaultHeartbeat || req.GetMinPeriod().AsDuration() != PolledPeriod {
		t.Fatalf("before any trigger: generation %d, %v; want generation 1 asking for no pod and no field, with heartbeats", gen, req)
	}
	ingest(t, s, snap("n1", 1, epoch, dev("GPU-1", 40, "default/inference-0")))

	q1 := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "target", "1")
	if _, err := s.Answer(q1); !errors.Is(err, ErrPending) {
		t.Fatalf("a new trigger: %v, want ErrPending", err)
	}
	a := r.fire(t)
	if a.gen != 2 || !slices.Equal(selectorsOf(a.req), []string{"default/inference-.*"}) ||
		!slices.Equal(a.req.GetDeviceFields().GetPaths(), []string{"gpu_util", "unattributed_gpu_util"}) ||
		a.req.GetMinPeriod().AsDuration() != PolledPeriod || a.req.GetNamespace() != "default" || a.req.GetPodPattern() != "(?:inference-.*)" {
		t.Fatalf("generation %d: %v", a.gen, a.req)
	}
	if _, err := s.Answer(q1); !errors.Is(err, ErrPending) {
		t.Fatalf("re-subscribed but not answered: %v, want ErrPending", err)
	}
	r.answered.Store(2)
	if res, err := s.Answer(q1); err != nil || res.Value != 40 {
		t.Fatalf("answered: %v, %v; want 40", res, err)
	}

	// A burst: three new triggers, one pushed; one re-subscription.
	q2 := mustQuery(t, "metric", "temperature", "namespace", "ml", "target", "1")
	q3 := mustQuery(t, "metric", "app", "appMetric", "rtc_latency_seconds", "quantile", "0.95", "podPattern", "sfu-.*", "target", "1")
	q4 := mustQuery(t, "metric", "enc_util", "window", "5s", "target", "1")
	for _, q := range []*Query{q2, q3} {
		if _, err := s.Answer(q); !errors.Is(err, ErrPending) {
			t.Errorf("%s: %v, want ErrPending", q.MetricName(), err)
		}
	}
	_, _, stop := s.Watch(q4)
	a = r.fire(t)
	if a.gen != 3 || !slices.Equal(selectorsOf(a.req), []string{"default/.*", "ml/.*"}) ||
		!slices.Equal(a.req.GetDeviceFields().GetPaths(), []string{"enc_util", "gpu_util", "samples", "temperature_celsius", "unattributed_enc_util", "unattributed_gpu_util"}) ||
		!slices.Equal(a.req.GetAppFamilies(), []string{"rtc_latency_seconds"}) || a.req.MinPeriod != nil || a.req.GetNamespace() != "" {
		t.Fatalf("after the burst, generation %d: %v", a.gen, a.req)
	}
	if n := r.afters.Load(); n != 2 {
		t.Errorf("%d gathering delays for two bursts", n)
	}
	if live, pending := s.LiveTriggers(); live != 4 || pending != 3 {
		t.Errorf("live %d pending %d, want 4 and 3 (q2, q3, q4)", live, pending)
	}
	r.answered.Store(3)
	if _, err := s.Answer(q2); err != nil {
		t.Errorf("q2 once answered: %v, want a real 0 (no pod of ml)", err)
	}

	// Served already: default/.* has inference-0's pods and gpu_util.
	q5 := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-0", "aggregation", "max", "target", "1")
	if res, err := s.Answer(q5); err != nil || res.Value != 40 {
		t.Errorf("a trigger the subscription serves: %v, %v; want 40 at once", res, err)
	}
	if len(s.demand.changed) != 0 {
		t.Error("a served trigger asked for a re-subscription")
	}

	// Ten minutes without a call: the polled ones expire; the pushed one
	// stays while its stream is open.
	c.Add(aggregateIdle + time.Second)
	s.Sweep()
	a = r.fire(t)
	if a.gen != 4 || !slices.Equal(selectorsOf(a.req), []string{"default/.*"}) ||
		!slices.Equal(a.req.GetDeviceFields().GetPaths(), []string{"enc_util", "samples", "unattributed_enc_util"}) || len(a.req.GetAppFamilies()) != 0 {
		t.Fatalf("after expiry, generation %d: %v", a.gen, a.req)
	}
	// Its stream closed: live for ten more minutes, then gone.
	stop()
	c.Add(aggregateIdle - time.Second)
	s.Sweep()
	if len(s.demand.changed) != 0 {
		t.Error("a trigger whose stream closed a moment ago changed the subscription")
	}
	c.Add(2 * time.Second)
	s.Sweep()
	a = r.fire(t)
	if want, _ := s.Subscription(); a.gen != 5 || len(a.req.GetPodFilter().GetSelectors()) != 0 || !proto.Equal(a.req, want) {
		t.Fatalf("no trigger left, generation %d: %v", a.gen, a.req)
	}
	if live, _ := s.LiveTriggers(); live != 0 {
		t.Errorf("%d live triggers, want none", live)
	}
}

// A pushed trigger whose pods and fields the subscription has is served
// at once, while the agents are re-subscribed for every snapshot.
func TestPushedTriggerServedIsNotPending(t *testing.T) {
	s, _ := newTestStore(t)
	r := newResubscriber(t, s)
	ingest(t, s, snap("n1", 1, epoch, dev("GPU-1", 40, "default/inference-0")))
	polled := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "target", "1")
	_, _ = s.Answer(polled)
	r.fire(t)
	r.answered.Store(2)
	pushed := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "aggregation", "max", "activationTarget", "90", "target", "1")
	_, _, stop := s.Watch(pushed)
	defer stop()
	if res, err := s.Answer(pushed); err != nil || res.Value != 40 {
		t.Errorf("a pushed trigger on data the agents send: %v, %v; want 40 at once", res, err)
	}
	if a := r.fire(t); a.gen != 3 || a.req.MinPeriod != nil {
		t.Errorf("generation %d, min_period %v; want every snapshot for the pushed trigger", a.gen, a.req.GetMinPeriod().AsDuration())
	}
}

// A trigger that comes and goes within the gathering delay changes
// nothing; whoever waited on it is served by the current generation.
func TestDemandNoChangeNoResubscription(t *testing.T) {
	s, c := newTestStore(t)
	r := newResubscriber(t, s)
	ingest(t, s, snap("n1", 1, epoch, dev("GPU-1", 40, "default/a")))
	q := mustQuery(t, "metric", "power", "target", "1")
	if _, err := s.Answer(q); !errors.Is(err, ErrPending) {
		t.Fatalf("%v, want ErrPending", err)
	}
	c.Add(aggregateIdle + time.Second)
	s.Sweep() // expired before the delay ended
	select {
	case r.timer <- time.Time{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no gathering delay")
	}
	select {
	case a := <-r.applied:
		t.Fatalf("re-subscribed to %v with no change", a.req)
	case <-time.After(50 * time.Millisecond): // nothing may come; the delay only shortens the test
	}
	if _, gen := s.Subscription(); gen != 1 {
		t.Errorf("generation %d, want still 1", gen)
	}
}

// A node nothing of whose passes the filter sends a heartbeat every few
// seconds: it stays fresh for four of them, so a trigger without a
// matching pod is a real 0, not Unavailable, between two heartbeats.
func TestHeartbeatKeepsAnIdleNodeFresh(t *testing.T) {
	c := &clock{t: epoch}
	s := NewStore(Options{Now: c.Now, MaxWindow: time.Minute})
	hb := snap("n1", 1, epoch)
	hb.Period = durationpb.New(DefaultHeartbeat)
	ingest(t, s, hb)
	q := mustQuery(t, "metric", "gpu_util", "target", "1")
	c.Add(DefaultHeartbeat - time.Millisecond) // four intervals are long past
	if res, err := s.Answer(q); err != nil || res.Value != 0 || res.Nodes != 1 {
		t.Errorf("between heartbeats: %v, %v; want a real 0 from one fresh node", res, err)
	}
	if fresh, stale := s.NodeCounts(); fresh != 1 || stale != 0 {
		t.Errorf("fresh %d stale %d", fresh, stale)
	}
	c.Add(3*DefaultHeartbeat + time.Second)
	if _, err := s.Answer(q); !errors.Is(err, ErrNoAgents) {
		t.Errorf("four heartbeats missed: %v, want ErrNoAgents", err)
	}
	// Its pod comes back at the interval: stale after four intervals again.
	ingest(t, s, snap("n1", 2, epoch, dev("GPU-1", 10, "default/a")))
	c.Add(1500 * time.Millisecond)
	if _, err := s.Answer(q); !errors.Is(err, ErrNoAgents) {
		t.Errorf("silent 1.5 s at 250 ms ticks: %v, want ErrNoAgents", err)
	}
	// A configured stale timeout still covers two periods.
	s2 := NewStore(Options{Now: c.Now, StaleAfter: time.Second, MaxWindow: time.Minute})
	ingest(t, s2, hb)
	c.Add(2 * time.Second)
	if fresh, _ := s2.NodeCounts(); fresh != 1 {
		t.Error("--stale-after 1s made a node with 3s heartbeats stale between two")
	}
}

// A re-subscription's answer repeats the latest tick: the first message
// of a stream replaces the view even at the same sequence, without
// counting its samples twice.
func TestIngestFirstReplacesAtTheSameSequence(t *testing.T) {
	s, _ := newTestStore(t)
	q := mustQuery(t, "metric", "gpu_util", "window", "10s", "aggregation", "sum", "target", "1")
	s.Retain(q)
	d := dev("GPU-1", 40, "default/a")
	d.Samples = []*telemetryv1.EngineSamples{{Engine: telemetryv1.Engine_ENGINE_GPU, Samples: []*telemetryv1.Sample{
		{TimeUnixMicro: epoch.UnixMicro() - 100, Value: 40}, {TimeUnixMicro: epoch.UnixMicro(), Value: 60}}}}
	ingest(t, s, snap("n1", 7, epoch, d))
	more := proto.Clone(d).(*telemetryv1.Device)
	ingest(t, s, snap("n1", 7, epoch, more, dev("GPU-2", 80, "default/b")))
	if res, _ := s.Evaluate(q); res.Pods != 1 {
		t.Fatalf("a duplicate through Ingest changed the node: %v", res)
	}
	if err := s.IngestFirst(snap("n1", 7, epoch, more, dev("GPU-2", 80, "default/b"))); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Evaluate(q); err != nil || res.Pods != 2 || res.Value != 50+80 {
		t.Errorf("after IngestFirst: %v, %v; want a's mean 50 (its two samples once) + b's 80", res, err)
	}
	if err := s.IngestFirst(snap("n1", 6, epoch, dev("GPU-1", 1, "default/a"))); err != nil {
		t.Fatal(err)
	}
	if res, _ := s.Evaluate(q); res.Value != 130 {
		t.Errorf("an older first message replaced the view: %v", res)
	}
}

// Each metric's fields (metricFields) are enough: a device with only
// them, its pods with only their shares of them, gives every metric the
// answer a device with every field gives, windows included.
func TestMetricFieldsSuffice(t *testing.T) {
	full := fullDevices()
	for m := range numMetrics {
		var fields []string
		fields = append(fields, metricFields[m]...)
		if engineSampled.has(m) {
			fields = append(fields, "samples")
		}
		for _, w := range []string{"0", "5s"} {
			for _, agg := range []string{"avg", "max", "sum"} {
				q := mustQuery(t, "metric", m.String(), "podPattern", ".*", "aggregation", agg, "window", w, "target", "1")
				want := answerOver(t, q, full)
				got := answerOver(t, q, projectAll(full, fields))
				if got != want {
					t.Errorf("%s %s window %s: %v from its fields, %v from all", m, agg, w, got, want)
				}
			}
		}
	}
}

func answerOver(t *testing.T, q *Query, devs []*telemetryv1.Device) string {
	t.Helper()
	s, _ := newTestStore(t)
	s.Retain(q)
	for seq := uint64(1); seq <= 3; seq++ {
		at := epoch.Add(time.Duration(seq) * time.Second)
		ds := make([]*telemetryv1.Device, len(devs))
		for i, d := range devs {
			ds[i] = proto.Clone(d).(*telemetryv1.Device)
			for _, es := range ds[i].Samples {
				for k, smp := range es.Samples {
					smp.TimeUnixMicro = at.UnixMicro() - int64(k)*1000
				}
			}
		}
		ingest(t, s, snap("n1", seq, at, ds...))
	}
	res, err := s.Evaluate(q)
	if err != nil {
		return err.Error()
	}
	return res.String()
}

// fullDevices sets every optional field of a Device, and of its pods'
// shares, to a distinct value: two GPUs shared by pods with shares (one
// of them with two containers, whose encoder means weigh by sessions),
// the first with little unattributed load, the second with enough that
// its shares are distrusted, and a GPU of one pod; each with samples of
// every engine.
func fullDevices() []*telemetryv1.Device {
	var k float64
	fill := func(m protoreflect.Message) {
		fs := m.Descriptor().Fields()
		for i := range fs.Len() {
			fd := fs.Get(i)
			if !fd.HasPresence() || fd.Message() != nil {
				continue
			}
			k++
			switch fd.Kind() {
			case protoreflect.DoubleKind:
				m.Set(fd, protoreflect.ValueOfFloat64(k*1.5))
			case protoreflect.Uint64Kind:
				m.Set(fd, protoreflect.ValueOfUint64(uint64(k)<<30))
			case protoreflect.Uint32Kind:
				m.Set(fd, protoreflect.ValueOfUint32(uint32(k)))
			case protoreflect.BoolKind:
				m.Set(fd, protoreflect.ValueOfBool(true))
			}
		}
	}
	var out []*telemetryv1.Device
	for i, pods := range [][]string{{"default/sfu-0", "default/sfu-0", "default/sfu-1"}, {"default/sfu-2", "default/sfu-3"}, {"default/inference-0"}} {
		d := &telemetryv1.Device{Uuid: "GPU-" + string(rune('a'+i))}
		fill(d.ProtoReflect())
		u := 1.0 // below the distrust threshold
		if i == 1 {
			u = 50
		}
		d.UnattributedGpuUtil, d.UnattributedEncUtil, d.UnattributedMemCopyUtil, d.UnattributedDecUtil = &u, &u, &u, &u
		for j, p := range pods {
			pm := &telemetryv1.Pod{Namespace: "default", Name: p[len("default/"):], Container: "c" + string(rune('0'+j))}
			if len(pods) > 1 {
				fill(pm.ProtoReflect())
			}
			d.Pods = append(d.Pods, pm)
		}
		for e := telemetryv1.Engine_ENGINE_GPU; e <= telemetryv1.Engine_ENGINE_DECODER; e++ {
			d.Samples = append(d.Samples, &telemetryv1.EngineSamples{Engine: e, Samples: []*telemetryv1.Sample{{Value: float64(e) * 7}, {Value: float64(e) * 11}}})
		}
		out = append(out, d)
	}
	return out
}

// projectAll keeps of each device what an agent sends for these fields
// (WatchRequest.device_fields): identity, pods' names, state, the named
// fields, pods' shares of them, samples of the named utilizations.
func projectAll(devs []*telemetryv1.Device, fields []string) []*telemetryv1.Device {
	named := map[string]bool{}
	for _, f := range fields {
		named[f] = true
	}
	if named["encoder_latency_seconds"] {
		named["encoder_latency_max_seconds"] = true
	}
	engines := map[telemetryv1.Engine]string{telemetryv1.Engine_ENGINE_GPU: "gpu_util", telemetryv1.Engine_ENGINE_MEMORY: "mem_copy_util",
		telemetryv1.Engine_ENGINE_ENCODER: "enc_util", telemetryv1.Engine_ENGINE_DECODER: "dec_util"}
	keep := func(m protoreflect.Message, always map[string]bool) {
		m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
			if n := string(fd.Name()); !always[n] && !named[n] {
				m.Clear(fd)
			}
			return true
		})
	}
	var out []*telemetryv1.Device
	for _, d := range devs {
		d = proto.Clone(d).(*telemetryv1.Device)
		samples, pods := d.Samples, d.Pods
		keep(d.ProtoReflect(), map[string]bool{"uuid": true, "pods": true})
		d.Samples = nil
		if named["samples"] {
			for _, es := range samples {
				if named[engines[es.GetEngine()]] {
					d.Samples = append(d.Samples, es)
				}
			}
		}
		for _, p := range pods {
			keep(p.ProtoReflect(), map[string]bool{"namespace": true, "name": true, "container": true})
		}
		out = append(out, d)
	}
	return out
}

// The first change after a quiet spell is gathered for FirstDelay only, a
// change soon after a re-subscription for the whole Delay, and a change
// after Delay of quiet for FirstDelay again: a restarted scaler answers
// KEDA's first calls within the agents' answer, not half a second later.
func TestFirstChangeAfterQuietIsGatheredBriefly(t *testing.T) {
	s, _ := newTestStore(t)
	_, gen := s.Subscription()
	s.SetAnswered(func() uint64 { return gen })
	const delay, first = 200 * time.Millisecond, 10 * time.Millisecond
	var clock quietClock
	asked := make(chan time.Duration, 8)
	timer := make(chan time.Time)
	applied := make(chan uint64, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunDemand(ctx, DemandOptions{Delay: delay, FirstDelay: first, Now: clock.now, After: func(d time.Duration) <-chan time.Time {
			asked <- d
			return timer
		}}, func(_ *telemetryv1.WatchRequest, g uint64) { applied <- g })
	}()
	defer func() { cancel(); <-done }()
	step := func(metric, want string, wantDelay time.Duration) {
		t.Helper()
		if _, err := s.Answer(mustQuery(t, "metric", metric, "target", "1")); !errors.Is(err, ErrPending) {
			t.Fatalf("%s: %v, want ErrPending", metric, err)
		}
		select {
		case d := <-asked:
			if d != wantDelay {
				t.Errorf("%s: gathered for %v, want %v (%s)", metric, d, wantDelay, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no gathering", metric)
		}
		timer <- time.Time{}
		select {
		case <-applied:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no re-subscription", metric)
		}
	}
	step("gpu_util", "the first change", first)
	step("temperature", "a change right after a re-subscription", delay)
	clock.advance(delay) // a quiet spell of Delay
	step("enc_util", "the first change after a quiet spell", first)
}

// quietClock is a clock that moves only when told.
type quietClock struct{ d atomic.Int64 }

func (c *quietClock) now() time.Time           { return time.Unix(1_800_000_000, c.d.Load()) }
func (c *quietClock) advance(by time.Duration) { c.d.Add(int64(by)) }
