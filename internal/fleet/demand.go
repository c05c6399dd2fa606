package fleet

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// The scaler asks the agents for what its live triggers need, no more:
// the pods they select, the Device fields their metrics read, the app
// families they name, and messages no more often than the fastest of
// them wants. A trigger is live while KEDA uses it: from its first
// GetMetrics, IsActive or StreamIsActive until aggregateIdle (10
// minutes) after its last call, and as long as a StreamIsActive stream
// of it is open. As triggers come and go the agents are re-subscribed,
// debounced so that a burst of new triggers (KEDA's first poll after
// the scaler starts, a release creating several ScaledObjects) is one
// re-subscription: the first change after a quiet spell is gathered for
// DefaultFirstResubscribeDelay, later ones for DefaultResubscribeDelay.
//
// A new trigger that the current subscription does not serve answers
// Unavailable (ErrPending), never 0, until every connected agent has
// answered the subscription that does: its first message after the
// re-subscription, which the pool reports through the answered hook.

// ErrPending answers a trigger the agents are being re-subscribed for.
var ErrPending = errors.New("the agents are being re-subscribed for this trigger; no answer until every connected agent has answered")

// DefaultResubscribeDelay is how long the scaler gathers trigger changes
// before it re-subscribes the agents: every re-subscription reopens
// every agent's stream, so a burst of new triggers should cost one. A new
// trigger answers Unavailable for this long plus the agents' answer.
const DefaultResubscribeDelay = 500 * time.Millisecond

// DefaultFirstResubscribeDelay is the gathering delay of the first change
// after a quiet spell (DefaultResubscribeDelay since the last
// re-subscription, or none yet): long enough for the burst of KEDA's
// first calls after a scaler or operator start, short enough that a
// restarted scaler answers within a tick or two of the agents'.
const DefaultFirstResubscribeDelay = 50 * time.Millisecond

// DefaultGCPercent is the scaler's GOGC unless $GOGC is set. A scaler's
// first limit is memory (about 100 KiB per agent connected, a third of it
// the collector's headroom at Go's 100), its CPU has room: at 5,000 agents
// (make bench-fanin, triggers matching 10% of pods) 50 held RSS at 430 MiB
// for 0.37 of a core, against 515 MiB and 0.32 at 100.
const DefaultGCPercent = 50

// PolledPeriod is the min_period asked while no live trigger is pushed
// (StreamIsActive) or windowed: the HPA polls every 15 s by default, and
// a value a second old serves it as well as one of the last tick.
const PolledPeriod = time.Second

// DefaultHeartbeat is the heartbeat asked of the agents: an agent nothing
// of whose passes the filter sends an empty message this often, not one
// per tick. Under a third of the pool's default idle timeout (10 s), so
// that an idle agent is never taken for a vanished one.
const DefaultHeartbeat = 3 * time.Second

// metricFields are the Device fields (by their proto names) each metric
// is read from; a Pod's share of a field comes with the Device field of
// its name. TestMetricFieldsSuffice holds every metric's answer from
// these fields alone to its answer from every field.
var metricFields = [numMetrics][]string{
	GPUUtil:           {"gpu_util", "unattributed_gpu_util"},
	MemCopyUtil:       {"mem_copy_util", "unattributed_mem_copy_util"},
	EncUtil:           {"enc_util", "unattributed_enc_util"},
	DecUtil:           {"dec_util", "unattributed_dec_util"},
	FBUsedRatio:       {"fb_used_bytes", "fb_free_bytes", "fb_total_bytes"},
	EncoderFPS:        {"encoder_fps", "encoder_sessions"},
	EncoderLatency:    {"encoder_latency_seconds", "encoder_sessions"},
	Temperature:       {"temperature_celsius"},
	MemoryTemperature: {"memory_temperature_celsius"},
	Power:             {"power_watts"},
	PowerRatio:        {"power_watts", "enforced_power_limit_watts"},
	PCIeTX:            {"pcie_tx_bytes_per_second"},
	PCIeRX:            {"pcie_rx_bytes_per_second"},
	NVLink:            {"nvlink_bytes_per_second"},
	GrEngineActive:    {"gr_engine_active_ratio"},
	SMActive:          {"sm_active_ratio"},
	TensorActive:      {"tensor_active_ratio"},
	DRAMActive:        {"dram_active_ratio"},
}

// engineSampled are the metrics whose windows read the driver's hardware
// samples (Device.samples) where the agent sends them.
const engineSampled = metricSet(1<<GPUUtil | 1<<MemCopyUtil | 1<<EncUtil | 1<<DecUtil)

// demand is the store's live triggers and the subscription derived from
// them.
type demand struct {
	mu      sync.Mutex
	live    map[string]*liveTrigger // by query key
	gen     uint64                  // generation of target
	target  *telemetryv1.WatchRequest
	dirty   bool          // live changed since target was derived
	changed chan struct{} // one slot: the debouncer's wake-up

	heartbeat time.Duration
	answered  atomic.Pointer[func() uint64]
}

