// Package stream serves the push API (telemetryv1.Telemetry): each Watch
// subscriber gets the node's attributed snapshots as the sampler publishes
// them, without the scrape, query and poll of the Prometheus path.
//
// One writer, many readers, nobody waits for a slow one. The sampler
// publishes into a telemetry.Store and returns; one broadcaster goroutine
// wakes on each snapshot, joins it with the pod map once
// (internal/attribution, the same join the exporter formats), and offers it to
// every subscriber's small buffer without blocking: a subscriber whose
// buffer is full loses its oldest entry, which is counted. Each Watch
// handler drains its own buffer and sends; when it skipped snapshots, the
// store's history still gives it their sub-second samples. A stalled
// subscriber therefore holds its buffer and one message in gRPC's
// flow-control window, and delays nobody.
package stream

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// DefaultBuffer is how many snapshots a subscriber's buffer holds: enough
// to ride out a garbage collection or a scheduling hiccup at 10 Hz, small
// enough that a stalled subscriber costs a few pointers.
const DefaultBuffer = 4

// Options configures a Server.
type Options struct {
	Node     string        // NodeSnapshot.node: the agent's --node-name
	Interval time.Duration // the sampling interval
	Start    time.Time     // when the agent started (NodeSnapshot.agent_start)
	// Views joins each snapshot with the node's pods (and its processes
	// with theirs, for each pod's own share of a shared GPU); nil: no pod
	// attribution.
	Views  *attribution.Attributor
	Buffer int // per-subscriber buffer; 0 means DefaultBuffer
	Logger *slog.Logger
	// Apps is the node's app scrapes, for subscribers that name
	// app_families; nil: none.
	Apps AppSource
}

// Server implements telemetryv1.TelemetryServer over a store. Run must
// run for subscribers to get anything after their first message.
type Server struct {
	telemetryv1.UnimplementedTelemetryServer

	store *telemetry.Store
	opts  Options
	log   *slog.Logger

	mu   sync.Mutex
	subs map[*subscriber]struct{}

	done      chan struct{} // closed by Close: every Watch ends with EOF
	closeOnce sync.Once

	subscribers prometheus.Gauge
	sent        prometheus.Counter
	dropped     prometheus.Counter
}

var _ telemetryv1.TelemetryServer = (*Server)(nil)

// New returns a server of store's snapshots.
func New(store *telemetry.Store, opts Options) *Server {
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Views == nil {
		opts.Views = attribution.NewAttributor(store, nil, nil) // no pods
	}
	name := func(n string) string { return prometheus.BuildFQName("gpu_agent", "stream", n) }
	return &Server{
		store: store,
		opts:  opts,
		log:   opts.Logger,
		subs:  make(map[*subscriber]struct{}),
		done:  make(chan struct{}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{Name: name("subscribers"),
			Help: "Open Watch streams."}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: name("messages_sent_total"),
			Help: "NodeSnapshot messages sent to Watch subscribers."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: name("dropped_snapshots_total"),
			Help: "Snapshots dropped from a Watch subscriber's buffer because it read slower than they came (their samples are still sent while the history holds them)."}),
	}
}

// Describe implements prometheus.Collector: the stream's own metrics.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	s.subscribers.Describe(ch)
	s.sent.Describe(ch)
	s.dropped.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	s.subscribers.Collect(ch)
	s.sent.Collect(ch)
	s.dropped.Collect(ch)
}

// Register adds the Telemetry service to a gRPC server.
func (s *Server) Register(g grpc.ServiceRegistrar) { telemetryv1.RegisterTelemetryServer(g, s) }

// Close ends every open Watch cleanly (the client reads EOF, not an
// error: KEDA-style clients reconnect at once after EOF but back off
// after an error) and refuses new ones. Call it before GracefulStop,
// which would otherwise wait for streams that never end.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.done) }) }

