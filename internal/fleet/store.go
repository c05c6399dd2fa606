// Package fleet holds the cluster's GPU state as the agents push it: per
// node, per device, the pods holding it, its latest reading and a bounded
// history of samples. Every query KEDA polls or watches is kept answered
// as snapshots arrive (aggregate.go): GetMetrics and IsActive read the
// answer, and a StreamIsActive crossing reaches KEDA at the network's
// latency. Evaluate computes the same answer from scratch.
//
// Package fleet knows nothing of gRPC connections (internal/fleet/agents) or
// of KEDA's API (internal/fleet/keda).
package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// Errors of an evaluation with no data to stand on. The KEDA server
// answers them with Unavailable, so that KEDA's fallback applies instead of
// a 0 that would scale the workload in.
var (
	ErrNoAgents  = errors.New("no agent has reported within the stale timeout")
	ErrStale     = errors.New("every matching pod is on a node silent for longer than the stale timeout")
	ErrNoReading = errors.New("no matching pod's device reports this metric")
)

// Options configure a Store.
type Options struct {
	// StaleAfter is how long a node may be silent before its pods leave
	// the aggregate, at least two of the node's message periods. Zero:
	// four of them (NodeSnapshot.period: its sampling interval, the
	// slower min_period asked, or its heartbeat), at least MinStaleAfter.
	StaleAfter time.Duration
	// ForgetAfter is how long a silent node is kept at all. Until then its
	// matching pods make an answer Unavailable rather than 0; after, it is
	// gone, as if it never was.
	ForgetAfter time.Duration
	// MaxWindow bounds the history kept per device; a query's window may
	// not exceed it.
	MaxWindow time.Duration
	// MaxUnattributedLoad is how much of a shared device's utilization
	// (percentage points) the agent may report as explained by none of its
	// pods' processes before the scaler stops trusting the pods' own
	// shares of that utilization and reads the device's value for each of
	// them: a pod may never look idler than it may be. Zero:
	// DefaultMaxUnattributedLoad; negative: shares are always used.
	MaxUnattributedLoad float64
	Logger              *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// DefaultMaxUnattributedLoad is MaxUnattributedLoad's default: 10
// percentage points. Below it, the gap between a device's utilization and
// its processes' sum is the two figures' different sampling windows (NVML
// reports the device over its last sample period and each process over
// its own); above it, some process holds the device that no pod's share
// accounts for (a host process, a PID whose pod is not known), and any
// pod may be running it.
const DefaultMaxUnattributedLoad = 10

// MinStaleAfter is the floor of the derived stale timeout, so that a fast
// agent is not declared silent by one GC pause of the scaler.
const MinStaleAfter = time.Second

// Store is the fan-in of every agent's snapshots.
type Store struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time

	mu     sync.Mutex // guards byName and writes of nodes
	byName map[string]*node
	nodes  atomic.Pointer[[]*node] // read without locks by evaluations

	// retention is the history kept, in nanoseconds: the largest window a
	// query has asked for, so that no history is kept until one does.
	retention atomic.Int64
	// windowed has bit m set once a query has asked for a window of metric
	// m: pods' share histories, and devices' of the device-wide metrics,
	// are kept of those metrics only (a device's utilizations, framebuffer
	// and encoder figures are kept whatever the window's metric, its
	// hardware samples being a handful).
	windowed atomic.Uint32

	base time.Time // the origin of the aggregates' deadlines
	aggs aggregateSet

	// appRetention is the app history kept, in nanoseconds: the largest
	// window an app trigger has asked for; 0 until one does, when the
	// scaler keeps no app data.
	appRetention atomic.Int64
	appWatch     appWatches

	demand demand // the live triggers, and what the agents are asked for
}

