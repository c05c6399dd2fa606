package cluster

import (
	"context"
	"fmt"
	"math"
	"net"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/latencyapp"
)

// appInterval is the latency app's scrape interval (its pod's
// gpu-agent.io/interval); appWindow the triggers' p95 window.
const (
	appInterval = 250 * time.Millisecond
	appWindow   = 2 * time.Second
	appTarget   = 200.0 // ms
)

// appMetadata is the trigger WebRTC teams write: p95 request latency
// above 200 ms, in ms.
func appMetadata() map[string]string {
	return map[string]string{
		"metric": "app", "appMetric": latencyapp.Family, "quantile": "0.95", "window": appWindow.String(),
		"scale": "1000", "podPattern": "sfu-.*", "target": strconv.FormatFloat(appTarget, 'f', -1, 64),
		"activationTarget": strconv.FormatFloat(appTarget, 'f', -1, 64),
	}
}

// startAppPod runs the latency app in this process and makes its pod in
// the API server, bound to node-0 and Running at 127.0.0.1 (there is no
// kubelet: the test writes the status a kubelet would). node-0's agent
// watches the API server's pods and scrapes it.
func (e *env) startAppPod(ctx context.Context, t *testing.T) *latencyapp.App {
	t.Helper()
	a, err := latencyapp.Start(200, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	_, port, _ := net.SplitHostPort(a.Addr)
	n, _ := strconv.Atoi(port)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sfu-0", Namespace: ns, Annotations: map[string]string{
			app.AnnotationScrape: "true", app.AnnotationPort: "metrics",
			app.AnnotationFamilies: "app_.*", app.AnnotationInterval: appInterval.String(),
		}},
		Spec: corev1.PodSpec{NodeName: e.nodes[0].Name, Containers: []corev1.Container{{
			Name: "sfu", Image: "registry.invalid/sfu:0",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: int32(n)}},
		}}},
	}
	created, err := e.cp.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cp.Client.CoreV1().Pods(ns).Delete(context.Background(), "sfu-0", metav1.DeleteOptions{})
	})
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = "127.0.0.1"
	created.Status.PodIPs = []corev1.PodIP{{IP: "127.0.0.1"}}
	if _, err := e.cp.Client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return a
}

// appLatency: the latency app's p95 steps from about 70 ms to about
// 760 ms (its mean 50 ms -> 400 ms); one Deployment at 0 is woken through
// StreamIsActive (external-push, metricType Value), one at 1 is scaled
// out by the HPA on GetMetrics (external, metricType Value: a quantile is
// not a total), through the real KEDA operator, adapter and HPA.
func (e *env) appLatency(ctx context.Context, t *testing.T) {
	lat := e.startAppPod(ctx, t)
	md := e.scalerMetadata(appMetadata())
	var low float64
	if err := testutil.Poll(ctx, 60*time.Second, func() (bool, error) {
		if low = e.tryValue(ctx, md); low > 0 && low < appTarget {
			return true, nil
		}
		return false, fmt.Errorf("the scaler answers %g", low)
	}); err != nil {
		t.Fatalf("the app's p95 never reached the scaler below %g ms: %v", appTarget, err)
	}
	const wake, out, maxOut = "lat-wake", "lat-out", 4
	// A Value target scales the ready pods' count (the HPA's replica
	// calculator: ceil(ratio x ready pods)); there is no kubelet, so the
	// test plays its part for this Deployment's pods.
	readyCtx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	go e.markReady(readyCtx, out)
	e.apply(ctx, t, deployment(wake, 0), deployment(out, 1),
		scaledObject(wake, 0, 1, 30, trigger("external-push", "Value", md)),
		scaledObject(out, 1, maxOut, 30, trigger("external", "Value", md)))
	e.waitReady(ctx, t, wake, out)
	e.waitWatchers(ctx, t, 1)
	time.Sleep(2 * HPASyncPeriod)
	if n := e.rec.Current(wake); n != 0 {
		t.Fatalf("before the step, %s has %d replicas", wake, n)
	}
	if n := e.rec.Current(out); n != 1 {
		t.Fatalf("before the step, %s has %d replicas", out, n)
	}

	t0 := time.Now()
	lat.Set(400 * time.Millisecond)
	wakeAt, err := e.rec.WaitFor(ctx, wake, 1, t0, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The HPA's first decision is ceil(1 x p95 / 200), about 4 at a
	// 760 ms p95; latency does not fall with replicas here, so it ends at
	// maxReplicas.
	outAt, err := e.rec.WaitFor(ctx, out, maxOut, t0, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	high := e.tryValue(ctx, md)
	if want := int32(math.Min(maxOut, math.Ceil(high/appTarget))); want < 2 {
		t.Fatalf("after the step the scaler answers %g ms: not a scale-out", high)
	}
	t.Logf("app p95 %.0f -> %.0f ms: %s 0 -> 1 after %s (external-push), %s 1 -> %d after %s (HPA, Value); changes %v",
		low, high, wake, wakeAt.Sub(t0).Round(time.Millisecond), out, maxOut, outAt.Sub(t0).Round(time.Millisecond), e.rec.Changes(out, t0))
	e.report.App = &appResult{LowMs: low, HighMs: high, Wake: wakeAt.Sub(t0), Out: outAt.Sub(t0), OutTo: maxOut}
	lat.Set(50 * time.Millisecond)
	e.remove(ctx, t, wake, out)
}

// markReady writes, as a kubelet would, Running and Ready into the status
// of every pod of Deployment name, until ctx ends.
func (e *env) markReady(ctx context.Context, name string) {
	for ctx.Err() == nil {
		pods, err := e.cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.Status.Phase == corev1.PodRunning {
					continue
				}
				now := metav1.Now()
				p.Status.Phase = corev1.PodRunning
				p.Status.Conditions = append(p.Status.Conditions,
					corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
					corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now})
				p.Status.StartTime = &now
				_, _ = e.cp.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tryValue is value without failing the test: 0 when the scaler has no
// answer yet.
func (e *env) tryValue(ctx context.Context, md map[string]string) float64 {
	v, err := e.valueErr(ctx, md)
	if err != nil {
		return 0
	}
	return v
}

type appResult struct {
	LowMs  float64       `json:"p95_low_ms"`
	HighMs float64       `json:"p95_high_ms"`
	Wake   time.Duration `json:"wake_after_step_ns"`
	Out    time.Duration `json:"scale_out_after_step_ns"`
	OutTo  int32         `json:"scale_out_to"`
}