// item is one snapshot as the stream serves it, shared by every
// subscriber: the view and, built on first use, the message of each
// device with this snapshot's own samples.
type item struct {
	view *attribution.View

	once    sync.Once
	devices []*telemetryv1.Device // parallel to view.Devices
}

func (s *Server) newItem(snap *telemetry.Snapshot) *item {
	return &item{view: s.opts.Views.View(snap)}
}

// ownDevices returns the devices' messages with this snapshot's samples
// only: what a subscriber that skipped nothing gets. Messages are only
// read once built, so concurrent streams may marshal them.
func (it *item) ownDevices() []*telemetryv1.Device {
	it.once.Do(func() {
		snaps := []*telemetry.Snapshot{it.view.Snapshot}
		it.devices = make([]*telemetryv1.Device, len(it.view.Devices))
		for i := range it.view.Devices {
			it.devices[i] = deviceMessage(&it.view.Devices[i], snaps)
		}
	})
	return it.devices
}

type subscriber struct {
	buf     chan *item
	apps    bool          // it named app families
	appWake chan struct{} // a new app set; one slot
}

func (s *Server) subscribe(apps bool) *subscriber {
	sub := &subscriber{buf: make(chan *item, s.opts.Buffer), apps: apps, appWake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	s.subscribers.Inc()
	return sub
}

func (s *Server) unsubscribe(sub *subscriber) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
	s.subscribers.Dec()
}

// Run is the broadcaster: for each published snapshot it builds the item
// once and offers it to every subscriber. It never blocks on one: a full
// buffer loses its oldest item. It returns when ctx ends or on Close.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // Close ends the broadcaster as ctx does
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if s.opts.Apps != nil {
		go s.runApps(ctx)
	}
	var seq uint64
	var missed []*telemetry.Snapshot
	for {
		snap, err := s.store.Wait(ctx, seq)
		if err != nil {
			return nil // ctx ended or Close: a normal stop
		}
		prev := seq
		seq = snap.Seq
		s.mu.Lock()
		n := len(s.subs)
		s.mu.Unlock()
		if n == 0 {
			continue // nobody to join it for
		}
		// Wait gives the latest: the snapshots published while this
		// goroutine was not scheduled (a loaded node) come from the
		// history, in order, so that a subscriber that keeps up gets
		// every one. Beyond a buffer's worth they would only push each
		// other out of every buffer: those count as dropped at once.
		snaps := []*telemetry.Snapshot{snap}
		if prev > 0 && snap.Seq > prev+1 {
			var lost uint64
			missed, lost = s.store.Since(missed[:0], prev, snap)
			if extra := len(missed) - s.opts.Buffer; extra > 0 {
				lost += uint64(extra)
				missed = missed[extra:]
			}
			s.dropped.Add(float64(lost) * float64(n))
			snaps = missed
		}
		for _, snap := range snaps {
			it := s.newItem(snap) // outside the lock: Watch calls subscribe meanwhile
			s.mu.Lock()
			for sub := range s.subs {
				s.offer(sub, it)
			}
			s.mu.Unlock()
		}
	}
}

// offer puts it in sub's buffer, dropping the oldest item if the buffer
// is full. Only the broadcaster sends to a buffer, so after one receive
// the send succeeds.
func (s *Server) offer(sub *subscriber, it *item) {
	select {
	case sub.buf <- it:
		return
	default:
	}
	select {
	case <-sub.buf:
		s.dropped.Inc()
	default: // the subscriber took one meanwhile
	}
	sub.buf <- it
}