// NewStore returns an empty store.
func NewStore(o Options) *Store {
	if o.ForgetAfter == 0 {
		o.ForgetAfter = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxUnattributedLoad == 0 {
		o.MaxUnattributedLoad = DefaultMaxUnattributedLoad
	}
	s := &Store{opts: o, log: o.Logger, now: o.Now, byName: make(map[string]*node)}
	s.base = s.now()
	s.nodes.Store(&[]*node{})
	s.aggs.init()
	s.demand.init()
	return s
}

// Retain makes the store keep at least q's window of history (capped by
// MaxWindow). The query cache calls it for every new query.
func (s *Store) Retain(q *Query) {
	if q.App != nil {
		w := int64(min(q.Window, s.opts.MaxWindow))
		for {
			cur := s.appRetention.Load()
			if w <= cur || s.appRetention.CompareAndSwap(cur, w) {
				return
			}
		}
	}
	if q.Window > 0 {
		for bit := uint32(1) << q.Metric; ; {
			cur := s.windowed.Load()
			if cur&bit != 0 || s.windowed.CompareAndSwap(cur, cur|bit) {
				break
			}
		}
	}
	w := int64(min(q.Window, s.opts.MaxWindow))
	for {
		cur := s.retention.Load()
		if w <= cur || s.retention.CompareAndSwap(cur, w) {
			return
		}
	}
}

// node is one agent's node. Its view is replaced, never modified, on every
// snapshot; the history slices inside views are append-only (see devHist).
type node struct {
	name string
	view atomic.Pointer[view]
	// forgotten is set by the sweep that removes the node, before it
	// leaves the aggregates: a snapshot still in flight must not bring it
	// back into them.
	forgotten atomic.Bool

	mu   sync.Mutex // one writer at a time (two addresses may claim a node)
	hist map[string]*devHist
	apps *nodeApps // read by app evaluations under mu too
	// touched is the pods of the device being ingested, indices into the
	// new view's pods; reused, under mu.
	touched []int32
}

// view is what evaluations read of a node: immutable once published.
type view struct {
	agentStart time.Time
	sequence   uint64
	interval   time.Duration
	// period is the longest the agent leaves between two messages: the
	// interval, the min_period asked, or the heartbeat after a message in
	// which nothing passed the scaler's filter (NodeSnapshot.period).
	period     time.Duration
	sampleTime int64     // µs, the agent's clock: the reference of windows
	received   time.Time // the scaler's clock: the reference of staleness
	devices    []device
	pods       []pod
}

type device struct {
	uuid   string
	values [numMetrics]float64
	has    metricSet // bit m: values[m] is set
	// series[m] is the history of metric m: hardware samples where the
	// agent sent them, else the snapshot's value; oldest first.
	series [numMetrics][]point
}

type pod struct {
	namespace, name string
	devices         []int32 // indices into view.devices
	// shares[k] is the pod's own share of devices[k] (the agent's
	// per-process attribution), where a field is absent the device's
	// value stands for it; nil when the snapshot carries no share at all.
	shares []share
}

// share is one pod's own part of one device, as the agent's Pod message
// carries it: the sums over the pod's processes, 0 for a pod with no
// process there this tick.
type share struct {
	values [numMetrics]float64
	has    metricSet // bit m: values[m] is the pod's own
	// sessions weighs the encoder fps and latency, means over sessions,
	// when two containers of the pod hold the device.
	sessions uint32
	// series[m] is the history of the pod's value of metric m on the
	// device, one point per snapshot that had a share; oldest first.
	series [numMetrics][]point
}

type point struct {
	t int64 // µs, the agent's clock
	v float64
}

// devHist is the writer's side of a device's history. Appends write past
// the length of every published slice header, and trimming only moves the
// start, so readers of older views never see a write.
type devHist struct {
	series [numMetrics][]point
	pods   []*podHist // the shares' histories, by pod holding the device
}

// podHist is the writer's side of a pod's share history on one device.
type podHist struct {
	namespace, name string
	series          [numMetrics][]point
	seen            bool // the pod holds the device in the snapshot being ingested
}

// find returns the history of the pod namespace/name, nil if none.
func (h *devHist) find(namespace, name string) *podHist {
	for _, p := range h.pods {
		if p.name == name && p.namespace == namespace {
			return p
		}
	}
	return nil
}

// of returns the history of the pod namespace/name, made if new.
func (h *devHist) of(namespace, name string) *podHist {
	if p := h.find(namespace, name); p != nil {
		return p
	}
	p := &podHist{namespace: namespace, name: name}
	h.pods = append(h.pods, p)
	return p
}

// engineMetric is the metric of an engine's hardware samples: a switch,
// where a map lookup cost more than appending the sample.
func engineMetric(e telemetryv1.Engine) (Metric, bool) {
	switch e {
	case telemetryv1.Engine_ENGINE_GPU:
		return GPUUtil, true
	case telemetryv1.Engine_ENGINE_MEMORY:
		return MemCopyUtil, true
	case telemetryv1.Engine_ENGINE_ENCODER:
		return EncUtil, true
	case telemetryv1.Engine_ENGINE_DECODER:
		return DecUtil, true
	}
	return 0, false
}

// Ingest records one snapshot. It is called by one goroutine per agent
// connection; snapshots of different nodes do not contend.
func (s *Store) Ingest(snap *telemetryv1.NodeSnapshot) error { return s.ingest(snap, false) }

// IngestFirst records the first snapshot of a stream. Unlike Ingest it
// takes a snapshot whose sequence the node's view already has: an agent
// answers a new subscription with its latest tick again, now with what
// the new request asks (more pods, other fields), and that answer must
// replace the view. History is not doubled: points no newer than a
// series' last are not appended again.
func (s *Store) IngestFirst(snap *telemetryv1.NodeSnapshot) error { return s.ingest(snap, true) }

func (s *Store) ingest(snap *telemetryv1.NodeSnapshot, first bool) error {
	if snap.GetNode() == "" {
		return errors.New("snapshot without a node name")
	}
	n := s.node(snap.Node)
	n.mu.Lock()
	// App scrapes are deduplicated by their own time, not the snapshot's
	// sequence: an apps_only message repeats the latest tick's.
	apps := (len(snap.GetApps()) > 0 || snap.GetAppsOnly()) &&
		n.ingestApps(snap, max(s.appRetention.Load(), int64(DefaultAppWindow)), first)
	changed := !snap.GetAppsOnly() && n.ingest(snap, first, s.now(), s.retention.Load(), metricSet(s.windowed.Load()), s.opts.MaxUnattributedLoad, s.log)
	n.mu.Unlock()
	if apps {
		s.notifyApps(snap)
	}
	if !changed {
		return nil
	}
	s.aggs.onIngest(s, n)
	return nil
}

func (s *Store) node(name string) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.byName[name]; ok {
		return n
	}
	n := &node{name: name, hist: make(map[string]*devHist)}
	s.byName[name] = n
	s.publishNodes()
	s.log.Info("node joined", "node", name)
	return n
}

