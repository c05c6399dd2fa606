package podresources_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

const testPeriod = 20 * time.Millisecond

func newClient(t *testing.T, path string, opts podresources.Options) *podresources.Client {
	t.Helper()
	if opts.Period == 0 {
		opts.Period = testPeriod
	}
	c, err := podresources.NewClient(path, podresources.NewResolver(testInventory()), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func startKubelet(t *testing.T, path string, pods []*podresourcesv1.PodResources) *fakekubelet.Server {
	t.Helper()
	kl, err := fakekubelet.Start(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kl.Stop)
	kl.SetPods(pods)
	return kl
}

// run starts c.Run and returns a stop function that cancels it and checks
// that it returns nil.
func run(t *testing.T, c *podresources.Client) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run returned %v after cancel, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestNewClientErrors(t *testing.T) {
	r := podresources.NewResolver(nil)
	for name, f := range map[string]func() (*podresources.Client, error){
		"empty path": func() (*podresources.Client, error) { return podresources.NewClient("", r, podresources.Options{}) },
		"nil resolver": func() (*podresources.Client, error) {
			return podresources.NewClient("/x.sock", nil, podresources.Options{})
		},
		"negative period": func() (*podresources.Client, error) {
			return podresources.NewClient("/x.sock", r, podresources.Options{Period: -1})
		},
		"negative timeout": func() (*podresources.Client, error) {
			return podresources.NewClient("/x.sock", r, podresources.Options{Timeout: -1})
		},
		"bad resource name": func() (*podresources.Client, error) {
			return podresources.NewClient("/x.sock", r, podresources.Options{ResourceNames: []string{"t4"}})
		},
	} {
		if c, err := f(); err == nil {
			c.Close()
			t.Errorf("%s: NewClient succeeded, want error", name)
		}
	}
}

// TestClientKubeletRestart walks a client through a mixed node, a kubelet
// going down (stale but still serving the last map) and coming back with
// other pods on a re-created socket.
func TestClientKubeletRestart(t *testing.T) {
	path := socketPath(t)
	kl := startKubelet(t, path, mixedNode())
	c := newClient(t, path, podresources.Options{})
	if a := c.Assignments(); a == nil || a.Len() != 0 {
		t.Fatalf("Assignments() before first poll = %v, want empty non-nil", a)
	}
	if st := c.Status(); st.Up || st.Stale || !st.LastSuccess.IsZero() {
		t.Fatalf("Status() before first poll = %+v, want zero", st)
	}
	run(t, c)

	testutil.Eventually(t, 5*time.Second, "first success", func() bool { return c.Status().Up })
	wantMixed(t, c.Assignments())
	if st := c.Status(); st.Stale || st.LastError != nil || st.LastSuccess.IsZero() || st.Refreshes == 0 {
		t.Fatalf("Status() when up = %+v", st)
	}
	good := c.Assignments()

	kl.Stop()
	testutil.Eventually(t, 5*time.Second, "client to notice the kubelet is down", func() bool { return !c.Status().Up })
	st := c.Status()
	if !st.Stale || st.LastError == nil || st.Failures == 0 {
		t.Fatalf("Status() when down = %+v, want stale with an error", st)
	}
	if c.Assignments() != good {
		t.Fatal("Assignments() changed while the kubelet was down, want the last good map")
	}
	wantMixed(t, c.Assignments())
	// Stay down for several polls so that gRPC's reconnect backoff grows.
	failures := st.Failures
	testutil.Eventually(t, 5*time.Second, "more failed polls", func() bool { return c.Status().Failures >= failures+5 })
	if c.Assignments() != good {
		t.Fatal("Assignments() changed while the kubelet was down, want the last good map")
	}

	// The kubelet comes back with encoder-b gone and a new pod on gpu2.
	pods := slices.Delete(mixedNode(), 1, 2)
	pods = append(pods, fakekubelet.Pod("ml", "new", fakekubelet.Container("c", fakekubelet.Devices("nvidia.com/gpu", gpu2))))
	kl.SetPods(pods)
	failures = c.Status().Failures
	down := time.Now()
	if err := kl.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "client to pick up the restarted kubelet", func() bool { return c.Status().Up })
	// gRPC's default reconnect backoff starts at 1s and grows to 120s; the
	// client caps it at the period, so recovery takes a few polls. Counted
	// in polls, not seconds: a loaded machine polls less often, never more,
	// while an uncapped backoff (1s at least) would fail some 50 polls.
	if n := c.Status().Failures - failures; n > 10 {
		t.Errorf("%d polls failed after the kubelet came back, want a few", n)
	}
	t.Logf("recovered in %v", time.Since(down))
	a := c.Assignments()
	if got := a.Pods(gpu2); len(got) != 1 || got[0].Name != "new" {
		t.Errorf("Pods(gpu2) after restart = %v, want ml/new", got)
	}
	if got := a.Pods(gpu1); len(got) != 1 || got[0].Name != "encoder-a" {
		t.Errorf("Pods(gpu1) after restart = %v, want only encoder-a", got)
	}
	if st := c.Status(); st.Stale || st.LastError != nil {
		t.Errorf("Status() after recovery = %+v", st)
	}
}

func TestClientSocketMissingAtStart(t *testing.T) {
	path := socketPath(t)
	c := newClient(t, path, podresources.Options{})
	run(t, c)
	testutil.Eventually(t, 5*time.Second, "two failed polls", func() bool { return c.Status().Failures >= 2 })
	if st := c.Status(); st.Up || !st.Stale || st.LastError == nil || !st.LastSuccess.IsZero() {
		t.Fatalf("Status() with no socket = %+v", st)
	}
	if a := c.Assignments(); a == nil || a.Len() != 0 {
		t.Fatalf("Assignments() never good = %v, want empty non-nil", a)
	}
	startKubelet(t, path, mixedNode())
	testutil.Eventually(t, 5*time.Second, "client to find the new socket", func() bool { return c.Status().Up })
	wantMixed(t, c.Assignments())
}

func TestClientSetErrorGoesStale(t *testing.T) {
	path := socketPath(t)
	kl := startKubelet(t, path, mixedNode())
	c := newClient(t, path, podresources.Options{})
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	kl.SetError(status.Error(codes.Unavailable, "kubelet is busy"))
	err := c.Refresh(ctx)
	if status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Fatalf("Refresh() = %v, want a wrapped Unavailable", err)
	}
	st := c.Status()
	if st.Up || !st.Stale || !errors.Is(st.LastError, err) || st.Refreshes != 1 || st.Failures != 1 {
		t.Fatalf("Status() = %+v", st)
	}
	wantMixed(t, c.Assignments())

	kl.SetError(nil)
	kl.SetPods(nil)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a := c.Assignments(); a.Len() != 0 || !c.Status().Up {
		t.Fatalf("after recovery with no pods: len %d, status %+v", a.Len(), c.Status())
	}
}

