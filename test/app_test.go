package test

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
	"github.com/gpu-telemetry/agent/test/internal/latencyapp"
)

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
	promBin := testutil.RequireTool(t, "prometheus", "prometheus")
	appSrv, err := latencyapp.Start(200, 40*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(appSrv.Close)
	api := fakeapi.Start(appSrv.Pod("golden-node", 250*time.Millisecond))
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := testutil.FreeAddrT(t)
	ag := startAgent(t, "--simulate=1", "--kubeconfig="+kubeconfig, "--grpc.listen-address="+grpcAddr,
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--app.interval=250ms")
	prom := testutil.StartPrometheusT(t, testutil.PrometheusOptions{Bin: promBin, Targets: []string{appSrv.Addr}, ScrapeInterval: 250 * time.Millisecond})

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
			lo, hi := bucketOf(want/1000, latencyapp.Buckets)
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
	appSrv.Set(400 * time.Millisecond)
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

// hostileApp serves one way an app endpoint can misbehave.
func hostileApp(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// Hostile app endpoints beside a good one, through the agent's binary:
// each gets its own error and counter, the good one is scraped all along,
// and the agent keeps sampling and serving.
func TestAppHostileEndpoints(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	good, err := latencyapp.Start(200, 40*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Close)
	hung := hostileApp(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	huge := hostileApp(t, func(w http.ResponseWriter, r *http.Request) {
		line := []byte("app_x{i=\"0000000000\"} 1\n")
		for range 1 << 20 {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	})
	garbage := hostileApp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "<html>{{{ not metrics\n")
	})
	redirect := hostileApp(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+good.Addr+"/metrics", http.StatusFound)
	})
	pods := []corev1.Pod{good.Pod("golden-node", 250*time.Millisecond)}
	for i, addr := range []string{hung, huge, garbage, redirect} {
		p := good.Pod("golden-node", 250*time.Millisecond)
		p.Name, p.UID = fmt.Sprintf("bad-%d", i), types.UID(fmt.Sprintf("00000000-0000-4000-8000-00000000000%d", i))
		_, port, _ := net.SplitHostPort(addr)
		p.Spec.Containers[0].Ports[0].ContainerPort = mustAtoi(port)
		pods = append(pods, p)
	}
	api := fakeapi.Start(pods...)
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ag := startAgent(t, "--simulate=1", "--kubeconfig="+kubeconfig, "--kubelet.pod-resources-socket=/nonexistent/kubelet.sock",
		"--app.interval=250ms", "--app.max-body-bytes=65536", "--app.concurrency=1")
	reasons := []string{"timeout", "body_too_large", "parse", "redirect"}
	s := ag.waitMetrics(t, 30*time.Second, "every hostile endpoint counted by its reason", func(s samples) error {
		for _, r := range reasons {
			if v, ok := s.labelled("gpu_agent_app_scrape_errors_total", "reason", r); !ok || v < 1 {
				return fmt.Errorf("gpu_agent_app_scrape_errors_total{reason=%q} = %v", r, v)
			}
		}
		return nil
	})
	if v, _ := s.labelled("gpu_agent_app_targets", "state", "scraping"); v != 5 {
		t.Fatalf("gpu_agent_app_targets{state=\"scraping\"} = %v, want 5", v)
	}
	// The good target was scraped all along: one histogram observation
	// per scrape, each at most its interval, while the hung one waited.
	before, _ := s.value("gpu_agent_app_scrape_duration_seconds_count")
	ticks, _ := s.value("gpu_agent_samples_total")
	ag.waitMetrics(t, 30*time.Second, "scrapes and GPU ticks go on", func(s samples) error {
		after, _ := s.value("gpu_agent_app_scrape_duration_seconds_count")
		t2, _ := s.value("gpu_agent_samples_total")
		if after < before+10 || t2 <= ticks {
			return fmt.Errorf("scrapes %v -> %v, GPU ticks %v -> %v", before, after, ticks, t2)
		}
		return nil
	})
	if err := ag.Alive(); err != nil {
		t.Fatal(err)
	}
}

func mustAtoi(s string) int32 {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return int32(n)
}