type liveTrigger struct {
	q        *Query
	lastUsed int64 // ns since the store's base
	watchers int   // open StreamIsActive streams
	// pushed: a StreamIsActive stream of it is open or was within
	// aggregateIdle (KEDA reopens a closed one in 2 s: no flapping
	// between the periods of a pushed and a polled trigger).
	pushed      bool
	lastWatched int64
	need        uint64 // the first subscription generation that serves it
	ready       bool   // answered once: never pending again
}

func (d *demand) init() {
	d.live = make(map[string]*liveTrigger)
	d.changed = make(chan struct{}, 1)
	d.heartbeat = DefaultHeartbeat
	d.target = d.derive()
}

func (d *demand) signal() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// use records a call of q at now (watch: +1 a stream opened, -1 one
// closed, 0 a poll) and returns its trigger.
func (d *demand) use(q *Query, now int64, watch int) *liveTrigger {
	d.mu.Lock()
	defer d.mu.Unlock()
	lt, known := d.live[q.key]
	if !known {
		lt = &liveTrigger{q: q}
		d.live[q.key] = lt
	}
	lt.lastUsed = max(lt.lastUsed, now)
	lt.watchers += watch
	newlyPushed := false
	if watch != 0 {
		lt.lastWatched = max(lt.lastWatched, now)
		newlyPushed = watch > 0 && !lt.pushed
		lt.pushed = true
	}
	if known && !newlyPushed {
		return lt
	}
	// Served already when the union of the live triggers asks the agents
	// for nothing the subscription does not send (or is about to): a
	// pattern it has, fields it sends. More messages (a pushed trigger's
	// min_period 0) make the data fresher, not right: no wait for them.
	next := d.derive()
	if !known {
		lt.need = d.gen
		if d.dirty || !sameData(next, d.target) {
			lt.need++
		}
	}
	if d.dirty || !proto.Equal(next, d.target) {
		d.dirty = true
		d.signal()
	}
	return lt
}

// sameData reports whether a and b ask for the same pods, fields and
// families, whatever their periods.
func sameData(a, b *telemetryv1.WatchRequest) bool {
	a, b = proto.CloneOf(a), proto.CloneOf(b)
	a.MinPeriod, b.MinPeriod = nil, nil
	return proto.Equal(a, b)
}

// ready reports whether lt is served: every connected agent has answered
// the subscription generation it needs.
func (d *demand) ready(lt *liveTrigger) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if lt.ready {
		return true
	}
	if f := d.answered.Load(); f != nil && (*f)() < lt.need {
		return false
	}
	lt.ready = true
	return true
}

// expire drops the triggers neither polled for aggregateIdle nor
// watched.
func (d *demand) expire(now int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, lt := range d.live {
		if lt.watchers > 0 {
			continue
		}
		if now-lt.lastUsed > int64(aggregateIdle) {
			delete(d.live, k)
			d.dirty = true
		} else if lt.pushed && now-lt.lastWatched > int64(aggregateIdle) {
			lt.pushed = false // polled only now: fewer messages will do
			d.dirty = true
		}
	}
	if d.dirty {
		d.signal()
	}
}

// settle derives the subscription of the live triggers; it reports the
// new one and its generation when it differs from the last. d.mu held.
func (d *demand) settle() (*telemetryv1.WatchRequest, uint64, bool) {
	d.dirty = false
	next := d.derive()
	if proto.Equal(next, d.target) {
		// Nothing to ask anew (a trigger came and went): those waiting for
		// the next generation are served by this one.
		for _, lt := range d.live {
			lt.need = min(lt.need, d.gen)
		}
		return d.target, d.gen, false
	}
	d.gen++
	d.target = next
	return next, d.gen, true
}