func TestClientTimeout(t *testing.T) {
	path := socketPath(t)
	kl := startKubelet(t, path, mixedNode())
	kl.SetDelay(time.Second)
	c := newClient(t, path, podresources.Options{Timeout: 50 * time.Millisecond})
	// The kubelet answers after a second: DeadlineExceeded is the
	// client's timeout, however long the machine took to get there.
	err := c.Refresh(context.Background())
	if status.Code(errors.Unwrap(err)) != codes.DeadlineExceeded {
		t.Fatalf("Refresh() = %v, want DeadlineExceeded", err)
	}
	if st := c.Status(); !st.Stale {
		t.Fatalf("Status() = %+v, want stale", st)
	}
}

func TestClientRefreshCancelledIsNotAFailure(t *testing.T) {
	path := socketPath(t)
	kl := startKubelet(t, path, mixedNode())
	kl.SetDelay(time.Second)
	c := newClient(t, path, podresources.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh() = %v, want the context's error", err)
	}
	if st := c.Status(); st.Failures != 0 || st.Stale {
		t.Fatalf("Status() = %+v: a cancelled call must not count as a kubelet failure", st)
	}
}

func TestClientGarbageOverTheWire(t *testing.T) {
	path := socketPath(t)
	startKubelet(t, path, []*podresourcesv1.PodResources{
		nil, // arrives as an empty pod
		fakekubelet.Pod("ns", "empty"),
		fakekubelet.Pod("ns", "bad", fakekubelet.Container("c",
			nil,
			fakekubelet.Devices("nvidia.com/gpu"),
			fakekubelet.Devices("nvidia.com/gpu", "GPU-", "nvidiaX", "MIG-GPU-x/1", "GPU-99999999-9999-4999-8999-999999999999"),
			fakekubelet.Devices("nvidia.com/gpu", gpu0))),
	})
	c := newClient(t, path, podresources.Options{})
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := c.Assignments()
	if a.Unresolved() != 4 || a.Len() != 1 || len(a.Pods(gpu0)) != 1 {
		t.Fatalf("unresolved %d, len %d, Pods(gpu0) %v; want 4, 1, [ns/bad/c]", a.Unresolved(), a.Len(), a.Pods(gpu0))
	}
}

