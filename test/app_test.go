package test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
)

// latencyBuckets are the test app's histogram bounds, in seconds.
var latencyBuckets = []float64{0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6}

// latencyApp is a service of the node with its own /metrics: a request
// latency histogram observed rate times a second around a mean that
// steps at run time (uniform in [0.5, 1.5] x mean, so that observations
// spread within and across buckets).
type latencyApp struct {
	addr string
	mean atomic.Uint64 // float64 bits, seconds
}

func startLatencyApp(t *testing.T, rate int, mean time.Duration) *latencyApp {
	t.Helper()
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "app_request_latency_seconds", Help: "Request latency.", Buckets: latencyBuckets})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests."})
	reg.MustRegister(h, c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a := &latencyApp{addr: ln.Addr().String()}
	a.set(mean)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); srv.Close() })
	go func() {
		r := rand.New(rand.NewPCG(1, 2))
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				h.Observe(math.Float64frombits(a.mean.Load()) * (0.5 + r.Float64()))
				c.Inc()
			}
		}
	}()
	return a
}

func (a *latencyApp) set(mean time.Duration) { a.mean.Store(math.Float64bits(mean.Seconds())) }

// appPod is the fake API server's pod of the app: on the agent's node,
// Running at 127.0.0.1, opted in by annotation.
func appPod(addr string) corev1.Pod {
	_, port, _ := net.SplitHostPort(addr)
	p := fakeapi.Pod("golden-node", "media", "sfu-0", "5f0c2a3e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", "sfu=0000000000000000000000000000000000000000000000000000000000000001")
	p.Status.PodIP = "127.0.0.1"
	p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: mustAtoi(port)}}
	p.Annotations = map[string]string{
		app.AnnotationScrape:   "true",
		app.AnnotationPort:     "metrics",
		app.AnnotationFamilies: "app_.*",
		app.AnnotationInterval: "250ms",
	}
	return p
}

func mustAtoi(s string) int32 {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return int32(n)
}

// bucketOf returns the bounds of the bucket v falls in.
func bucketOf(v float64, bounds []float64) (lo, hi float64) {
	lo = 0
	for _, b := range bounds {
		if v <= b {
			return lo, b
		}
		lo = b
	}
	return lo, math.Inf(1)
}

// An app's latency histogram reaches KEDA's client through the real agent
// (pod watch over a fake API server, app scraping, the stream) and the
// real scaler, and its p95 equals what a real Prometheus scraping the same
// app computes, histogram_quantile(0.95, sum by (le) (rate(F_bucket[W]))),
// within the interpolation of one bucket (the two scrape at different
// instants); a step in latency wakes StreamIsActive.
func TestAppLatencyMatchesPrometheus(t *testing.T) {
	promBin := requireTool(t, "prometheus")
	appSrv := startLatencyApp(t, 200, 40*time.Millisecond)
	api := fakeapi.Start(appPod(appSrv.addr))
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := testutil.FreeAddrT(t)
	ag := startAgent(t, "--simulate=1", "--kubeconfig="+kubeconfig, "--grpc.listen-address="+grpcAddr,
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--app.interval=250ms")
	prom := testutil.StartPrometheusT(t, testutil.PrometheusOptions{Bin: promBin, Targets: []string{appSrv.addr}, ScrapeInterval: 250 * time.Millisecond})

	scalerAddr, scalerWeb := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	scaler := testutil.StartT(t, "gpu-scaler", testutil.ProcOptions{}, scalerBinary(t), "--agents="+grpcAddr,
		"--grpc.listen-address="+scalerAddr, "--web.listen-address="+scalerWeb, "--log.level=debug")
	if err := scaler.WaitHTTP(t.Context(), httpClient, "http://"+scalerWeb+"/healthz", readyTimeout); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(scalerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := kedaClient{externalscaler.NewExternalScalerClient(conn)}

	const window = 10 * time.Second
	ref := &externalscaler.ScaledObjectRef{Name: "sfu", Namespace: "media", ScalerMetadata: map[string]string{
		"metric": "app", "appMetric": "app_request_latency_seconds", "quantile": "0.95", "window": window.String(),
		"podPattern": "sfu-.*", "scale": "1000", "target": "200", "activationTarget": "200",
	}}
	spec, err := k.GetMetricSpec(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	metric := spec.GetMetricSpecs()[0].GetMetricName()
	promQL := fmt.Sprintf(`histogram_quantile(0.95, sum by (le) (rate(app_request_latency_seconds_bucket[%ds]))) * 1000`, int(window.Seconds()))

	// compare waits for the window to fill, then asks both sides at once
	// and holds them to the same bucket's interpolation.
	compare := func(what string) float64 {
		t.Helper()
		var got, want float64
		err := testutil.Poll(t.Context(), 60*time.Second, func() (bool, error) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			g, err := k.value(ctx, ref, metric)
			if err != nil {
				return false, err
			}
			w, ok, err := prom.Query(ctx, promQL)
			if err != nil || !ok {
				return false, fmt.Errorf("prometheus: %v (has value: %v)", err, ok)
			}
			got, want = g, w
			lo, hi := bucketOf(want/1000, latencyBuckets)
			if width := (hi - lo) * 1000; math.Abs(got-want) > width {
				return false, fmt.Errorf("scaler %.2f ms, Prometheus %.2f ms: further apart than the bucket (%g, %g] s", got, want, lo, hi)
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("%s: %v\nagent: %s", what, err, ag.Tail(20))
		}
		t.Logf("%s: p95 scaler %.2f ms, Prometheus %.2f ms (%s)", what, got, want, promQL)
		return got
	}
	time.Sleep(window) // the window fills
	if v := compare("at 40 ms mean"); v >= 200 {
		t.Fatalf("p95 %.1f ms at a 40 ms mean", v)
	}

	stream, err := k.StreamIsActive(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetResult() {
		t.Fatalf("StreamIsActive first message %v, %v; want false", m, err)
	}
	appSrv.set(400 * time.Millisecond)
	if m, err := stream.Recv(); err != nil || !m.GetResult() {
		t.Fatalf("StreamIsActive after the step: %v, %v; want true", m, err)
	}
	time.Sleep(window)
	if v := compare("at 400 ms mean"); v <= 200 {
		t.Fatalf("p95 %.1f ms at a 400 ms mean", v)
	}
	if s := ag.scrape(t); !containsLine(s, `gpu_agent_app_targets{state="scraping"} 1`) {
		t.Fatalf("the agent does not report its target:\n%s", s)
	}
}

func containsLine(body, line string) bool {
	for len(body) > 0 {
		i := 0
		for i < len(body) && body[i] != '\n' {
			i++
		}
		if body[:i] == line {
			return true
		}
		if i == len(body) {
			break
		}
		body = body[i+1:]
	}
	return false
}
