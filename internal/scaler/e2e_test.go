package scaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// harness is the real scaler (flags, Config, Run) on loopback, and KEDA's
// own generated client talking to it.
type harness struct {
	client  externalscaler.ExternalScalerClient
	webAddr string
	stop    func() error
}

func startScaler(t testing.TB, resolver *fakeResolver, args ...string) *harness {
	t.Helper()
	cfg, err := ParseFlags(append([]string{"--stale-after=600ms", "--agents.backoff-max=1s", "--agents.dns-refresh=1s", "--log.level=debug"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	grpcLn, _ := net.Listen("tcp", "127.0.0.1:0")
	webLn, _ := net.Listen("tcp", "127.0.0.1:0")
	l := Listeners{GRPC: grpcLn, Web: webLn}
	if resolver != nil {
		l.Resolver = resolver
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { done <- Run(ctx, cfg, log, l) }()
	// KEDA's way: grpc.NewClient on scalerAddress, round robin, insecure.
	conn, err := grpc.NewClient(grpcLn.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var runErr error
	h := &harness{client: externalscaler.NewExternalScalerClient(conn), webAddr: webLn.Addr().String()}
	h.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				runErr = errors.New("Run did not return within 10s of cancel")
			}
			conn.Close()
		})
		return runErr
	}
	t.Cleanup(func() { h.stop() })
	return h
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ref is the ScaledObjectRef KEDA sends: the trigger's metadata as written,
// scalerAddress included.
func ref(kv ...string) *externalscaler.ScaledObjectRef {
	m := map[string]string{"scalerAddress": "gpu-scaler.gpu-agent:9500"}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &externalscaler.ScaledObjectRef{Name: "so", Namespace: "default", ScalerMetadata: m}
}

// waitMetric polls GetMetrics until it returns want (or fails the test).
func waitMetric(t *testing.T, h *harness, r *externalscaler.ScaledObjectRef, want float64) {
	t.Helper()
	err := testutil.Poll(t.Context(), 10*time.Second, func() (bool, error) {
		resp, err := h.client.GetMetrics(t.Context(), &externalscaler.GetMetricsRequest{ScaledObjectRef: r})
		if err == nil && math.Abs(resp.MetricValues[0].MetricValueFloat-want) < 1e-9 {
			return true, nil
		}
		return false, errors.New(strings.TrimSpace(resp.String() + " " + errString(err)))
	})
	if err != nil {
		t.Fatalf("GetMetrics never returned %g: %v", want, err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestEndToEnd(t *testing.T) {
	// Three nodes, two GPUs each; inference-<n> pods, and a WebRTC pod on
	// n2's second GPU.
	var fleet []*scalertest.Agent
	var addrs []string
	for i := 1; i <= 3; i++ {
		a, err := scalertest.StartAgent("n"+strconv.Itoa(i), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Stop)
		fleet = append(fleet, a)
		addrs = append(addrs, a.Addr())
	}
	var loadMu sync.Mutex
	load := map[string]float64{"n1": 40, "n2": 50, "n3": 60}
	publish := func(a *scalertest.Agent) time.Time {
		loadMu.Lock()
		l := load[a.Node]
		loadMu.Unlock()
		return a.Publish(
			scalertest.Device("GPU-"+a.Node+"-0", l, "default/inference-"+a.Node),
			scalertest.Device("GPU-"+a.Node+"-1", 10, "media/webrtc-"+a.Node))
	}
	for _, a := range fleet {
		publish(a)
	}
	h := startScaler(t, nil, "--agents="+strings.Join(addrs, ","))
	ctx := context.Background()

	inference := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "activationTarget", "55", "aggregation", "max")
	spec, err := h.client.GetMetricSpec(ctx, inference)
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.MetricSpecs[0]
	if ms.TargetSizeFloat != 70 || ms.TargetSize != 70 || !strings.HasPrefix(ms.MetricName, "gpu-gpu-util-max-default-inference") {
		t.Errorf("GetMetricSpec = %v", spec)
	}
	waitMetric(t, h, inference, 60)
	resp, _ := h.client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: inference, MetricName: ms.MetricName})
	if v := resp.MetricValues[0]; v.MetricName != ms.MetricName || v.MetricValue != 60 {
		t.Errorf("GetMetrics = %v, want name %s, int value 60", v, ms.MetricName)
	}
	if act, err := h.client.IsActive(ctx, inference); err != nil || !act.Result {
		t.Errorf("IsActive = %v, %v; want true (60 > 55)", act, err)
	}
	avg := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70")
	waitMetric(t, h, avg, 50)

	// StreamIsActive: the current state first, then transitions only.
	webrtc := ref("metric", "enc_util", "namespace", "media", "podPattern", "webrtc-.*", "target", "80", "activationTarget", "50", "aggregation", "max")
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := h.client.StreamIsActive(sctx, webrtc)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *externalscaler.IsActiveResponse, 16)
	streamErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				streamErr <- err
				return
			}
			msgs <- m
		}
	}()
	expect := func(want bool) {
		t.Helper()
		select {
		case m := <-msgs:
			if m.Result != want {
				t.Fatalf("StreamIsActive sent %v, want %v", m.Result, want)
			}
		case err := <-streamErr:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatalf("no StreamIsActive message %v within 5s", want)
		}
	}
	quiet := func() {
		t.Helper()
		select {
		case m := <-msgs:
			t.Fatalf("StreamIsActive sent %v without a transition", m.Result)
		case <-time.After(200 * time.Millisecond):
		}
	}
	expect(false)
	for range 3 { // more snapshots below the mark: nothing
		publish(fleet[1])
	}
	quiet()
	stepped := fleet[1].Publish(
		scalertest.Device("GPU-n2-0", 50, "default/inference-n2"),
		scalertest.Device("GPU-n2-1", 75, "media/webrtc-n2"))
	expect(true)
	t.Logf("StreamIsActive true %s after the step", time.Since(stepped))
	for range 3 {
		fleet[1].Publish(scalertest.Device("GPU-n2-1", 90, "media/webrtc-n2"))
	}
	quiet()
	publish(fleet[1])
	expect(false)

	// Kill n3: after the stale timeout its pod leaves the aggregate; the
	// answer is the other nodes' (max 50), not an error.
	addr3 := fleet[2].Addr()
	fleet[2].Publish(scalertest.Device("GPU-n3-0", 62, "default/inference-n3"))
	waitMetric(t, h, inference, 62) // the scaler has n3's last snapshot
	fleet[2].Stop()
	stopAt := time.Now()
	every(t, 100*time.Millisecond, func() { // n1 and n2 keep reporting
		publish(fleet[0])
		publish(fleet[1])
	})
	waitMetric(t, h, inference, 50)
	if d := time.Since(stopAt); d < 500*time.Millisecond {
		t.Errorf("n3 left the aggregate %s after its last snapshot, before --stale-after (600ms)", d)
	}
	// Only n3 held inference-n3: its node is silent, so Unavailable.
	_, err = h.client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref("metric", "gpu_util", "podPattern", "inference-n3", "target", "1")})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("pod only on a dead node: err = %v, want Unavailable", err)
	}
	// Restart n3 (new agent_start) where it was: the scaler reconnects.
	n3, err := scalertest.StartAgent("n3", addr3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n3.Stop)
	loadMu.Lock()
	load["n3"] = 65
	loadMu.Unlock()
	publish(n3)
	restarted := time.Now()
	every(t, 100*time.Millisecond, func() { publish(n3) })
	waitMetric(t, h, inference, 65)
	t.Logf("n3 back in the aggregate %s after its restart", time.Since(restarted))

	// No pod matches, agents healthy: a real 0.
	waitMetric(t, h, ref("metric", "gpu_util", "podPattern", "training-.*", "target", "70"), 0)

	// Bad metadata: InvalidArgument naming the key, on every method.
	bad := ref("metric", "gpu_util", "podPattern", "inference-(", "target", "70")
	_, err1 := h.client.GetMetricSpec(ctx, bad)
	_, err2 := h.client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: bad})
	_, err3 := h.client.IsActive(ctx, bad)
	s4, _ := h.client.StreamIsActive(ctx, bad)
	_, err4 := s4.Recv()
	for _, err := range []error{err1, err2, err3, err4} {
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "podPattern") {
			t.Errorf("bad podPattern: %v, want InvalidArgument naming podPattern", err)
		}
	}

	// The scaler's own metrics.
	body := get(t, "http://"+h.webAddr+"/metrics")
	for _, want := range []string{"gpu_scaler_agents 3", "gpu_scaler_agents_connected 3", `gpu_scaler_nodes{state="fresh"} 3`, "gpu_scaler_get_metrics_duration_seconds_count"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if get(t, "http://"+h.webAddr+"/healthz") != "ok\n" {
		t.Error("/healthz not ok")
	}

	// Shutdown: the open stream ends cleanly (EOF), so KEDA retries in 2 s
	// instead of backing off.
	if err := h.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	select {
	case err := <-streamErr:
		if !errors.Is(err, io.EOF) {
			t.Errorf("stream ended with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("stream still open after shutdown")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// fakeResolver answers LookupHost from a settable list.
type fakeResolver struct {
	mu   sync.Mutex
	ips  []string
	err  error
	asks int
}

func (r *fakeResolver) set(err error, ips ...string) {
	r.mu.Lock()
	r.ips, r.err = ips, err
	r.mu.Unlock()
}

func (r *fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asks++
	if host != "gpu-agent-stream.gpu-agent.svc" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return r.ips, r.err
}

func TestDNSDiscovery(t *testing.T) {
	// Agents on 127.0.0.1-3 share one port, as pods behind a headless
	// Service do.
	first, err := scalertest.StartAgent("d1", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Stop)
	_, port, _ := net.SplitHostPort(first.Addr())
	fleet := []*scalertest.Agent{first}
	for i := 2; i <= 3; i++ {
		a, err := scalertest.StartAgent("d"+strconv.Itoa(i), "127.0.0."+strconv.Itoa(i)+":"+port)
		if err != nil {
			t.Skipf("loopback alias 127.0.0.%d: %v", i, err)
		}
		t.Cleanup(a.Stop)
		fleet = append(fleet, a)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			for i, a := range fleet {
				a.Publish(scalertest.Device("GPU-"+a.Node, float64(10*(i+1)), "default/inference-"+a.Node))
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	r := &fakeResolver{}
	r.set(nil, "127.0.0.1", "127.0.0.2")
	h := startScaler(t, r, "--agents.dns=gpu-agent-stream.gpu-agent.svc:"+port)
	sum := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "aggregation", "sum")
	waitMetric(t, h, sum, 30) // d1 + d2

	r.set(nil, "127.0.0.1", "127.0.0.2", "127.0.0.3") // scaled out
	waitMetric(t, h, sum, 60)

	// A DNS failure keeps the agents we have.
	r.set(errors.New("SERVFAIL"))
	time.Sleep(1500 * time.Millisecond)
	waitMetric(t, h, sum, 60)

	// 127.0.0.1 vanishes: its stream is dropped, its node goes stale.
	r.set(nil, "127.0.0.2", "127.0.0.3")
	waitMetric(t, h, sum, 50)
	_ = testutil.Poll(t.Context(), 5*time.Second, func() (bool, error) { return fleet[0].Subscribers() == 0, nil })
	if n := fleet[0].Subscribers(); n != 0 {
		t.Errorf("vanished agent still has %d subscribers", n)
	}
	// No record at all (a Service without endpoints): nothing to ask.
	r.set(&net.DNSError{Err: "no such host", IsNotFound: true})
	if err := testutil.Poll(t.Context(), 5*time.Second, func() (bool, error) {
		_, err := h.client.GetMetrics(t.Context(), &externalscaler.GetMetricsRequest{ScaledObjectRef: sum})
		if status.Code(err) == codes.Unavailable {
			return true, nil
		}
		return false, fmt.Errorf("GetMetrics: %v", err)
	}); err != nil {
		t.Errorf("no agent left: GetMetrics never Unavailable: %v", err)
	}
}

// every calls f every period until the test ends, and waits for the last
// call to return.
func every(t *testing.T, period time.Duration, f func()) {
	tick := time.NewTicker(period)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				f()
			}
		}
	})
	t.Cleanup(func() {
		tick.Stop()
		close(done)
		wg.Wait()
	})
}