// TestClientLogsOncePerStateChange checks that an unreachable kubelet is
// one warning, not one per poll, and that coming back is one info line.
func TestClientLogsOncePerStateChange(t *testing.T) {
	path := socketPath(t)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newClient(t, path, podresources.Options{Logger: log})
	ctx := context.Background()
	refresh := func(n int, wantErr bool) {
		t.Helper()
		for range n {
			if err := c.Refresh(ctx); (err != nil) != wantErr {
				t.Fatalf("Refresh() = %v, want error %v", err, wantErr)
			}
		}
	}
	const down, up = `level=WARN msg="kubelet pod-resources unavailable`, `level=INFO msg="kubelet pod-resources available"`

	refresh(5, true)
	if n := buf.count(down); n != 1 {
		t.Fatalf("5 failed polls logged %d warnings, want 1:\n%s", n, buf.String())
	}
	if n := buf.count("level=DEBUG"); n != 4 {
		t.Errorf("5 failed polls logged %d debug lines, want 4", n)
	}
	if n := buf.count("component=podresources", "socket="+path); n != 5 {
		t.Errorf("want every line tagged with component and socket:\n%s", buf.String())
	}

	kl := startKubelet(t, path, mixedNode())
	// gRPC may still be backing off from the failed dials (at most
	// maxReconnectBackoff): poll until the kubelet answers, still in the
	// "down" state, then every poll must succeed.
	testutil.Eventually(t, 5*time.Second, "the kubelet's socket to answer", func() bool { return c.Refresh(ctx) == nil })
	refresh(2, false)
	if n := buf.count(up); n != 1 {
		t.Fatalf("3 good polls logged %d info lines, want 1:\n%s", n, buf.String())
	}

	kl.Stop()
	refresh(3, true)
	if n := buf.count(down); n != 2 {
		t.Fatalf("after a second outage: %d warnings, want 2:\n%s", n, buf.String())
	}
	if n := buf.count("level=WARN"); n != 2 {
		t.Fatalf("unexpected warnings:\n%s", buf.String())
	}
}

