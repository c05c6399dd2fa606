// Package scalertest drives the scaler from tests and benchmarks: an
// in-process agent serving the real Watch API on a loopback listener,
// and the push-latency measurement, reusable with real agents through a
// StepFunc.
package scalertest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// Agent is a fake agent: a gRPC server whose snapshots the test publishes.
// Like the real one, Watch sends the latest snapshot at once, then every
// new one; a subscriber that falls behind loses old snapshots.
type Agent struct {
	telemetryv1.UnimplementedTelemetryServer

	Node     string
	Interval time.Duration

	ln  net.Listener
	srv *grpc.Server

	mu       sync.Mutex
	start    time.Time
	seq      uint64
	latest   *telemetryv1.NodeSnapshot
	subs     map[chan *telemetryv1.NodeSnapshot]struct{}
	requests []*telemetryv1.WatchRequest // every Watch's, in order
	hold     chan struct{}               // while not nil, a new Watch sends nothing until it is closed
	filters  bool                        // Watch streams opened now honour their request
}

// StartAgent serves a fake agent of node on addr ("127.0.0.1:0" for any
// port; an old agent's Addr() to restart it where the scaler looks).
// opts are the gRPC server's (grpc.Creds for TLS).
func StartAgent(node, addr string, opts ...grpc.ServerOption) (*Agent, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fake agent %s: %w", node, err)
	}
	a := &Agent{Node: node, Interval: 250 * time.Millisecond, ln: ln, srv: grpc.NewServer(opts...),
		start: time.Now(), subs: make(map[chan *telemetryv1.NodeSnapshot]struct{})}
	telemetryv1.RegisterTelemetryServer(a.srv, a)
	go a.srv.Serve(ln)
	return a, nil
}

// Addr is the agent's host:port.
func (a *Agent) Addr() string { return a.ln.Addr().String() }

// Stop kills the agent: connections are closed, not drained, as when a
// node or pod dies.
func (a *Agent) Stop() { a.srv.Stop() }

// AppFamilies returns the app_families of every Watch so far, in order.
func (a *Agent) AppFamilies() [][]string {
	var out [][]string
	for _, r := range a.Requests() {
		out = append(out, r.GetAppFamilies())
	}
	return out
}

// Requests returns the request of every Watch so far, in order. Unless
// HonourFilters was called the fake ignores all of them: it is an agent
// older than every filter, sending every pod and field at every tick.
func (a *Agent) Requests() []*telemetryv1.WatchRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*telemetryv1.WatchRequest(nil), a.requests...)
}

// HonourFilters makes the Watch streams opened from now on honour their
// request as the real agent does (on), or ignore it as an agent older
// than every filter does (off, the default): pod_filter or namespace and
// pod_pattern, include_unattributed, device_fields, min_period,
// heartbeat and app_families, each message carrying its period. The
// snapshot's Interval is the sampling interval the periods are settled
// against.
func (a *Agent) HonourFilters(on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.filters = on
}

// Hold makes the Watch streams opened from now on send nothing, not even
// their first message, until the returned function is called: an agent
// slow to answer a new subscription.
func (a *Agent) Hold() (release func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := make(chan struct{})
	a.hold = h
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			if a.hold == h {
				a.hold = nil
			}
			a.mu.Unlock()
			close(h)
		})
	}
}

// Subscribers is the number of open Watch streams.
func (a *Agent) Subscribers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.subs)
}

// Publish sends a snapshot of devs to every subscriber and returns when it
// was handed to them (the start of a push-latency measurement).
func (a *Agent) Publish(devs ...*telemetryv1.Device) time.Time {
	return a.PublishApps(devs, nil)
}

