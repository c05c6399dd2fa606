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

// Requests returns the request of every Watch so far, in order. The
// fake ignores all of them but app_families' presence: it is an agent
// older than every filter, sending every pod and field at every tick.
func (a *Agent) Requests() []*telemetryv1.WatchRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*telemetryv1.WatchRequest(nil), a.requests...)
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
	hold := a.hold
	a.mu.Unlock()
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
