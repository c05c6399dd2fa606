package agents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

func TestBackoffGrowsCappedWithJitter(t *testing.T) {
	base, maxD := 250*time.Millisecond, 4*time.Second
	seen := map[time.Duration]bool{}
	for attempt := range 12 {
		full := min(base<<attempt, maxD)
		for range 50 {
			d := backoff(base, maxD, attempt)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, full/2, full)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct delays: no jitter", len(seen))
	}
}

type sink struct {
	mu    sync.Mutex
	nodes map[string]int
}

func (s *sink) Ingest(n *telemetryv1.NodeSnapshot) error {
	if n.GetNode() == "" { // as the store refuses it
		return errors.New("snapshot without a node name")
	}
	s.mu.Lock()
	s.nodes[n.Node]++
	s.mu.Unlock()
	return nil
}

func (s *sink) IngestFirst(n *telemetryv1.NodeSnapshot) error { return s.Ingest(n) }

func (s *sink) count(node string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[node]
}

// A stream that goes quiet without closing (a vanished node) is ended by
// the idle timeout and reconnected; a stopped agent is retried until it
// is back.
func TestIdleTimeoutAndReconnect(t *testing.T) {
	a, err := scalertest.StartAgent("n", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.Publish(scalertest.Device("GPU-1", 1, "default/p"))
	s := &sink{nodes: map[string]int{}}
	p, err := New(s, Options{Static: []string{a.Addr()}, IdleTimeout: 300 * time.Millisecond,
		BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	testutil.Eventually(t, 10*time.Second, "first snapshot", func() bool { return s.count("n") >= 1 })
	// Silent for longer than the idle timeout: the pool reconnects, and
	// the agent's Watch sends its latest snapshot again.
	testutil.Eventually(t, 10*time.Second, "a reconnection after idling", func() bool { return s.count("n") >= 2 && p.Stats().Failures >= 1 })

	addr := a.Addr()
	a.Stop()
	testutil.Eventually(t, 10*time.Second, "the disconnection", func() bool { return p.Stats().Connected == 0 })
	b, err := scalertest.StartAgent("n", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	before := s.count("n")
	b.Publish(scalertest.Device("GPU-1", 2, "default/p"))
	testutil.Eventually(t, 10*time.Second, "the restarted agent", func() bool { return s.count("n") > before && p.Stats().Connected == 1 })
	if st := p.Stats(); st.Targets != 1 {
		t.Errorf("stats %+v", st)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if p.Stats().Connected != 0 {
		t.Error("connected after Run returned")
	}
}

func TestBadDNSName(t *testing.T) {
	if _, err := New(&sink{}, Options{DNS: "no-port"}); err == nil {
		t.Error("a DNS name without a port accepted")
	}
}

// rawCodec sends a fake agent's bytes as they are, so that it can send
// what no real agent would: a message too large, or not a NodeSnapshot.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(_ []byte, _ any) error { return nil } // the WatchRequest is ignored
func (rawCodec) Name() string                    { return "proto" }

// startRawAgent serves Telemetry/Watch on loopback: each Watch (numbered
// from 1) calls watch with a function that sends raw bytes as one
// message.
func startRawAgent(t *testing.T, watch func(ctx context.Context, n int, send func([]byte) error) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	var watches atomic.Int64
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: telemetryv1.Telemetry_ServiceDesc.ServiceName,
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Watch", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
			var req []byte
			if err := ss.RecvMsg(&req); err != nil {
				return err
			}
			return watch(ss.Context(), int(watches.Add(1)), func(b []byte) error { return ss.SendMsg(b) })
		}}},
	}, struct{}{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// snapshotBytes is node's snapshot seq, with a model name of pad bytes
// to make it as large as a test needs.
func snapshotBytes(t *testing.T, node string, seq uint64, pad int) []byte {
	t.Helper()
	b, err := proto.Marshal(&telemetryv1.NodeSnapshot{Node: node, Sequence: seq, SampleTime: timestamppb.Now(),
		Interval: durationpb.New(250 * time.Millisecond), AgentStart: timestamppb.New(time.Unix(1, 0)),
		Devices: []*telemetryv1.Device{{Uuid: "GPU-1", ModelName: strings.Repeat("x", pad)}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// logBuffer collects a pool's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// runPool runs a pool over s until the test ends, logging into logs.
func runPool(t *testing.T, s Ingester, logs *logBuffer, o Options) *Pool {
	t.Helper()
	o.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	p, err := New(s, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// An agent that sends a message too large, one that is not a
// NodeSnapshot, or a snapshot without a node has it refused: counted by
// reason, logged once however often it does it again, its stream
// reconnected with backoff; another agent's snapshots keep coming. A
// snapshot over gRPC's default 4 MiB, under MaxMessageBytes, is taken.
func TestRefusedMessages(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bad    func(t *testing.T) []byte
		reason string
		count  func(Stats) uint64
	}{
		{"too large", func(t *testing.T) []byte { return snapshotBytes(t, "bad", 2, MaxMessageBytes) }, RejectTooLarge, func(s Stats) uint64 { return s.TooLarge }},
		{"not protobuf", func(*testing.T) []byte { return []byte{0xff, 0xff, 0xff, 0xff} }, RejectMalformed, func(s Stats) uint64 { return s.Malformed }},
		{"no node", func(*testing.T) []byte { return nil }, RejectMalformed, func(s Stats) uint64 { return s.Malformed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good, err := scalertest.StartAgent("good", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer good.Stop()
			good.Publish(scalertest.Device("GPU-1", 1, "default/p"))
			bad := tc.bad(t)
			// Each stream: a good snapshot, then the bad message.
			addr := startRawAgent(t, func(ctx context.Context, n int, send func([]byte) error) error {
				if err := send(snapshotBytes(t, "bad", uint64(2*n-1), 10)); err != nil {
					return err
				}
				if err := send(bad); err != nil {
					return err
				}
				<-ctx.Done()
				return nil
			})
			s := &sink{nodes: map[string]int{}}
			var logs logBuffer
			p := runPool(t, s, &logs, Options{Static: []string{addr, good.Addr()}, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
			testutil.Eventually(t, 30*time.Second, "three refused messages", func() bool { return tc.count(p.Stats()) >= 3 })
			if n := logs.count("agent sent a message the scaler refuses"); n != 1 {
				t.Errorf("the refusal logged %d times, want once:\n%s", n, logs.b.String())
			}
			if n := logs.count("reason=" + tc.reason); n != 1 {
				t.Errorf("reason=%s logged %d times, want once", tc.reason, n)
			}
			before := s.count("good")
			good.Publish(scalertest.Device("GPU-1", 2, "default/p"))
			testutil.Eventually(t, 30*time.Second, "the good agent's next snapshot", func() bool { return s.count("good") > before })
		})
	}

	// 5 MiB: over gRPC's default receive limit, under the scaler's.
	addr := startRawAgent(t, func(ctx context.Context, n int, send func([]byte) error) error {
		if err := send(snapshotBytes(t, "big", uint64(n), 5<<20)); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	})
	s := &sink{nodes: map[string]int{}}
	p := runPool(t, s, &logBuffer{}, Options{Static: []string{addr}})
	testutil.Eventually(t, 30*time.Second, "a 5 MiB snapshot", func() bool { return s.count("big") == 1 })
	if st := p.Stats(); st.TooLarge+st.Malformed > 0 {
		t.Errorf("a 5 MiB snapshot refused: %+v", st)
	}
}

// An agent that sends snapshots as fast as it can is read at
// MaxMessageRate: what the scaler takes from it stays under the rate's
// bound, the throttling is counted and logged once, and another agent's
// snapshots keep coming.
func TestSnapshotStorm(t *testing.T) {
	const rate = 20
	good, err := scalertest.StartAgent("good", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer good.Stop()
	good.Publish(scalertest.Device("GPU-1", 1, "default/p"))
	msg := snapshotBytes(t, "storm", 1, 100)
	var sent atomic.Int64
	addr := startRawAgent(t, func(ctx context.Context, _ int, send func([]byte) error) error {
		for ctx.Err() == nil {
			if err := send(msg); err != nil {
				return err
			}
			sent.Add(1)
		}
		return nil
	})
	s := &sink{nodes: map[string]int{}}
	var logs logBuffer
	start := time.Now()
	p := runPool(t, s, &logs, Options{Static: []string{addr, good.Addr()}, MaxMessageRate: rate})
	testutil.Eventually(t, 30*time.Second, "throttling", func() bool { return p.Stats().Throttled > 0 })
	before := s.count("good")
	good.Publish(scalertest.Device("GPU-1", 2, "default/p"))
	testutil.Eventually(t, 30*time.Second, "the good agent's next snapshot", func() bool { return s.count("good") > before })
	time.Sleep(500 * time.Millisecond) // let the storm run on a little
	got := s.count("storm")
	// A bound that holds however slow the machine: the burst plus the
	// rate over the time since the pool started, read after the count.
	bound := rate + rate*time.Since(start).Seconds()
	if float64(got) > bound {
		t.Errorf("took %d storm messages, over the bound %.0f of %d a second", got, bound, rate)
	}
	if got == 0 {
		t.Error("took no storm message: the agent is throttled, not refused")
	}
	t.Logf("the storm agent sent %d messages; the scaler took %d", sent.Load(), got)
	if n := logs.count("agent sends faster than the scaler reads"); n != 1 {
		t.Errorf("throttling logged %d times, want once", n)
	}
}

// A new request reopens the stream on the same connection: answered
// under it, the old stream closed, no failure counted, and the agent
// logged as connected once, not once per request.
func TestResubscriptionReopensTheStreamOnly(t *testing.T) {
	a, err := scalertest.StartAgent("n", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	a.Publish(scalertest.Device("GPU-1", 1, "default/p"))
	var logs logBuffer
	p := runPool(t, &sink{nodes: map[string]int{}}, &logs, Options{Static: []string{a.Addr()}})
	p.SetRequest(&telemetryv1.WatchRequest{Namespace: "ns1"}, 1)
	// Connected: from now on a request is answered only when the agent
	// answers it (with no agent live, at once).
	testutil.Eventually(t, 10*time.Second, "the connection", func() bool { return p.Stats().Connected == 1 })
	for gen := uint64(2); gen <= 3; gen++ {
		p.SetRequest(&telemetryv1.WatchRequest{Namespace: fmt.Sprint("ns", gen)}, gen)
		testutil.Eventually(t, 10*time.Second, fmt.Sprint("the answer to request ", gen), func() bool { return p.Answered() == gen })
	}
	if n := len(a.Requests()); n != 3 {
		t.Errorf("%d Watch calls, want one per request", n)
	}
	testutil.Eventually(t, 10*time.Second, "the old streams closed", func() bool { return a.Subscribers() == 1 })
	if reqs := a.Requests(); reqs[len(reqs)-1].GetNamespace() != "ns3" {
		t.Errorf("the open stream asks %v, want the latest request", reqs[len(reqs)-1])
	}
	if st := p.Stats(); st.Failures != 0 || st.Resubscriptions != 2 || st.Connected != 1 {
		t.Errorf("stats %+v, want no failure, 2 re-subscriptions, 1 connected; logs:\n%s", st, logs.b.String())
	}
	if n := logs.count("agent connected"); n != 1 {
		t.Errorf("%q logged %d times, want once:\n%s", "agent connected", n, logs.b.String())
	}
}

// openingClient is an agent whose Watch never opens: it returns when its
// context ends, as gRPC's does while the connection is still being made.
type openingClient struct {
	telemetryv1.TelemetryClient
	called chan struct{}
}

func (c *openingClient) Watch(ctx context.Context, _ *telemetryv1.WatchRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[telemetryv1.NodeSnapshot], error) {
	close(c.called)
	<-ctx.Done()
	return nil, ctx.Err()
}

// A request changed while a stream is opening ends it as changed, to be
// reopened at once, not as a failure to back off from.
func TestRequestChangedWhileOpening(t *testing.T) {
	p, err := New(&sink{nodes: map[string]int{}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.SetRequest(&telemetryv1.WatchRequest{Namespace: "a"}, 1)
	c := &openingClient{called: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := p.watch(context.Background(), c, &subState{log: p.log, agent: &agentState{}})
		done <- err
	}()
	<-c.called
	p.SetRequest(&telemetryv1.WatchRequest{Namespace: "b"}, 2)
	if err := <-done; !errors.Is(err, errRequestChanged) {
		t.Errorf("watch ended with %v, want %v", err, errRequestChanged)
	}
}