// PublishApps is Publish with the node's app scrapes (NodeSnapshot.apps),
// sent to every subscriber whatever families it asked for.
func (a *Agent) PublishApps(devs []*telemetryv1.Device, apps []*telemetryv1.AppScrape) time.Time {
	a.mu.Lock()
	a.seq++
	now := time.Now()
	s := &telemetryv1.NodeSnapshot{
		Node: a.Node, Sequence: a.seq,
		SampleTime: timestamppb.New(now), Interval: durationpb.New(a.Interval),
		AgentStart: timestamppb.New(a.start), Devices: devs, Apps: apps,
	}
	a.latest = s
	for c := range a.subs {
		select { // newest wins, as in the real agent
		case c <- s:
		default:
			select {
			case <-c:
			default:
			}
			c <- s
		}
	}
	a.mu.Unlock()
	return now
}

// Watch implements telemetryv1.TelemetryServer.
func (a *Agent) Watch(req *telemetryv1.WatchRequest, stream grpc.ServerStreamingServer[telemetryv1.NodeSnapshot]) error {
	c := make(chan *telemetryv1.NodeSnapshot, 4)
	a.mu.Lock()
	a.requests = append(a.requests, req)
	hold, filters := a.hold, a.filters
	a.mu.Unlock()
	var f *filter
	if filters {
		var err error
		if f, err = newFilter(req); err != nil {
			return err
		}
		f.Settle(a.Interval)
	}
	if hold != nil {
		select {
		case <-hold:
		case <-stream.Context().Done():
			return nil
		}
	}
	a.mu.Lock()
	if a.latest != nil {
		c <- a.latest
	}
	a.subs[c] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.subs, c)
		a.mu.Unlock()
	}()
	if f != nil {
		return a.watchFiltered(f, c, stream)
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case s := <-c:
			if err := stream.Send(s); err != nil {
				return err
			}
		}
	}
}

// watchFiltered sends what f passes of the snapshots offered on c, as the
// real agent's Watch does: with min_period, not sooner than that after
// the previous message (the snapshots in between merged, their samples
// kept); with a heartbeat, while nothing passes, one message per
// heartbeat, except the first empty one after one that carried
// something, sent at once.
func (a *Agent) watchFiltered(f *filter, c <-chan *telemetryv1.NodeSnapshot, stream grpc.ServerStreamingServer[telemetryv1.NodeSnapshot]) error {
	var last *telemetryv1.NodeSnapshot
	var since []*telemetryv1.NodeSnapshot // offered since last, not sent
	var lastPassed bool                   // the last message carried a device or an app
	for {
		var s *telemetryv1.NodeSnapshot
		select {
		case <-stream.Context().Done():
			return nil
		case s = <-c:
		}
		interval := s.GetInterval().AsDuration()
		if last != nil && s.Sequence <= last.Sequence {
			continue // sent already
		}
		if last != nil && !due(last, s, f.MinPeriod, interval) {
			since = appendSince(since, s)
			continue // merged into a later message
		}
		msg := f.message(s, last, since, interval)
		empty := len(msg.Devices) == 0 && len(msg.Apps) == 0
		if last != nil && empty && !lastPassed && f.Heartbeat > 0 && !due(last, s, f.Heartbeat, interval) {
			since = appendSince(since, s)
			continue // an idle node: the next heartbeat tells it
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		last, since, lastPassed = s, since[:0], !empty
	}
}

func appendSince(since []*telemetryv1.NodeSnapshot, s *telemetryv1.NodeSnapshot) []*telemetryv1.NodeSnapshot {
	if len(since) == maxSinceWindow {
		since = append(since[:0], since[1:]...)
	}
	return append(since, s)
}

// Device is a GPU at util percent (GPU, memory copy, encoder and decoder
// alike), held by pods written "namespace/name".
func Device(uuid string, util float64, pods ...string) *telemetryv1.Device {
	u := util
	d := &telemetryv1.Device{Uuid: uuid, ModelName: "Tesla T4", GpuUtil: &u, MemCopyUtil: &u, EncUtil: &u, DecUtil: &u}
	for _, p := range pods {
		ns, name, _ := strings.Cut(p, "/")
		d.Pods = append(d.Pods, &telemetryv1.Pod{Namespace: ns, Name: name, Container: "main"})
	}
	return d
}
