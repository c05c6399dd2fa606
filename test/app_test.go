package test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
	promBin := requireTool(t, "prometheus")
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