// Watch implements telemetryv1.TelemetryServer.
func (s *Server) Watch(req *telemetryv1.WatchRequest, stream grpc.ServerStreamingServer[telemetryv1.NodeSnapshot]) (err error) {
	f, err := newFilter(req)
	if err != nil {
		return err
	}
	f.Settle(s.opts.Interval)
	select {
	case <-s.done:
		return status.Error(codes.Unavailable, "the agent is shutting down")
	default:
	}
	// Subscribe before reading the latest, so that nothing published in
	// between is missed; what both give is sent once (by sequence).
	sub := s.subscribe(f.Families != nil && s.opts.Apps != nil)
	ctx := stream.Context()
	log := s.log.With("namespace", req.GetNamespace(), "pod_pattern", req.GetPodPattern(),
		"selectors", len(req.GetPodFilter().GetSelectors()), "pod_filter", req.GetPodFilter() != nil,
		"device_fields", len(req.GetDeviceFields().GetPaths()), "min_period", f.MinPeriod, "heartbeat", f.Heartbeat)
	if p, ok := peer.FromContext(ctx); ok {
		log = log.With("peer", p.Addr.String())
	}
	log.Debug("subscriber connected")
	var sent uint64
	defer func() {
		s.unsubscribe(sub)
		log.Debug("subscriber gone", "messages", sent, "err", err)
	}()

	var last *telemetry.Snapshot
	var lastSent time.Time
	var scratch []*telemetry.Snapshot
	var apps appCache
	// What the latest messages passed: with a heartbeat, a message in
	// which nothing passes follows one in which something did at once (the
	// subscriber learns it is gone), then comes once per heartbeat.
	var lastDevices, lastApps bool
	send := func(it *item) error {
		var msg *telemetryv1.NodeSnapshot
		msg, scratch = s.message(it, last, f, scratch[:0])
		msg.Apps, _ = s.apps(f, &apps)
		empty := len(msg.Devices) == 0 && len(msg.Apps) == 0
		if last != nil && empty && !lastDevices && !lastApps && f.Heartbeat > 0 && !s.due(last, it.view.Snapshot, f.Heartbeat) {
			return nil // an idle node: the next heartbeat tells it
		}
		msg.Period = durationpb.New(f.Period(s.opts.Interval, empty))
		if err := stream.Send(msg); err != nil {
			return err
		}
		s.sent.Inc()
		sent++
		last, lastSent = it.view.Snapshot, time.Now()
		lastDevices, lastApps = len(msg.Devices) > 0, len(msg.Apps) > 0
		return nil
	}
	// sendApps sends a new app set between two ticks, as an apps_only
	// message; with min_period, not sooner than that after the previous
	// message (the next tick's message carries the set anyway).
	sendApps := func() error {
		if last == nil || time.Since(lastSent) < f.MinPeriod {
			return nil
		}
		msgs, fresh := s.apps(f, &apps)
		if !fresh {
			return nil
		}
		msg := &telemetryv1.NodeSnapshot{
			Node:       s.opts.Node,
			Sequence:   last.Seq,
			SampleTime: timestamppb.New(last.Time),
			Interval:   durationpb.New(s.opts.Interval),
			AgentStart: timestamppb.New(s.opts.Start),
			Apps:       msgs,
			AppsOnly:   true,
			Period:     durationpb.New(f.Period(s.opts.Interval, false)),
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		s.sent.Inc()
		sent++
		lastSent = time.Now()
		lastApps = len(msgs) > 0
		return nil
	}
	if snap := s.store.Latest(); snap != nil {
		if err := send(s.newItem(snap)); err != nil {
			return err
		}
	}
	for {
		var it *item
		select {
		case it = <-sub.buf:
		case <-sub.appWake:
			if err := sendApps(); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return nil
		}
		snap := it.view.Snapshot
		if last != nil && (snap.Seq <= last.Seq || !s.due(last, snap, f.MinPeriod)) {
			continue // sent already, or merged into a later message
		}
		if err := send(it); err != nil {
			return err
		}
	}
}

// due reports whether snap comes at least minPeriod after last on the
// sampler's clock, give or take half an interval of tick jitter, so that
// min_period 1s at 250 ms ticks sends every fourth snapshot, not every
// fifth.
func (s *Server) due(last, snap *telemetry.Snapshot, minPeriod time.Duration) bool {
	return minPeriod <= 0 || snap.Time.Sub(last.Time) >= minPeriod-s.opts.Interval/2
}