// derive is the subscription the live triggers need; d.mu held.
func (d *demand) derive() *telemetryv1.WatchRequest {
	patterns := map[string][]string{} // namespace -> patterns; [".*"] stands for every pod
	fields := map[string]bool{}
	families := map[string]bool{}
	period := PolledPeriod
	for _, lt := range d.live {
		q := lt.q
		patterns[q.Namespace] = append(patterns[q.Namespace], q.PodPattern)
		if q.App != nil {
			families[q.App.Family] = true
		} else {
			for _, f := range metricFields[q.Metric] {
				fields[f] = true
			}
			if q.Window > 0 && engineSampled.has(q.Metric) {
				fields["samples"] = true
			}
		}
		if lt.pushed || q.Window > 0 {
			// A pushed trigger is woken on the snapshot that crosses; a
			// window reduces every snapshot's values.
			period = 0
		}
	}
	req := &telemetryv1.WatchRequest{
		PodFilter:    &telemetryv1.PodFilter{},
		DeviceFields: &fieldmaskpb.FieldMask{Paths: sortedKeys(fields)},
		AppFamilies:  sortedKeys(families),
		Heartbeat:    durationpb.New(d.heartbeat),
	}
	if period > 0 {
		req.MinPeriod = durationpb.New(period)
	}
	namespaces := sortedKeys(patterns)
	for _, ns := range namespaces {
		ps := patterns[ns]
		if slices.Contains(ps, DefaultPodPattern) {
			ps = []string{DefaultPodPattern}
		}
		slices.Sort(ps)
		ps = slices.Compact(ps)
		patterns[ns] = ps
		for _, p := range ps {
			req.PodFilter.Selectors = append(req.PodFilter.Selectors, &telemetryv1.PodSelector{Namespace: ns, PodPattern: p})
		}
	}
	// For agents older than pod_filter, which read only these: a superset
	// of the selectors where one namespace has them all. Elsewhere such an
	// agent sends every pod, and the triggers filter for themselves.
	if len(namespaces) == 1 {
		req.Namespace = namespaces[0]
		if ps := patterns[req.Namespace]; !slices.Equal(ps, []string{DefaultPodPattern}) {
			req.PodPattern = "(?:" + strings.Join(ps, ")|(?:") + ")"
		}
	}
	return req
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// DemandOptions configure RunDemand.
type DemandOptions struct {
	// Delay gathers trigger changes into one re-subscription; 0:
	// DefaultResubscribeDelay. FirstDelay is the gathering of the first
	// change after a quiet spell of Delay; 0: DefaultFirstResubscribeDelay.
	Delay, FirstDelay time.Duration
	// After is the timer (tests); nil: time.After.
	After func(time.Duration) <-chan time.Time
	// Now is the clock that tells a quiet spell (tests); nil: time.Now.
	Now func() time.Time
}

// SetAnswered hooks the agents' side in: answered returns the latest
// subscription generation every connected agent has answered (the
// pool's). Until it is set every trigger is served at once.
func (s *Store) SetAnswered(answered func() uint64) { s.demand.answered.Store(&answered) }

// SetHeartbeat sets the heartbeat asked of the agents (before RunDemand).
func (s *Store) SetHeartbeat(d time.Duration) {
	s.demand.mu.Lock()
	defer s.demand.mu.Unlock()
	s.demand.heartbeat = d
	s.demand.target = s.demand.derive()
}

// Subscription is the request the live triggers need now and its
// generation (1 for the first, made before any trigger).
func (s *Store) Subscription() (*telemetryv1.WatchRequest, uint64) {
	s.demand.mu.Lock()
	defer s.demand.mu.Unlock()
	if s.demand.gen == 0 {
		s.demand.gen = 1
	}
	return s.demand.target, s.demand.gen
}

// RunDemand calls apply with every new subscription the live triggers
// need, at most one per Delay, until ctx ends. apply must not block for
// long: it is the pool's SetRequest.
func (s *Store) RunDemand(ctx context.Context, o DemandOptions, apply func(*telemetryv1.WatchRequest, uint64)) {
	if o.Delay <= 0 {
		o.Delay = DefaultResubscribeDelay
	}
	if o.FirstDelay <= 0 {
		o.FirstDelay = min(DefaultFirstResubscribeDelay, o.Delay)
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	d := &s.demand
	var last time.Time // the last re-subscription; zero: none yet
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.changed:
		}
		// Gather: whatever changes during the delay rides along. After a
		// quiet spell the first change waits only FirstDelay: a scaler
		// that starts (or restarts) with KEDA already calling answers as
		// soon as the agents do, not a whole Delay later.
		delay := o.Delay
		if last.IsZero() || o.Now().Sub(last) >= o.Delay {
			delay = o.FirstDelay
		}
		select {
		case <-ctx.Done():
			return
		case <-o.After(delay):
		}
		d.mu.Lock()
		if d.gen == 0 {
			d.gen = 1 // Subscription was not asked: this is the first
		}
		select { // a change signalled before the lock is in this one
		case <-d.changed:
		default:
		}
		req, gen, changed := d.settle()
		live := len(d.live)
		d.mu.Unlock()
		if changed {
			s.log.Info("re-subscribing the agents", "generation", gen, "triggers", live,
				"selectors", len(req.GetPodFilter().GetSelectors()), "fields", strings.Join(req.GetDeviceFields().GetPaths(), ","),
				"app_families", strings.Join(req.GetAppFamilies(), ","), "min_period", req.GetMinPeriod().AsDuration())
			apply(req, gen)
			last = o.Now()
		}
	}
}

// LiveTriggers counts the live triggers, and of them those still
// waiting for the agents' answer.
func (s *Store) LiveTriggers() (live, pending int) {
	d := &s.demand
	d.mu.Lock()
	defer d.mu.Unlock()
	var answered uint64 = 1<<64 - 1
	if f := d.answered.Load(); f != nil {
		answered = (*f)()
	}
	for _, lt := range d.live {
		if !lt.ready && answered < lt.need {
			pending++
		}
	}
	return len(d.live), pending
}