// publishNodes republishes the node list; s.mu held.
func (s *Store) publishNodes() {
	l := make([]*node, 0, len(s.byName))
	for _, n := range s.byName {
		l = append(l, n)
	}
	s.nodes.Store(&l)
}

// ingest publishes snap as the node's new view and reports whether it
// did: a snapshot of a replaced agent, or a duplicate, changes nothing.
func (n *node) ingest(snap *telemetryv1.NodeSnapshot, first bool, now time.Time, retention int64, windowed metricSet, maxUnattributed float64, log *slog.Logger) bool {
	if !n.accept(snap, first, log) {
		return false
	}
	v := newView(snap, now)
	pods := newPodSlab(v, snap)
	horizon := v.sampleTime - retention/int64(time.Microsecond)
	for i, d := range snap.GetDevices() {
		dv := &v.devices[i]
		dv.uuid = d.GetUuid()
		readDevice(dv, d)
		n.attachPods(v, &pods, i, d, maxUnattributed)
		if retention > 0 {
			n.recordHistory(v, i, d, horizon, windowed, pods.shared)
		}
	}
	n.dropGoneDevices(v)
	n.view.Store(v)
	return true
}

// accept reports whether snap is newer than the node's view (or, first
// of a stream, as new). A snapshot of a newer agent is, and clears the
// history of the one it replaced.
func (n *node) accept(snap *telemetryv1.NodeSnapshot, first bool, log *slog.Logger) bool {
	old := n.view.Load()
	if old == nil {
		return true
	}
	start := snap.GetAgentStart().AsTime()
	switch {
	case start.Before(old.agentStart):
		// An agent that was replaced, still streaming from an address
		// DNS has not dropped yet: the newer agent owns the node.
		return false
	case start.After(old.agentStart):
		log.Info("agent restarted: node state replaced", "node", n.name, "agent_start", start)
		clear(n.hist)
		return true
	}
	// Else a duplicate from a second address; or, first of a stream, the
	// latest tick again as the new subscription asks it.
	return snap.GetSequence() > old.sequence || first && snap.GetSequence() == old.sequence
}