func TestClientLogsUnresolvedOnChange(t *testing.T) {
	path := socketPath(t)
	var buf syncBuffer
	c := newClient(t, path, podresources.Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	bad := []*podresourcesv1.PodResources{fakekubelet.Pod("ns", "p", fakekubelet.Container("c", fakekubelet.Devices("nvidia.com/gpu", "GPU-9")))}
	kl := startKubelet(t, path, bad)
	for range 3 {
		if err := c.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := buf.count("level=WARN", "match no gpu", "count=1", "GPU-9"); n != 1 {
		t.Fatalf("want one warning naming the unresolved id:\n%s", buf.String())
	}
	kl.SetPods(mixedNode())
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := buf.count("level=INFO", "all kubelet device ids match"); n != 1 {
		t.Fatalf("want one info line when ids resolve again:\n%s", buf.String())
	}
}

// TestClientRateLimit checks that neither Run nor extra Refresh calls push
// the kubelet past one List per Period.
func TestClientRateLimit(t *testing.T) {
	const period = 50 * time.Millisecond
	path := socketPath(t)
	kl := startKubelet(t, path, mixedNode())
	c := newClient(t, path, podresources.Options{Period: period})
	start := time.Now()
	stop := run(t, c)
	var wg sync.WaitGroup
	for range 3 { // impatient callers hammering Refresh
		wg.Go(func() {
			for time.Since(start) < 500*time.Millisecond {
				_ = c.Refresh(context.Background())
			}
		})
	}
	wg.Wait()
	stop()
	elapsed := time.Since(start)
	calls := kl.ListCalls()
	if limit := int(elapsed/period) + 1; calls > limit {
		t.Fatalf("%d List calls in %v, want at most %d (one per %v)", calls, elapsed, limit, period)
	}
	if calls < 3 {
		t.Fatalf("%d List calls in %v: the client stopped polling", calls, elapsed)
	}
}

func TestClientRunTwice(t *testing.T) {
	c := newClient(t, socketPath(t), podresources.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run on a cancelled context = %v, want nil", err)
	}
	if err := c.Run(ctx); err == nil {
		t.Fatal("second Run succeeded, want error")
	}
}

// MIG instances created after start: a device ID unknown to the first
// inventory resolves once the resolver is replaced, on the next poll.
func TestClientSetResolver(t *testing.T) {
	const migNew = "MIG-99999999-9999-9999-9999-999999999999"
	path := socketPath(t)
	startKubelet(t, path, []*podresourcesv1.PodResources{
		fakekubelet.Pod("ml", "new-mig", fakekubelet.Container("c", fakekubelet.Devices("nvidia.com/mig-1g.5gb", migNew))),
	})
	c := newClient(t, path, podresources.Options{})
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a := c.Assignments(); a.Unresolved() != 1 || len(a.Pods(migNew)) != 0 {
		t.Fatalf("before: unresolved %d, pods %v; want the new MIG device unknown", a.Unresolved(), a.Pods(migNew))
	}
	inv := testInventory()
	inv[2].MIG = append(inv[2].MIG, podresources.MIGDevice{UUID: migNew, GI: 9, CI: 0})
	c.SetResolver(podresources.NewResolver(inv))
	time.Sleep(testPeriod) // Refresh keeps polls one Period apart
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a := c.Assignments(); a.Unresolved() != 0 || len(a.Pods(migNew)) != 1 {
		t.Errorf("after SetResolver: unresolved %d, pods %v; want the pod on the new MIG device", a.Unresolved(), a.Pods(migNew))
	}
}

// TestClientGPUResourcesAndClaims runs a node with NICs next to GPUs, a
// renamed resource and DRA claims through the real gRPC server: what goes
// over the wire (dynamic_resources included) is what gets attributed.
func TestClientGPUResourcesAndClaims(t *testing.T) {
	path := socketPath(t)
	ctr, pod, dev := fakekubelet.Container, fakekubelet.Pod, fakekubelet.Devices
	pods := append(draNode(),
		pod("net", "sfu", ctr("c", dev("nvidia.com/hostdev", "0000:3b:00.1"), dev("nvidia.com/t4", gpu3))))
	startKubelet(t, path, pods)
	c := newClient(t, path, podresources.Options{ResourceNames: []string{"nvidia.com/t4"}})
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := c.Assignments()
	if got, want := a.Pods(gpu3), []attribution.Pod{{Namespace: "net", Name: "sfu", Container: "c"}}; !slices.Equal(got, want) {
		t.Errorf("Pods(gpu3) = %v, want %v (nvidia.com/t4 given in Options.ResourceNames)", got, want)
	}
	if a.Unresolved() != 1 {
		t.Errorf("Unresolved() = %d, want 1: only the DRA device gpu-9; hostdev is no GPU", a.Unresolved())
	}
	if a.Len() != 4 {
		t.Errorf("Len() = %d, want 4", a.Len())
	}
	for uuid, pod := range map[string]string{gpu0: "whole", migA: "mig", gpu1: "both"} {
		if got := a.Pods(uuid); len(got) == 0 || got[0].Name != pod {
			t.Errorf("Pods(%s) = %v, want pod %s", uuid, got, pod)
		}
	}
}

// TestClientMaxStale takes the kubelet down for longer than MaxStale on a
// fake clock: the last good map is kept, then dropped with one log line
// and Status().Expired, and comes back with the kubelet.
func TestClientMaxStale(t *testing.T) {
	path := socketPath(t)
	var buf syncBuffer
	clock := newFakeClock()
	c := newClient(t, path, podresources.Options{
		MaxStale: time.Minute, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	kl := startKubelet(t, path, mixedNode())
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	kl.Stop()
	refreshFails := func(n int) {
		t.Helper()
		for range n {
			if err := c.Refresh(ctx); err == nil {
				t.Fatal("Refresh succeeded with the kubelet down")
			}
		}
	}

	clock.Advance(time.Minute - time.Second)
	refreshFails(2)
	if st := c.Status(); !st.Stale || st.Expired {
		t.Fatalf("within MaxStale: %+v, want stale, not expired", st)
	}
	wantMixed(t, c.Assignments()) // the last good map, still

	clock.Advance(time.Second)
	refreshFails(3)
	if st := c.Status(); !st.Stale || !st.Expired {
		t.Fatalf("after MaxStale: %+v, want stale and expired", st)
	}
	if a := c.Assignments(); a.Len() != 0 || a.Pods(gpu0) != nil {
		t.Fatalf("after MaxStale: %d devices attributed, want none", a.Len())
	}
	const expired = `level=WARN msg="kubelet pod map expired`
	if n := buf.count(expired, "max_stale=1m0s", "down_for=1m0s"); n != 1 {
		t.Fatalf("3 polls past MaxStale logged %d expiry warnings, want 1:\n%s", n, buf.String())
	}

	if err := kl.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the kubelet back", func() bool { return c.Refresh(ctx) == nil })
	if st := c.Status(); !st.Up || st.Stale || st.Expired {
		t.Fatalf("kubelet back: %+v, want up, neither stale nor expired", st)
	}
	wantMixed(t, c.Assignments())
	if n := buf.count(`msg="kubelet pod-resources available"`, "pod_labels_restored=true"); n != 1 {
		t.Fatalf("want one line saying the labels are back:\n%s", buf.String())
	}

	// A second outage counts from the new success, not the first one.
	kl.Stop()
	clock.Advance(30 * time.Second)
	refreshFails(1)
	if st := c.Status(); st.Expired || c.Assignments().Len() == 0 {
		t.Fatalf("30s into a second outage: %+v, want the map kept", st)
	}
}

func TestClientMaxStaleNever(t *testing.T) {
	path := socketPath(t)
	clock := newFakeClock()
	c := newClient(t, path, podresources.Options{MaxStale: podresources.NoMaxStale, Now: clock.Now})
	kl := startKubelet(t, path, mixedNode())
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	kl.Stop()
	clock.Advance(24 * time.Hour)
	if err := c.Refresh(context.Background()); err == nil {
		t.Fatal("Refresh succeeded with the kubelet down")
	}
	if st := c.Status(); !st.Stale || st.Expired {
		t.Fatalf("NoMaxStale: %+v, want stale, never expired", st)
	}
	wantMixed(t, c.Assignments())
}

// TestClientMaxStaleBeforeFirstSuccess: a kubelet that never answered
// counts from NewClient, so the state says so even with nothing to drop.
func TestClientMaxStaleBeforeFirstSuccess(t *testing.T) {
	clock := newFakeClock()
	c := newClient(t, socketPath(t), podresources.Options{MaxStale: time.Minute, Now: clock.Now})
	if err := c.Refresh(context.Background()); err == nil || c.Status().Expired {
		t.Fatalf("first failure: %v, %+v; want an error, not expired", err, c.Status())
	}
	clock.Advance(time.Minute)
	if err := c.Refresh(context.Background()); err == nil || !c.Status().Expired {
		t.Fatalf("a minute later: %v, %+v; want an error, expired", err, c.Status())
	}
}
