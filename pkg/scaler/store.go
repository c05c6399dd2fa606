// Package scaler holds the cluster's GPU state as the agents push it: per
// node, per device, the pods holding it, its latest reading and a bounded
// history of samples. Every query KEDA polls or watches is kept answered
// as snapshots arrive (aggregate.go): GetMetrics and IsActive read the
// answer, and a StreamIsActive crossing reaches KEDA at the network's
// latency. Evaluate computes the same answer from scratch.
//
// Package scaler knows nothing of gRPC connections (pkg/scaler/agents) or
// of KEDA's API (pkg/scaler/keda).
package scaler

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
	// the aggregate. Zero: four of the node's own sampling intervals, at
	// least MinStaleAfter.
	StaleAfter time.Duration
	// ForgetAfter is how long a silent node is kept at all. Until then its
	// matching pods make an answer Unavailable rather than 0; after, it is
	// gone, as if it never was.
	ForgetAfter time.Duration
	// MaxWindow bounds the history kept per device; a query's window may
	// not exceed it.
	MaxWindow time.Duration
	Logger    *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

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

	base time.Time // the origin of the aggregates' deadlines
	aggs aggregateSet
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
	s := &Store{opts: o, log: o.Logger, now: o.Now, byName: make(map[string]*node)}
	s.base = s.now()
	s.nodes.Store(&[]*node{})
	s.aggs.init()
	return s
}

// Retain makes the store keep at least q's window of history (capped by
// MaxWindow). The query cache calls it for every new query.
func (s *Store) Retain(q *Query) {
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
}

// view is what evaluations read of a node: immutable once published.
type view struct {
	agentStart time.Time
	sequence   uint64
	interval   time.Duration
	sampleTime int64     // µs, the agent's clock: the reference of windows
	received   time.Time // the scaler's clock: the reference of staleness
	devices    []device
	pods       []pod
}

type device struct {
	uuid   string
	values [numMetrics]float64
	has    uint8 // bit m: values[m] is set
	// series[m] is the history of metric m: hardware samples where the
	// agent sent them, else the snapshot's value; oldest first.
	series [numMetrics][]point
}

type pod struct {
	namespace, name string
	devices         []int32 // indices into view.devices
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
func (s *Store) Ingest(snap *telemetryv1.NodeSnapshot) error {
	if snap.GetNode() == "" {
		return errors.New("snapshot without a node name")
	}
	n := s.node(snap.Node)
	n.mu.Lock()
	changed, err := n.ingest(snap, s.now(), s.retention.Load(), s.log)
	n.mu.Unlock()
	if err != nil || !changed {
		return err
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

func (n *node) ingest(snap *telemetryv1.NodeSnapshot, now time.Time, retention int64, log *slog.Logger) (bool, error) {
	start := snap.GetAgentStart().AsTime()
	old := n.view.Load()
	if old != nil {
		switch {
		case start.Before(old.agentStart):
			// An agent that was replaced, still streaming from an address
			// DNS has not dropped yet: the newer agent owns the node.
			return false, nil
		case start.After(old.agentStart):
			log.Info("agent restarted: node state replaced", "node", n.name, "agent_start", start)
			clear(n.hist)
		case snap.GetSequence() <= old.sequence:
			return false, nil // a duplicate from a second address
		}
	}
	v := &view{
		agentStart: start,
		sequence:   snap.GetSequence(),
		interval:   snap.GetInterval().AsDuration(),
		sampleTime: snap.GetSampleTime().AsTime().UnixMicro(),
		received:   now,
		devices:    make([]device, len(snap.GetDevices())),
	}
	// Every pod's device list is cut from one array, with room for one
	// device each: a pod holds one device but for the rare pod with
	// several (whose append then copies out). Two allocations per
	// snapshot instead of one per pod.
	refs := 0
	for _, d := range snap.GetDevices() {
		refs += len(d.GetPods())
	}
	v.pods = make([]pod, 0, refs)
	first := make([]int32, refs)
	horizon := v.sampleTime - retention/int64(time.Microsecond)
	for i, d := range snap.GetDevices() {
		dv := &v.devices[i]
		dv.uuid = d.GetUuid()
		readDevice(dv, d)
		for _, p := range d.GetPods() {
			// A node has a few pods per device: a linear search allocates
			// nothing, where a map would on every snapshot.
			j := slices.IndexFunc(v.pods, func(q pod) bool { return q.name == p.GetName() && q.namespace == p.GetNamespace() })
			if j < 0 {
				j = len(v.pods)
				v.pods = append(v.pods, pod{namespace: p.GetNamespace(), name: p.GetName(), devices: first[j : j : j+1]})
			}
			// Several containers of one pod on one device count once.
			if ds := v.pods[j].devices; len(ds) == 0 || ds[len(ds)-1] != int32(i) {
				v.pods[j].devices = append(v.pods[j].devices, int32(i))
			}
		}
		if retention <= 0 {
			continue
		}
		h := n.hist[dv.uuid]
		if h == nil {
			h = &devHist{}
			n.hist[dv.uuid] = h
		}
		var sampled uint8
		for _, es := range d.GetSamples() {
			m, ok := engineMetric(es.GetEngine())
			if !ok || len(es.GetSamples()) == 0 {
				continue
			}
			sampled |= 1 << m
			for _, smp := range es.GetSamples() {
				h.series[m] = append(h.series[m], point{smp.GetTimeUnixMicro(), smp.GetValue()})
			}
		}
		for m := range numMetrics {
			if sampled&(1<<m) == 0 && dv.has&(1<<m) != 0 {
				h.series[m] = append(h.series[m], point{v.sampleTime, dv.values[m]})
			}
			h.series[m] = trim(h.series[m], horizon)
			dv.series[m] = h.series[m]
		}
	}
	if len(n.hist) > len(v.devices) {
		for uuid := range n.hist {
			if !slices.ContainsFunc(v.devices, func(d device) bool { return d.uuid == uuid }) {
				delete(n.hist, uuid) // a device no longer reported
			}
		}
	}
	n.view.Store(v)
	return true, nil
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
		total := d.GetFbTotalBytes()
		if d.FbTotalBytes == nil {
			total = d.GetFbUsedBytes() + d.GetFbFreeBytes()
		}
		if total > 0 {
			set(FBUsedRatio, float64(d.GetFbUsedBytes())/float64(total))
		}
	}
	if d.EncoderFps != nil {
		set(EncoderFPS, d.GetEncoderFps())
	}
	if d.EncoderLatencySeconds != nil {
		set(EncoderLatency, d.GetEncoderLatencySeconds())
	}
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

// staleAfter is the node's stale timeout.
func (s *Store) staleAfter(v *view) time.Duration {
	if s.opts.StaleAfter > 0 {
		return s.opts.StaleAfter
	}
	return max(4*v.interval, MinStaleAfter)
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