// newView is snap's view, its devices not yet read and its pods not yet
// attached.
func newView(snap *telemetryv1.NodeSnapshot, now time.Time) *view {
	interval := snap.GetInterval().AsDuration()
	return &view{
		agentStart: snap.GetAgentStart().AsTime(),
		sequence:   snap.GetSequence(),
		interval:   interval,
		period:     max(interval, snap.GetPeriod().AsDuration()),
		sampleTime: snap.GetSampleTime().AsTime().UnixMicro(),
		received:   now,
		devices:    make([]device, len(snap.GetDevices())),
	}
}

// podSlab is the arrays every pod's device list and shares are cut from,
// with room for one device each: a pod holds one device but for the rare
// pod with several (whose append then copies out). Two allocations per
// snapshot instead of one per pod; a third, the shares alongside, only
// when the agent sent any.
type podSlab struct {
	devices []int32
	shares  []share // nil unless shared
	shared  bool    // the agent sent some pod's own share
}

// newPodSlab sizes the slab, and v.pods, for snap's pod references.
func newPodSlab(v *view, snap *telemetryv1.NodeSnapshot) podSlab {
	refs, shared := 0, false
	for _, d := range snap.GetDevices() {
		refs += len(d.GetPods())
		for _, p := range d.GetPods() {
			shared = shared || hasShare(p)
		}
	}
	v.pods = make([]pod, 0, refs)
	s := podSlab{devices: make([]int32, refs), shared: shared}
	if shared {
		s.shares = make([]share, refs)
	}
	return s
}

// attachPods adds device i (d) to the device list of each pod holding it,
// the pod added to v.pods when new, merges each pod's share of it, and
// leaves the pods it touched in n.touched.
func (n *node) attachPods(v *view, slab *podSlab, i int, d *telemetryv1.Device, maxUnattributed float64) {
	current := !d.GetStalled() && !d.GetLost()
	fbTotal := fbTotal(d)
	distrust := unexplained(d, maxUnattributed)
	n.touched = n.touched[:0]
	for _, p := range d.GetPods() {
		// A node has a few pods per device: a linear search allocates
		// nothing, where a map would on every snapshot.
		j := slices.IndexFunc(v.pods, func(q pod) bool { return q.name == p.GetName() && q.namespace == p.GetNamespace() })
		if j < 0 {
			j = len(v.pods)
			v.pods = append(v.pods, pod{namespace: p.GetNamespace(), name: p.GetName(), devices: slab.devices[j : j : j+1]})
			if slab.shared {
				v.pods[j].shares = slab.shares[j : j : j+1]
			}
		}
		pd := &v.pods[j]
		// Several containers of one pod on one device count once, their
		// shares merged.
		// #nosec G115 -- i and j index a node's devices and pods: far below 2^31
		if ds := pd.devices; len(ds) == 0 || ds[len(ds)-1] != int32(i) {
			pd.devices = append(pd.devices, int32(i)) // #nosec G115 -- as above
			if slab.shared {
				pd.shares = append(pd.shares, share{})
			}
			n.touched = append(n.touched, int32(j)) // #nosec G115 -- as above
		}
		if slab.shared && current {
			pd.shares[len(pd.shares)-1].add(p, fbTotal, distrust)
		}
	}
}

