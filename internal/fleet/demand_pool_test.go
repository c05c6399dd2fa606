package fleet_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
	"github.com/gpu-telemetry/agent/internal/fleet/keda"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// A new trigger answers Unavailable, never 0, until every connected agent
// has answered the re-subscription that serves it; then the right value.
// The fake agents are older than every filter: they ignore the request
// and send every pod and field at every tick, and the triggers filter
// for themselves (a pod of another namespace, another pattern's pod).
func TestNewTriggerUnavailableUntilEveryAgentAnswers(t *testing.T) {
	var fakes []*scalertest.Agent
	var addrs []string
	for _, n := range []string{"n1", "n2"} {
		a, err := scalertest.StartAgent(n, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Stop)
		fakes, addrs = append(fakes, a), append(addrs, a.Addr())
	}
	publish := func() {
		fakes[0].Publish(scalertest.Device("GPU-1", 30, "default/inference-0"), scalertest.Device("GPU-2", 95, "other/inference-9"))
		fakes[1].Publish(scalertest.Device("GPU-3", 50, "default/inference-1"), scalertest.Device("GPU-4", 90, "default/batch-0"))
	}
	publish()

	store := fleet.NewStore(fleet.Options{MaxWindow: time.Minute})
	pool := runDemandPool(t, store, agents.Options{Static: addrs, IdleTimeout: time.Minute})
	ctx := t.Context()
	testutil.Eventually(t, 10*time.Second, "both agents' first snapshots", func() bool {
		fresh, _ := store.NodeCounts()
		return fresh == 2 && pool.Answered() == 1
	})

	// n2 will be slow to answer the new subscription.
	release := fakes[1].Hold()
	defer release()
	ks := keda.New(store, fleet.NewQueryCache(time.Minute, 16, store.Retain), keda.Options{})
	req := &externalscaler.GetMetricsRequest{ScaledObjectRef: &externalscaler.ScaledObjectRef{Name: "so", Namespace: "default",
		ScalerMetadata: map[string]string{"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "sum", "target": "10"}}}
	if _, err := ks.GetMetrics(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("a new trigger: %v, want Unavailable", err)
	}
	testutil.Eventually(t, 10*time.Second, "n1's answer to the new subscription", func() bool {
		// Both reopened; n2's stream is held, so the one connected is n1's.
		return len(fakes[0].Requests()) == 2 && len(fakes[1].Requests()) == 2 && pool.Stats().Connected == 1
	})
	publish() // n1 answered long since; n2 still holds
	if _, err := ks.GetMetrics(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("n1 answered, n2 not: %v, want Unavailable", err)
	}
	if _, pending := store.LiveTriggers(); pending != 1 {
		t.Errorf("%d pending triggers, want 1", pending)
	}
	rs := fakes[1].Requests()
	if len(rs) != 2 || len(rs[1].GetPodFilter().GetSelectors()) != 1 || rs[1].GetPodFilter().GetSelectors()[0].GetPodPattern() != "inference-.*" ||
		rs[1].GetPodPattern() != "(?:inference-.*)" || rs[1].GetDeviceFields() == nil {
		t.Fatalf("n2's requests: %v", rs)
	}
	release()
	var value float64
	err := testutil.Poll(ctx, 10*time.Second, func() (bool, error) {
		m, err := ks.GetMetrics(ctx, req)
		if status.Code(err) == codes.Unavailable {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		value = m.MetricValues[0].MetricValueFloat
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if value != 30+50 {
		t.Errorf("sum %v, want 80: inference-0 and inference-1, not another namespace's pod nor batch-0", value)
	}
	if pool.Stats().Resubscriptions != 1 {
		t.Errorf("%d re-subscriptions, want 1", pool.Stats().Resubscriptions)
	}
}

// A failed agent is not waited on: a trigger new while one agent is
// down is served once the others answer.
func TestDeadAgentIsNotWaitedOn(t *testing.T) {
	a, err := scalertest.StartAgent("n1", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	b, err := scalertest.StartAgent("n2", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.Publish(scalertest.Device("GPU-1", 30, "default/inference-0"))
	b.Publish(scalertest.Device("GPU-2", 50, "default/inference-1"))
	store := fleet.NewStore(fleet.Options{MaxWindow: time.Minute})
	pool := runDemandPool(t, store, agents.Options{Static: []string{a.Addr(), b.Addr()}, BackoffBase: time.Minute, BackoffMax: time.Minute})
	ctx := t.Context()
	testutil.Eventually(t, 10*time.Second, "both agents", func() bool { return pool.Stats().Connected == 2 })
	b.Stop()
	testutil.Eventually(t, 10*time.Second, "n2's failure", func() bool { return pool.Stats().Connected == 1 })
	q, err := fleet.ParseMetadata(map[string]string{"metric": "gpu_util", "aggregation": "sum", "target": "1"}, "default", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	err = testutil.Poll(ctx, 10*time.Second, func() (bool, error) {
		_, err := store.Answer(q)
		return !errors.Is(err, fleet.ErrPending), nil
	})
	if err != nil {
		t.Fatalf("still pending with the live agent answered: %v", err)
	}
}

// runDemandPool runs an agent pool over opts (insecure dialling) feeding
// store, re-subscribed by the store's demand as cmd/scaler wires them,
// until the test ends.
func runDemandPool(t *testing.T, store *fleet.Store, opts agents.Options) *agents.Pool {
	t.Helper()
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	pool, err := agents.New(store, opts)
	if err != nil {
		t.Fatal(err)
	}
	store.SetAnswered(pool.Answered)
	pool.SetRequest(store.Subscription())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = pool.Run(ctx) }()
	go func() {
		defer wg.Done()
		store.RunDemand(ctx, fleet.DemandOptions{Delay: 10 * time.Millisecond}, pool.SetRequest)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return pool
}
