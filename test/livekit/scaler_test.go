package livekit

import (
	"context"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
)

// compareWindow is the window of both sides' quantiles: four rounds of
// LiveKit's 5-second stream stats.
const compareWindow = 20 * time.Second

// buildRepo builds a main package of the agent's module (../..) into dir.
func buildRepo(ctx context.Context, t testing.TB, dir, pkg, name string, cgo bool) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = filepath.Join(root, "..", "..")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if cgo {
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// TestScalerAgreesWithPrometheus runs the agent beside the impaired SFU:
// it discovers LiveKit through the annotations of its pod (a fake API
// server names it, at the SFU's address), scrapes its Prometheus port
// every second, and pushes the histograms to the scaler, which answers
// KEDA's own client. Each answer, p50 and p95 of jitter, RTT and loss
// over 20 s, is held against the real Prometheus scraping the same
// LiveKit every second:
// histogram_quantile(q, sum by (le) (rate(F_bucket[20s]))), within the
// width of the bucket Prometheus's answer falls in (the two scrape at
// different instants, so the counts they hold can differ by a recording).
func TestScalerAgreesWithPrometheus(t *testing.T) {
	e := Start(t, DefaultOptions())
	ctx := t.Context()
	dir := t.TempDir()
	agentBin := buildRepo(ctx, t, dir, "./cmd/agent", "gpu-agent", true)
	scalerBin := buildRepo(ctx, t, dir, "./cmd/scaler", "gpu-scaler", false)

	const node = "livekit-node"
	pod := fakeapi.Pod(node, "media", "livekit-0", "8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a", "livekit=0000000000000000000000000000000000000000000000000000000000000002")
	pod.Status.PodIP = e.Net.SFUIP.String()
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: PrometheusPort}}
	pod.Annotations = map[string]string{
		app.AnnotationScrape:   "true",
		app.AnnotationPort:     "metrics",
		app.AnnotationFamilies: "livekit_(jitter_us|rtt_ms|packet_loss_percent)",
		app.AnnotationInterval: "1s",
	}
	api := fakeapi.Start(pod)
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	web, grpcAddr := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	agent := testutil.StartT(t, "gpu-agent", procOptions(e.Dir, "gpu-agent"), agentBin, "--simulate=1", "--node-name="+node,
		"--kubeconfig="+kubeconfig, "--kubelet.pod-resources-socket=/nonexistent/kubelet.sock",
		"--web.listen-address="+web, "--grpc.listen-address="+grpcAddr)
	if err := agent.WaitHTTP(ctx, nil, "http://"+web+"/readyz", time.Minute); err != nil {
		t.Fatal(err)
	}
	scalerAddr, scalerWeb := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	scaler := testutil.StartT(t, "gpu-scaler", procOptions(e.Dir, "gpu-scaler"), scalerBin, "--agents="+grpcAddr,
		"--grpc.listen-address="+scalerAddr, "--web.listen-address="+scalerWeb, "--window.max=1m")
	if err := scaler.WaitHTTP(ctx, nil, "http://"+scalerWeb+"/healthz", time.Minute); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(scalerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	keda := externalscaler.NewExternalScalerClient(conn)
	ask := func(ctx context.Context, family string, q float64) (float64, error) {
		ref := &externalscaler.ScaledObjectRef{Name: "sfu", Namespace: "media", ScalerMetadata: map[string]string{
			"metric": "app", "appMetric": family, "quantile": strconv.FormatFloat(q, 'f', -1, 64),
			"window": compareWindow.String(), "podPattern": "livekit-.*", "target": "1",
		}}
		spec, err := keda.GetMetricSpec(ctx, ref)
		if err != nil {
			return 0, err
		}
		resp, err := keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: spec.GetMetricSpecs()[0].GetMetricName()})
		if err != nil {
			return 0, err
		}
		m := resp.GetMetricValues()[0]
		if f := m.GetMetricValueFloat(); f > 0 {
			return f, nil
		}
		return float64(m.GetMetricValue()), nil
	}
	// Ask once early: the scaler then asks the agent for the families.
	for _, h := range Histograms {
		_, _ = ask(ctx, h.Name, 0.95)
	}
	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(runFor):
	}
	for _, h := range Histograms {
		for _, q := range []float64{0.5, 0.95} {
			var got, want float64
			err := testutil.Poll(ctx, 45*time.Second, func() (bool, error) {
				qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				g, err := ask(qctx, h.Name, q)
				if err != nil {
					return false, fmt.Errorf("scaler: %w", err)
				}
				w, ok, err := e.Quantile(qctx, q, h.Name, compareWindow)
				if err != nil || !ok {
					return false, fmt.Errorf("prometheus: %v (has value: %v)", err, ok)
				}
				got, want = g, w
				lo, hi := bucketOf(want, h.Buckets)
				if math.Abs(got-want) > hi-lo {
					return false, fmt.Errorf("scaler %g, Prometheus %g: further apart than the bucket (%g, %g]", got, want, lo, hi)
				}
				return true, nil
			})
			if err != nil {
				t.Errorf("%s p%g: %v\nagent: %s", h.Name, q*100, err, agent.Tail(10))
				continue
			}
			t.Logf("%s p%g over %s: scaler %s, Prometheus %s", h.Name, q*100, compareWindow, formatValue(got), formatValue(want))
		}
	}
	t.Logf("qdiscs:\n%s", e.Net.QdiscStats())
}

// bucketOf returns the bounds of the bucket v falls in (lo exclusive);
// the first bucket's lower bound is 0, or the bound itself when it is not
// above 0.
func bucketOf(v float64, bounds []float64) (lo, hi float64) {
	lo = math.Min(0, bounds[0])
	for _, b := range bounds {
		if v <= b {
			return lo, b
		}
		lo = b
	}
	return lo, lo // past the last bound: PromQL answers the last bound
}