// recordHistory appends device i's readings (d's hardware samples where
// it has them, else the snapshot's values) to its history, trims it to
// horizon and gives it to the view; then the same for its pods' shares
// (n.touched) when the agent sent any.
func (n *node) recordHistory(v *view, i int, d *telemetryv1.Device, horizon int64, windowed metricSet, shared bool) {
	dv := &v.devices[i]
	h := n.hist[dv.uuid]
	if h == nil {
		h = &devHist{}
		n.hist[dv.uuid] = h
	}
	var sampled metricSet
	for _, es := range d.GetSamples() {
		m, ok := engineMetric(es.GetEngine())
		if !ok || len(es.GetSamples()) == 0 {
			continue
		}
		sampled |= 1 << m
		for _, smp := range es.GetSamples() {
			h.series[m] = appendPoint(h.series[m], point{smp.GetTimeUnixMicro(), smp.GetValue()})
		}
	}
	for m := range numMetrics {
		// A device-wide metric's history is a point per snapshot, kept
		// only once a window of it is asked for: most triggers are on
		// utilization.
		keep := !deviceWide.has(m) || windowed.has(m)
		if keep && !sampled.has(m) && dv.has.has(m) {
			h.series[m] = appendPoint(h.series[m], point{v.sampleTime, dv.values[m]})
		}
		h.series[m] = trim(h.series[m], horizon)
		dv.series[m] = h.series[m]
	}
	switch {
	case shared:
		n.shareHistory(v, h, i, horizon, windowed)
	case h.pods != nil:
		h.pods = nil // the agent sends no shares any more
	}
}

// dropGoneDevices forgets the history of devices v no longer reports.
func (n *node) dropGoneDevices(v *view) {
	if len(n.hist) <= len(v.devices) {
		return
	}
	for uuid := range n.hist {
		if !slices.ContainsFunc(v.devices, func(d device) bool { return d.uuid == uuid }) {
			delete(n.hist, uuid)
		}
	}
}

// shareHistory records the shares of device i's pods (n.touched) in h,
// for the metrics a query has asked a window of (windowed), and gives
// them to the view: a pod's point is its value at the snapshot, its own
// where it had a share of the metric, the device's where not. Pods no
// longer holding the device lose their history.
func (n *node) shareHistory(v *view, h *devHist, i int, horizon int64, windowed metricSet) {
	dv := &v.devices[i]
	for _, j := range n.touched {
		pd := &v.pods[j]
		k := len(pd.devices) - 1 // device i is the pod's latest
		s := &pd.shares[k]
		if s.has == 0 {
			if ph := h.find(pd.namespace, pd.name); ph != nil {
				ph.seen = true // a tick without a share keeps the history
			}
			continue
		}
		ph := h.of(pd.namespace, pd.name)
		ph.seen = true
		for m := range numMetrics {
			if windowed&(1<<m) == 0 {
				continue
			}
			switch {
			case s.has&(1<<m) != 0:
				ph.series[m] = appendPoint(ph.series[m], point{v.sampleTime, s.values[m]})
			case dv.has&(1<<m) != 0:
				ph.series[m] = appendPoint(ph.series[m], point{v.sampleTime, dv.values[m]})
			}
			ph.series[m] = trim(ph.series[m], horizon)
			s.series[m] = ph.series[m]
		}
	}
	h.pods = slices.DeleteFunc(h.pods, func(p *podHist) bool { return !p.seen })
	for _, p := range h.pods {
		p.seen = false
	}
}

// hasShare reports whether the agent sent p's own share of any metric.
func hasShare(p *telemetryv1.Pod) bool {
	return p.GpuUtil != nil || p.MemCopyUtil != nil || p.EncUtil != nil || p.DecUtil != nil ||
		p.FbUsedBytes != nil || p.EncoderFps != nil || p.EncoderLatencySeconds != nil
}

