package agents

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
	s.mu.Lock()
	s.nodes[n.Node]++
	s.mu.Unlock()
	return nil
}

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