// unexplained is the metrics of d whose unattributed load exceeds max
// percentage points (none when max is negative): the pods' shares of them
// are not used, the device's value stands for each pod.
func unexplained(d *telemetryv1.Device, max float64) metricSet {
	if max < 0 {
		return 0
	}
	var m metricSet
	for _, u := range [...]struct {
		metric Metric
		v      *float64
	}{
		{GPUUtil, d.UnattributedGpuUtil}, {MemCopyUtil, d.UnattributedMemCopyUtil},
		{EncUtil, d.UnattributedEncUtil}, {DecUtil, d.UnattributedDecUtil},
	} {
		if u.v != nil && *u.v > max {
			m |= 1 << u.metric
		}
	}
	return m
}

// add merges p's share into s: utilizations and framebuffer add up over
// the pod's containers, encoder fps and latency are means over their
// sessions. fbTotal is the device's framebuffer, 0 if unknown; the metrics
// in skip are left to the device's value.
func (s *share) add(p *telemetryv1.Pod, fbTotal uint64, skip metricSet) {
	sum := func(m Metric, v float64) {
		if skip&(1<<m) != 0 {
			return
		}
		s.values[m] += v
		s.has |= 1 << m
	}
	if p.GpuUtil != nil {
		sum(GPUUtil, p.GetGpuUtil())
	}
	if p.MemCopyUtil != nil {
		sum(MemCopyUtil, p.GetMemCopyUtil())
	}
	if p.EncUtil != nil {
		sum(EncUtil, p.GetEncUtil())
	}
	if p.DecUtil != nil {
		sum(DecUtil, p.GetDecUtil())
	}
	if p.FbUsedBytes != nil && fbTotal > 0 {
		sum(FBUsedRatio, float64(p.GetFbUsedBytes())/float64(fbTotal))
	}
	n := p.GetEncoderSessions()
	mean := func(m Metric, v float64) {
		if s.has&(1<<m) != 0 && s.sessions+n > 0 {
			v = (s.values[m]*float64(s.sessions) + v*float64(n)) / float64(s.sessions+n)
		}
		s.values[m] = v
		s.has |= 1 << m
	}
	if p.EncoderFps != nil {
		mean(EncoderFPS, p.GetEncoderFps())
	}
	if p.EncoderLatencySeconds != nil {
		mean(EncoderLatency, p.GetEncoderLatencySeconds())
	}
	s.sessions += n
}

// fbTotal is the device's framebuffer in bytes, 0 if unknown.
func fbTotal(d *telemetryv1.Device) uint64 {
	if d.FbTotalBytes != nil {
		return d.GetFbTotalBytes()
	}
	return d.GetFbUsedBytes() + d.GetFbFreeBytes()
}

func readDevice(dv *device, d *telemetryv1.Device) {
	set := func(m Metric, v float64) {
		dv.values[m] = v
		dv.has |= 1 << m
	}
	if d.GetStalled() || d.GetLost() {
		return // no reading: absent, not zero
	}
	if d.GpuUtil != nil {
		set(GPUUtil, d.GetGpuUtil())
	}
	if d.MemCopyUtil != nil {
		set(MemCopyUtil, d.GetMemCopyUtil())
	}
	if d.EncUtil != nil {
		set(EncUtil, d.GetEncUtil())
	}
	if d.DecUtil != nil {
		set(DecUtil, d.GetDecUtil())
	}
	if d.FbUsedBytes != nil {
		if total := fbTotal(d); total > 0 {
			set(FBUsedRatio, float64(d.GetFbUsedBytes())/float64(total))
		}
	}
	if d.EncoderFps != nil {
		set(EncoderFPS, d.GetEncoderFps())
	}
	if d.EncoderLatencySeconds != nil {
		set(EncoderLatency, d.GetEncoderLatencySeconds())
	}
	// The GPU's own figures (a MIG instance's message has only its own
	// profiling values, DCGM's GPU instance entity's).
	for _, f := range [...]struct {
		m Metric
		v *float64
	}{
		{Temperature, d.TemperatureCelsius}, {MemoryTemperature, d.MemoryTemperatureCelsius},
		{Power, d.PowerWatts}, {PCIeTX, d.PcieTxBytesPerSecond}, {PCIeRX, d.PcieRxBytesPerSecond},
		{NVLink, d.NvlinkBytesPerSecond},
		{GrEngineActive, d.GrEngineActiveRatio}, {SMActive, d.SmActiveRatio},
		{TensorActive, d.TensorActiveRatio}, {DRAMActive, d.DramActiveRatio},
	} {
		if f.v != nil {
			set(f.m, *f.v)
		}
	}
	if d.PowerWatts != nil && d.GetEnforcedPowerLimitWatts() > 0 {
		set(PowerRatio, d.GetPowerWatts()/d.GetEnforcedPowerLimitWatts())
	}
}

// appendPoint appends p unless the series already reaches its time: a
// series stays sorted, for window's binary search, and a tick sent again
// (a re-subscription's answer) is not counted twice.
func appendPoint(ps []point, p point) []point {
	if n := len(ps); n > 0 && ps[n-1].t >= p.t {
		return ps
	}
	return append(ps, p)
}

// trim drops the points older than horizon by moving the start; when most
// of the backing array is dead it copies the live part to a new one, so
// memory stays proportional to the window.
func trim(ps []point, horizon int64) []point {
	i := 0
	for i < len(ps) && ps[i].t < horizon {
		i++
	}
	if i == 0 {
		return ps
	}
	ps = ps[i:]
	if cap(ps) > 64 && len(ps) < cap(ps)/4 {
		ps = append(make([]point, 0, 2*len(ps)+8), ps...)
	}
	return ps
}

// staleAfter is the node's stale timeout: four of the agent's message
// periods (its interval, unless the scaler asked for fewer messages, or
// the heartbeat of a node nothing of whose passes the filter), or the
// configured one, but never under two periods: a node is not stale
// between two messages it was asked to space so.
func (s *Store) staleAfter(v *view) time.Duration {
	if s.opts.StaleAfter > 0 {
		return max(s.opts.StaleAfter, 2*v.period)
	}
	return max(4*v.period, MinStaleAfter)
}

// Sweep forgets the nodes silent for longer than ForgetAfter, drops the
// aggregates no longer polled, and re-evaluates the watched ones, whose
// answer may change by silence alone. The caller runs it about once per
// second.
func (s *Store) Sweep() {
	now := s.now()
	s.mu.Lock()
	var forgotten []*node
	for name, n := range s.byName {
		if v := n.view.Load(); v != nil && now.Sub(v.received) > s.opts.ForgetAfter {
			delete(s.byName, name)
			n.forgotten.Store(true)
			forgotten = append(forgotten, n)
			s.log.Info("node forgotten: silent too long", "node", name, "silent", now.Sub(v.received).Round(time.Second))
		}
	}
	if len(forgotten) > 0 {
		s.publishNodes()
	}
	s.mu.Unlock()
	s.aggs.sweep(s, forgotten, now)
	s.notifyApps(nil) // windows and staleness move with time alone
	s.demand.expire(s.nanos(now))
}

// NodeCounts returns how many nodes are fresh and how many are stale but
// not forgotten.
func (s *Store) NodeCounts() (fresh, stale int) {
	now := s.now()
	for _, n := range *s.nodes.Load() {
		v := n.view.Load()
		if v == nil {
			continue
		}
		if now.Sub(v.received) > s.staleAfter(v) {
			stale++
		} else {
			fresh++
		}
	}
	return fresh, stale
}

// Result is an evaluation: the value and what it stands on.
type Result struct {
	Value float64
	Pods  int // matching pods with a value on fresh nodes
	Nodes int // fresh nodes
}

func (r Result) String() string {
	return fmt.Sprintf("%g over %d pods (%d fresh nodes)", r.Value, r.Pods, r.Nodes)
}
