package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// optIn is the environment variable that runs these tests (make
// e2e-cluster sets it): see the package documentation.
const optIn = "GPU_AGENT_CLUSTER"

const (
	nodes         = 3
	gpusPerNode   = 4 // GPUs 0-2 hold inference-0..2, GPU 3 the media pods
	agentInterval = 100 * time.Millisecond
	scrapeEvery   = time.Second // Prometheus; the prometheus triggers poll every 1 s too
	ns            = "default"
	target        = 70.0 // every trigger's target (threshold): percent per pod
)

// requirements skips or, under CI=true, fails the test when a tool or
// privilege the control plane needs is missing.
func requirements(t *testing.T) {
	t.Helper()
	if os.Getenv(optIn) != "1" {
		t.Skipf("the real control plane runs only with %s=1 (make e2e-cluster)", optIn)
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the metrics adapter runs in a network namespace)")
	}
	for _, tool := range []struct{ bin, pkg string }{{"ip", "iproute2"}, {"etcd", "etcd-server"}, {"prometheus", "prometheus"}} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian: %s)", tool.bin, tool.pkg))
		}
	}
	if len(missing) > 0 {
		skipOrFail(t, fmt.Errorf("%w: %s", errSkip, strings.Join(missing, ", ")))
	}
}

func skipOrFail(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, errSkip) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	t.Fatal(err)
}

// rounds is how many times each measurement repeats (for a median):
// GPU_AGENT_CLUSTER_ROUNDS, default 3.
func rounds(t *testing.T) int {
	if s := os.Getenv("GPU_AGENT_CLUSTER_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("GPU_AGENT_CLUSTER_ROUNDS=%q: want a positive integer", s)
		}
		return n
	}
	return 3
}

// env is one running cluster with its agents, scaler and Prometheus.
type env struct {
	t      *testing.T
	dir    string
	cp     *ControlPlane
	nodes  []*Node
	scaler *Scaler
	// tap forwards the measured push triggers' calls to the scaler and
	// times KEDA's receipt of each answer.
	tap  *Tap
	prom *testutil.Prometheus
	rec  *ReplicaRecorder
	// agentBin is the agent built for this run.
	agentBin string
	keda     externalscaler.ExternalScalerClient
	report   *report
}

func TestControlPlane(t *testing.T) {
	requirements(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	start := time.Now()
	bins, err := Build(ctx, t.Logf)
	if err != nil {
		skipOrFail(t, err)
	}
	rep := &report{BuildOrCache: time.Since(start)}
	t.Logf("control-plane binaries in %s (%s)", bins.Dir, rep.BuildOrCache.Round(time.Second))

	// The run's directory (logs, etcd, Prometheus) is kept when a test
	// fails.
	dir, err := os.MkdirTemp("", "gpu-agent-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs and data kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	e := &env{t: t, dir: dir, report: rep}
	start = time.Now()
	cp, err := StartControlPlane(ctx, e.dir, bins, t.Logf)
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs()
		}
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		skipOrFail(t, err)
	}
	e.cp = cp
	rep.ControlPlaneStart = time.Since(start)

	agentBin, scalerBin, err := agentBinaries(ctx, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	e.agentBin = agentBin
	for i := range nodes {
		var extra []string
		if i == 0 {
			// node-0's agent watches the API server's pods: the latency
			// app's pod is its app target (AppLatency).
			extra = []string{"--kubeconfig=" + cp.Kubeconfig()}
		}
		n, err := StartNode(e.dir, agentBin, i, gpusPerNode, agentInterval, Load{Base: 10}, extra...)
		if n != nil && n.p != nil {
			t.Cleanup(func() { _ = n.p.Stop(stopGrace) })
		}
		if err != nil {
			t.Fatal(err)
		}
		e.nodes = append(e.nodes, n)
	}
	if e.scaler, err = StartScaler(e.dir, scalerBin, e.nodes); e.scaler != nil && e.scaler.p != nil {
		t.Cleanup(func() { _ = e.scaler.p.Stop(stopGrace) })
	}
	if err != nil {
		t.Fatal(err)
	}
	if e.tap, err = StartTap(ctx, e.scaler.Addr); err != nil {
		t.Fatal(err)
	}
	if e.prom, err = StartPrometheus(ctx, e.dir, e.nodes, scrapeEvery); e.prom != nil {
		t.Cleanup(func() { _ = e.prom.Stop(stopGrace) })
	}
	if err != nil {
		skipOrFail(t, err)
	}
	conn, err := grpc.NewClient(e.scaler.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.keda = externalscaler.NewExternalScalerClient(conn)
	if e.rec, err = RecordReplicas(ctx, cp.Client, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel) // the watch ends before the API server stops
	t.Logf("control plane, %d agents, the scaler and Prometheus up in %s", nodes, time.Since(start).Round(time.Millisecond))

	t.Run("ScaleFromZero", func(t *testing.T) { e.scaleFromZero(ctx, t) })
	t.Run("ScaleOut", func(t *testing.T) { e.scaleOut(ctx, t) })
	t.Run("AppLatency", func(t *testing.T) { e.appLatency(ctx, t) })
	t.Run("ScalerRestart", func(t *testing.T) { e.scalerRestart(ctx, t, scalerBin) })
	// Last: they stop agents.
	t.Run("NodeGone", func(t *testing.T) { e.nodeGone(ctx, t) })
	t.Run("Fallback", func(t *testing.T) { e.fallback(ctx, t) })
	// After the measurements, which it needs none of and which it could
	// disturb: run before them, ScaleFromZero failed in 3 of 4 runs (a
	// wake recorded before the step it was timed from).
	t.Run("Deploy", func(t *testing.T) { e.deploy(ctx, t) })

	t.Log("\n" + rep.String())
	if path := os.Getenv("GPU_AGENT_CLUSTER_REPORT"); path != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// The triggers: the push path asks the scaler, the Prometheus path asks
// a real Prometheus the same question in PromQL.
var (
	wakeMetadata = map[string]string{
		"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "max",
		"target": "70", "activationTarget": "50",
	}
	wakeQuery = `max(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`

	outMetadata = map[string]string{
		"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "sum",
		"target": "70",
	}
	outQuery = `sum(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`
)

// scaleFromZero: two Deployments at 0, one woken by the scaler's
// StreamIsActive (external-push), one by KEDA polling Prometheus every
// second; one GPU's load steps from 10% to 90%; the time from the step's
// publication to each Deployment's spec.replicas = 1.
func (e *env) scaleFromZero(ctx context.Context, t *testing.T) {
	low := Load{Base: 10}
	high := Load{Base: 10, GPUs: map[int]float64{0: 90}}
	for r := range rounds(t) {
		push, prom := fmt.Sprintf("wake-push-%d", r), fmt.Sprintf("wake-prom-%d", r)
		e.setLoads(t, low, low, low)
		e.settle(ctx, t, wakeMetadata, wakeQuery, 10)
		e.apply(ctx, t, deployment(push, 0), deployment(prom, 0),
			scaledObject(push, 0, 1, 30, trigger("external-push", "Value", e.tapMetadata(wakeMetadata))),
			scaledObject(prom, 0, 1, 1, trigger("prometheus", "", map[string]string{
				"serverAddress": "http://" + e.prom.Addr, "query": wakeQuery,
				"threshold": "70", "activationThreshold": "50",
			})))
		e.waitReady(ctx, t, push, prom)
		// KEDA holds the stream open and has polled Prometheus while inactive.
		e.waitWatchers(ctx, t, 1)
		time.Sleep(3 * scrapeEvery)
		for _, d := range []string{push, prom} {
			if n := e.rec.Current(d); n != 0 {
				t.Fatalf("before the step, deployment %s has %d replicas, want 0", d, n)
			}
		}

		t0 := e.step(ctx, t, map[int]Load{0: high})
		pushAt, err := e.rec.WaitFor(ctx, push, 1, t0, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		promAt, err := e.rec.WaitFor(ctx, prom, 1, t0, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		chain := e.fromZeroChain(t, push, t0, pushAt)
		t.Logf("round %d: 0 -> 1 replica %s after the step's publication through the push path, %s through Prometheus; the push path's %s",
			r+1, pushAt.Sub(t0).Round(time.Millisecond), promAt.Sub(t0).Round(time.Millisecond), chain)
		e.report.FromZero = append(e.report.FromZero, pair{Push: pushAt.Sub(t0), Prometheus: promAt.Sub(t0)})
		e.report.FromZeroChain = append(e.report.FromZeroChain, chain)

		e.remove(ctx, t, push, prom)
		// The next round's stream is a new one.
		e.waitNoWatchers(ctx, t)
	}
}

// scaleOut: two Deployments at 1 replica scaled by the HPA controller,
// one on the scaler's GetMetrics (external, AverageValue of a sum: the
// recommendation of docs/stream-and-scaler.md), one on Prometheus; six
// of the nine inference GPUs step from 5% to 40%; both must reach the
// replica count the HPA formula gives for their source's answer,
// ceil(value / target).
func (e *env) scaleOut(ctx context.Context, t *testing.T) {
	low := Load{Base: 5}
	high := Load{Base: 5, GPUs: map[int]float64{0: 40, 1: 40, 2: 40}}
	for r := range rounds(t) {
		push, prom := fmt.Sprintf("out-push-%d", r), fmt.Sprintf("out-prom-%d", r)
		e.setLoads(t, low, low, low)
		before := e.settle(ctx, t, outMetadata, outQuery, 3*nodes*5)
		if want := int32(math.Ceil(before / target)); want != 1 {
			t.Fatalf("before the step the scaler answers %g: the HPA wants %d replicas, the test needs 1", before, want)
		}
		e.apply(ctx, t, deployment(push, 1), deployment(prom, 1),
			scaledObject(push, 1, 20, 30, trigger("external", "AverageValue", e.tapMetadata(outMetadata))),
			scaledObject(prom, 1, 20, 1, trigger("prometheus", "AverageValue", map[string]string{
				"serverAddress": "http://" + e.prom.Addr, "query": outQuery, "threshold": "70",
			})))
		e.waitReady(ctx, t, push, prom)
		// Each HPA has read its metric through the aggregator, KEDA's
		// adapter and operator, once before the step.
		for _, so := range []string{push, prom} {
			if err := testutil.Poll(ctx, 60*time.Second, func() (bool, error) {
				hpa, err := e.cp.Client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "keda-hpa-"+so, metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				for _, m := range hpa.Status.CurrentMetrics {
					if m.External != nil && m.External.Current.AverageValue != nil {
						return true, nil
					}
				}
				return false, fmt.Errorf("HPA status: %+v", hpa.Status)
			}); err != nil {
				t.Fatalf("the HPA of %s never read its external metric: %v", so, err)
			}
			if n := e.rec.Current(so); n != 1 {
				t.Fatalf("before the step, deployment %s has %d replicas, want 1", so, n)
			}
		}

		// What each source answers after the step, and what the HPA
		// formula makes of it.
		sum := 2*3*40.0 + 3*5.0
		// The scaler's own moment of the stepped value: a stream that
		// only the full sum activates (the sum is the largest value on
		// the way: one node's step first gives 165).
		stepped := e.watchActive(ctx, t, outMetadata, sum-0.5)
		// Round r writes its step (r + 1/2) / rounds of a sync period
		// after one of the HPA's reads: the phases spread over the cycle.
		e.awaitPhase(ctx, t, push, (2*time.Duration(r)+1)*HPASyncPeriod/time.Duration(2*rounds(t)))
		t0 := e.step(ctx, t, map[int]Load{0: high, 1: high})
		var pushValue, promValue float64
		if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
			var err error
			pushValue = e.value(ctx, t, outMetadata)
			if promValue, err = queryValue(ctx, e.prom, outQuery); err != nil {
				return false, err
			}
			return pushValue == sum && promValue == sum, nil
		}); err != nil {
			t.Fatalf("after the step the scaler answers %g and Prometheus %g, want %g: %v", pushValue, promValue, sum, err)
		}
		wantPush := int32(math.Ceil(pushValue / target))
		wantProm := int32(math.Ceil(promValue / target))
		pushAt, err := e.rec.WaitFor(ctx, push, wantPush, t0, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		promAt, err := e.rec.WaitFor(ctx, prom, wantProm, t0, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		chain := e.outChain(t, push, pushValue, t0, stepped(), pushAt)
		// And stays there: the formula's count, not a step on the way.
		time.Sleep(3 * HPASyncPeriod)
		for _, d := range []struct {
			name string
			want int32
		}{{push, wantPush}, {prom, wantProm}} {
			if n := e.rec.Current(d.name); n != d.want {
				t.Errorf("deployment %s moved on to %d replicas (changes since the step: %v), want %d", d.name, n, e.rec.Changes(d.name, t0), d.want)
			}
		}
		t.Logf("round %d: 1 -> %d replicas (scaler: %g) %s after the step's publication through the scaler; 1 -> %d (Prometheus: %g) %s through Prometheus; replica counts after the step %v and %v; the push path's %s",
			r+1, wantPush, pushValue, pushAt.Sub(t0).Round(time.Millisecond), wantProm, promValue, promAt.Sub(t0).Round(time.Millisecond),
			e.rec.Changes(push, t0), e.rec.Changes(prom, t0), chain)
		e.report.ScaleOut = append(e.report.ScaleOut, pair{Push: pushAt.Sub(t0), Prometheus: promAt.Sub(t0)})
		e.report.ScaleOutChain = append(e.report.ScaleOutChain, chain)
		e.report.ScaleOutReplicas = [2]int32{wantPush, wantProm}
		e.remove(ctx, t, push, prom)
		// The test's stream (ended by stepped) is gone before the next
		// round or test counts KEDA's.
		e.waitNoWatchers(ctx, t)
	}
}

// scalerRestart: the scaler is killed while KEDA holds its
// StreamIsActive stream, and started again on the same address; KEDA
// reopens the stream (after its back-off) and the next step still wakes a
// Deployment from zero through it. The ScaledObject polls every 300 s, so
// a scale within the wait cannot come from a poll.
func (e *env) scalerRestart(ctx context.Context, t *testing.T, scalerBin string) {
	name := "wake-restart"
	low := Load{Base: 10}
	high := Load{Base: 10, GPUs: map[int]float64{0: 90}}
	e.setLoads(t, low, low, low)
	e.settle(ctx, t, wakeMetadata, wakeQuery, 10)
	e.apply(ctx, t, deployment(name, 0),
		scaledObject(name, 0, 1, 300, trigger("external-push", "Value", e.scalerMetadata(wakeMetadata))))
	e.waitReady(ctx, t, name)
	e.waitWatchers(ctx, t, 1)

	e.scaler.p.Kill()
	killed := time.Now()
	if err := e.scaler.start(e.dir, scalerBin, e.nodes); err != nil {
		t.Fatalf("restarting the scaler: %v", err)
	}
	if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		v, err := e.scaler.Metric(ctx, "gpu_scaler_agents_connected")
		if err != nil {
			return false, err
		}
		return v == nodes, nil
	}); err != nil {
		t.Fatalf("the restarted scaler never reconnected to the agents: %v", err)
	}
	e.waitWatchers(ctx, t, 1)
	reopened := time.Since(killed)
	if n := e.rec.Current(name); n != 0 {
		t.Fatalf("before the step, deployment %s has %d replicas, want 0", name, n)
	}

	t0 := e.step(ctx, t, map[int]Load{0: high})
	at, err := e.rec.WaitFor(ctx, name, 1, t0, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KEDA reopened StreamIsActive %s after the scaler was killed; the next step woke the deployment %s after its publication",
		reopened.Round(time.Millisecond), at.Sub(t0).Round(time.Millisecond))
	e.report.ScalerRestart = &restart{Reopened: reopened, Wake: at.Sub(t0)}
	e.remove(ctx, t, name)
}

// nodeGone: one node's agent stops; once the scaler judges it stale its
// pods leave the aggregate (the answer drops by their share, it does not
// fail), and the HPA scales the Deployment in to what the rest give. The
// ScaledObject asks the HPA to scale in without its 5-minute
// stabilization window.
func (e *env) nodeGone(ctx context.Context, t *testing.T) {
	const name = "node-gone"
	busy := Load{Base: 5, GPUs: map[int]float64{0: 40, 1: 40, 2: 40}}
	e.setLoads(t, busy, busy, busy)
	all := e.settle(ctx, t, outMetadata, outQuery, 3*nodes*40)
	before := int32(math.Ceil(all / target))
	so := scaledObject(name, 1, 20, 1, trigger("external", "AverageValue", e.scalerMetadata(outMetadata)))
	so["spec"].(map[string]any)["advanced"] = map[string]any{"horizontalPodAutoscalerConfig": map[string]any{
		"behavior": map[string]any{"scaleDown": map[string]any{"stabilizationWindowSeconds": 0}},
	}}
	e.apply(ctx, t, deployment(name, int(before)), so)
	e.waitReady(ctx, t, name)
	time.Sleep(3 * HPASyncPeriod)
	if n := e.rec.Current(name); n != before {
		t.Fatalf("before the node goes, deployment %s has %d replicas, want %d (the scaler answers %g)", name, n, before, all)
	}

	gone := e.nodes[nodes-1]
	stopped := time.Now()
	_ = gone.p.Stop(stopGrace)
	rest := float64(3 * (nodes - 1) * 40)
	if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) { return e.value(ctx, t, outMetadata) == rest, nil }); err != nil {
		t.Fatalf("the scaler never dropped %s's pods from the aggregate: %v", gone.Name, err)
	}
	left := time.Since(stopped)
	want := int32(math.Ceil(rest / target))
	at, err := e.rec.WaitFor(ctx, name, want, stopped, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s stopped: its pods left the scaler's answer (%g -> %g) after %s; the HPA scaled %d -> %d after %s",
		gone.Name, all, rest, left.Round(time.Millisecond), before, want, at.Sub(stopped).Round(time.Millisecond))
	e.report.NodeGone = &nodeGoneResult{Left: left, From: before, To: want, Scaled: at.Sub(stopped)}
	e.remove(ctx, t, name)
}

// fallback: every agent stops, so the scaler answers Unavailable (no
// data is not 0) and KEDA applies the ScaledObject's fallback replicas
// instead of scaling on a made-up value.
func (e *env) fallback(ctx context.Context, t *testing.T) {
	const name, fallbackReplicas, failureThreshold = "fallback", 5, 3
	low := Load{Base: 5}
	e.setLoads(t, low, low, low)
	running := 0 // NodeGone stopped one
	for _, n := range e.nodes {
		if n.p.Alive() == nil {
			running++
		}
	}
	e.settle(ctx, t, outMetadata, outQuery, float64(3*running*5))
	so := scaledObject(name, 1, 10, 1, trigger("external", "AverageValue", e.scalerMetadata(outMetadata)))
	so["spec"].(map[string]any)["fallback"] = map[string]any{"failureThreshold": failureThreshold, "replicas": fallbackReplicas}
	e.apply(ctx, t, deployment(name, 1), so)
	e.waitReady(ctx, t, name)
	time.Sleep(3 * HPASyncPeriod)
	if n := e.rec.Current(name); n != 1 {
		t.Fatalf("before the agents stop, deployment %s has %d replicas, want 1", name, n)
	}

	stopped := time.Now()
	for _, n := range e.nodes {
		_ = n.p.Stop(stopGrace)
	}
	ref := &externalscaler.ScaledObjectRef{Name: name, Namespace: ns, ScalerMetadata: outMetadata}
	if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		_, err := e.keda.IsActive(ctx, ref)
		return status.Code(err) == codes.Unavailable, nil
	}); err != nil {
		t.Fatalf("the scaler never answered Unavailable once every agent stopped: %v", err)
	}
	unavailable := time.Since(stopped)
	at, err := e.rec.WaitFor(ctx, name, fallbackReplicas, stopped, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agents stopped: the scaler answered Unavailable after %s, KEDA's fallback set %d replicas after %s",
		unavailable.Round(time.Millisecond), fallbackReplicas, at.Sub(stopped).Round(time.Millisecond))
	e.report.Fallback = &fallbackResult{Unavailable: unavailable, Replicas: fallbackReplicas, Applied: at.Sub(stopped)}
}

// waitNoWatchers waits until no StreamIsActive stream is open on the
// scaler.
func (e *env) waitNoWatchers(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		v, err := e.scaler.Metric(ctx, "gpu_scaler_stream_watchers")
		if err != nil {
			return false, err // a failed scrape is not 0 watchers
		}
		return v == 0, nil
	}); err != nil {
		t.Fatalf("a StreamIsActive stream stayed open after its ScaledObject was deleted: %v", err)
	}
}

func (e *env) waitWatchers(ctx context.Context, t *testing.T, atLeast float64) {
	t.Helper()
	if err := testutil.Poll(ctx, 90*time.Second, func() (bool, error) {
		v, err := e.scaler.Metric(ctx, "gpu_scaler_stream_watchers")
		if err != nil {
			return false, err
		}
		return v >= atLeast, nil
	}); err != nil {
		t.Fatalf("KEDA never opened StreamIsActive: %v", err)
	}
}

// scalerMetadata is a trigger's metadata with the scaler's address.
func (e *env) scalerMetadata(md map[string]string) map[string]string {
	return withAddress(md, e.scaler.Addr)
}

// tapMetadata is a trigger's metadata with the tap's address: KEDA's
// calls reach the scaler through the tap, which times their answers.
func (e *env) tapMetadata(md map[string]string) map[string]string {
	return withAddress(md, e.tap.Addr)
}

func withAddress(md map[string]string, addr string) map[string]string {
	out := map[string]string{"scalerAddress": addr}
	for k, v := range md {
		out[k] = v
	}
	return out
}

func (e *env) setLoads(t *testing.T, loads ...Load) {
	t.Helper()
	for i, l := range loads {
		if err := e.nodes[i].SetLoad(l); err != nil {
			t.Fatal(err)
		}
	}
}

// step writes the loads of the given nodes and returns when the last of
// them published its step.
func (e *env) step(ctx context.Context, t *testing.T, loads map[int]Load) time.Time {
	t.Helper()
	var waits []func() (time.Time, error)
	for i, l := range loads {
		w, err := e.nodes[i].WatchStep(ctx, l, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	for i, l := range loads {
		if err := e.nodes[i].SetLoad(l); err != nil {
			t.Fatal(err)
		}
	}
	var t0 time.Time
	for _, w := range waits {
		at, err := w()
		if err != nil {
			t.Fatal(err)
		}
		if at.After(t0) {
			t0 = at
		}
	}
	return t0
}

// settleFor is how long the scaler and Prometheus must both have answered
// a value before a ScaledObject may ask: KEDA's prometheus scaler queries
// at time=now truncated to the second (RFC 3339), so it can read what
// Prometheus held up to a second earlier.
const settleFor = 2500 * time.Millisecond

// settle waits until both the scaler (through KEDA's own client) and
// Prometheus have answered want for settleFor, and returns the scaler's
// answer.
func (e *env) settle(ctx context.Context, t *testing.T, md map[string]string, query string, want float64) float64 {
	t.Helper()
	ref := &externalscaler.ScaledObjectRef{Name: "settle", Namespace: ns, ScalerMetadata: md}
	spec, err := e.keda.GetMetricSpec(ctx, ref)
	if err != nil || len(spec.GetMetricSpecs()) != 1 {
		t.Fatalf("GetMetricSpec: %v %v", spec, err)
	}
	name := spec.GetMetricSpecs()[0].GetMetricName()
	var got, gotProm float64
	var since time.Time
	err = testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		resp, err := e.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: name})
		if err != nil {
			return false, err
		}
		if len(resp.GetMetricValues()) != 1 {
			return false, fmt.Errorf("GetMetrics: %d values", len(resp.GetMetricValues()))
		}
		m := resp.GetMetricValues()[0]
		got = m.GetMetricValueFloat()
		if got <= 0 { // KEDA reads the float only when above 0
			got = float64(m.GetMetricValue())
		}
		if gotProm, err = queryValue(ctx, e.prom, query); err != nil {
			return false, err
		}
		if got != want || gotProm != want {
			since = time.Time{}
			return false, nil
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= settleFor, nil
	})
	if err != nil {
		t.Fatalf("waiting for the scaler and Prometheus to answer %g: scaler %g, Prometheus %g: %v", want, got, gotProm, err)
	}
	return got
}

// value is the scaler's answer to a trigger now, as KEDA reads it.
func (e *env) value(ctx context.Context, t *testing.T, md map[string]string) float64 {
	t.Helper()
	v, err := e.valueErr(ctx, md)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) valueErr(ctx context.Context, md map[string]string) (float64, error) {
	ref := &externalscaler.ScaledObjectRef{Name: "value", Namespace: ns, ScalerMetadata: md}
	spec, err := e.keda.GetMetricSpec(ctx, ref)
	if err != nil || len(spec.GetMetricSpecs()) != 1 {
		return 0, fmt.Errorf("GetMetricSpec: %v %v", spec, err)
	}
	resp, err := e.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: spec.GetMetricSpecs()[0].GetMetricName()})
	if err != nil || len(resp.GetMetricValues()) != 1 {
		return 0, fmt.Errorf("GetMetrics: %v %v", resp, err)
	}
	m := resp.GetMetricValues()[0]
	if f := m.GetMetricValueFloat(); f > 0 {
		return f, nil
	}
	return float64(m.GetMetricValue()), nil
}

func (e *env) apply(ctx context.Context, t *testing.T, objs ...map[string]any) {
	t.Helper()
	for _, o := range objs {
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.cp.Apply(ctx, string(b)); err != nil {
			t.Fatal(err)
		}
	}
}

var scaledObjects = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}

// waitReady waits until KEDA reports each ScaledObject Ready and has
// made its HPA.
func (e *env) waitReady(ctx context.Context, t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		err := testutil.Poll(ctx, 60*time.Second, func() (bool, error) {
			o, err := e.cp.Dynamic.Resource(scaledObjects).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
			if err != nil || !hasCondition(o, "Ready") {
				return false, err
			}
			_, err = e.cp.Client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "keda-hpa-"+n, metav1.GetOptions{})
			return err == nil, err
		})
		if err != nil {
			t.Fatalf("ScaledObject %s never Ready with its HPA: %v", n, err)
		}
	}
}

// remove deletes ScaledObjects, their HPAs and their Deployments,
// waiting until KEDA has let go of each ScaledObject (its finalizer).
//
// The HPA is deleted here because nothing else would: KEDA leaves it to
// the garbage collector (its owner reference), which this control plane
// does not run. Left behind, every round's HPA went on syncing each
// second on a Deployment that was gone: with 24 of them (ScaleOut's
// sixth round) the live HPA's reads came 0.8-1.4 s apart instead of 1 s
// and its scale write about 250 ms after its read, in rounds 6 and 7 of
// three runs out of three, and in none once they were deleted (likely
// the HPA controller's client waiting on its rate limit, 20 QPS by
// default).
func (e *env) remove(ctx context.Context, t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := e.cp.Dynamic.Resource(scaledObjects).Namespace(ns).Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if err := testutil.Poll(ctx, 60*time.Second, func() (bool, error) {
			_, err := e.cp.Dynamic.Resource(scaledObjects).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
			return err != nil && strings.Contains(err.Error(), "not found"), nil
		}); err != nil {
			t.Fatalf("ScaledObject %s not deleted: %v", n, err)
		}
		err := e.cp.Client.AutoscalingV2().HorizontalPodAutoscalers(ns).Delete(ctx, "keda-hpa-"+n, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if err := e.cp.Client.AppsV1().Deployments(ns).Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// dumpLogs prints the end of every process's log after a failure.
func (e *env) dumpLogs() {
	var procs []*testutil.Proc
	if e.cp != nil {
		procs = append(procs, e.cp.procs...)
	}
	for _, n := range e.nodes {
		procs = append(procs, n.p)
	}
	if e.scaler != nil {
		procs = append(procs, e.scaler.p)
	}
	for _, p := range procs {
		if p != nil {
			e.t.Logf("--- the end of %s's log (%s):\n%s", p.Name, p.LogFile(), p.Tail(25))
		}
	}
}

func deployment(name string, replicas int) map[string]any {
	labels := map[string]any{"app": name}
	return map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"replicas": replicas,
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				// Never pulled: there is no kubelet.
				"spec": map[string]any{"containers": []any{map[string]any{"name": "app", "image": "registry.invalid/gpu-workload:0"}}},
			},
		},
	}
}

func trigger(typ, metricType string, md map[string]string) map[string]any {
	tr := map[string]any{"type": typ, "metadata": md}
	if metricType != "" {
		tr["metricType"] = metricType
	}
	return tr
}

func scaledObject(name string, minReplicas, maxReplicas, pollingInterval int, triggers ...map[string]any) map[string]any {
	ts := make([]any, len(triggers))
	for i, tr := range triggers {
		ts[i] = tr
	}
	return map[string]any{
		"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"scaleTargetRef":  map[string]any{"name": name},
			"minReplicaCount": minReplicas,
			"maxReplicaCount": maxReplicas,
			"pollingInterval": pollingInterval,
			"cooldownPeriod":  300,
			"triggers":        ts,
		},
	}
}

// pair is one step's delay on each path.
type pair struct {
	Push       time.Duration `json:"push_ns"`
	Prometheus time.Duration `json:"prometheus_ns"`
}

type report struct {
	BuildOrCache      time.Duration `json:"build_or_cache_ns"`
	ControlPlaneStart time.Duration `json:"control_plane_start_ns"`
	HPASyncPeriod     time.Duration `json:"hpa_sync_period_ns"`
	FromZero          []pair        `json:"from_zero"`
	ScaleOut          []pair        `json:"scale_out"`
	ScaleOutReplicas  [2]int32      `json:"scale_out_replicas"`
	// The push path's rounds split (chainStep).
	FromZeroChain []chainStep     `json:"from_zero_chain"`
	ScaleOutChain []chainStep     `json:"scale_out_chain"`
	ScalerRestart *restart        `json:"scaler_restart,omitempty"`
	NodeGone      *nodeGoneResult `json:"node_gone,omitempty"`
	Fallback      *fallbackResult `json:"fallback,omitempty"`
	App           *appResult      `json:"app_latency,omitempty"`
}

type restart struct {
	Reopened time.Duration `json:"stream_reopened_after_kill_ns"`
	Wake     time.Duration `json:"wake_after_step_ns"`
}

type nodeGoneResult struct {
	Left     time.Duration `json:"pods_left_after_stop_ns"`
	From, To int32
	Scaled   time.Duration `json:"scaled_after_stop_ns"`
}

type fallbackResult struct {
	Unavailable time.Duration `json:"unavailable_after_stop_ns"`
	Replicas    int           `json:"replicas"`
	Applied     time.Duration `json:"applied_after_stop_ns"`
}

func median(ps []pair, f func(pair) time.Duration) time.Duration {
	if len(ps) == 0 {
		return 0
	}
	ds := make([]time.Duration, len(ps))
	for i, p := range ps {
		ds[i] = f(p)
	}
	slices.Sort(ds)
	if len(ds)%2 == 1 {
		return ds[len(ds)/2]
	}
	return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
}

func (r *report) String() string {
	r.HPASyncPeriod = HPASyncPeriod
	var b strings.Builder
	fmt.Fprintf(&b, "kube-apiserver and kube-controller-manager %s, KEDA %s; HPA sync period %s; %d agents x %d GPUs sampled every %s; Prometheus scrape and trigger poll every %s\n\n",
		KubernetesVersion, KEDAVersion, HPASyncPeriod, nodes, gpusPerNode, agentInterval, scrapeEvery)
	fmt.Fprintln(&b, "| step (from its publication) -> replicas | rounds | push path (scaler), median | Prometheus path, median | ratio | every round, push / Prometheus |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|")
	row := func(name string, ps []pair) {
		if len(ps) == 0 {
			return
		}
		push, prom := median(ps, func(p pair) time.Duration { return p.Push }), median(ps, func(p pair) time.Duration { return p.Prometheus })
		var all []string
		for _, p := range ps {
			all = append(all, fmt.Sprintf("%s / %s", p.Push.Round(time.Millisecond), p.Prometheus.Round(time.Millisecond)))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %.1fx | %s |\n", name, len(ps), push.Round(time.Millisecond), prom.Round(time.Millisecond),
			float64(prom)/float64(push), strings.Join(all, ", "))
	}
	row("one GPU 10% -> 90%: 0 -> 1 (KEDA: external-push / prometheus trigger)", r.FromZero)
	row(fmt.Sprintf("six GPUs 5%% -> 40%%: 1 -> %d / %d (HPA: external / prometheus trigger, AverageValue of a sum)", r.ScaleOutReplicas[0], r.ScaleOutReplicas[1]), r.ScaleOut)
	if len(r.FromZeroChain)+len(r.ScaleOutChain) > 0 {
		fmt.Fprintln(&b)
		chainTable(&b, []struct {
			name  string
			steps []chainStep
		}{
			{"0 -> 1 (KEDA's operator on StreamIsActive)", r.FromZeroChain},
			{fmt.Sprintf("1 -> %d (the HPA on GetMetrics through KEDA)", r.ScaleOutReplicas[0]), r.ScaleOutChain},
		})
	}
	if r.App != nil {
		fmt.Fprintf(&b, "\nAn app's p95 latency %.0f -> %.0f ms (target %g ms, window %s, scraped every %s): 0 -> 1 replica %s after the step (external-push, Value); 1 -> %d %s after it (HPA on GetMetrics, Value).\n",
			r.App.LowMs, r.App.HighMs, appTarget, appWindow, appInterval, r.App.Wake.Round(time.Millisecond), r.App.OutTo, r.App.Out.Round(time.Millisecond))
	}
	if r.ScalerRestart != nil {
		fmt.Fprintf(&b, "\nScaler killed while KEDA held StreamIsActive: stream reopened %s after the kill; the next step woke a Deployment from 0 %s after its publication.\n",
			r.ScalerRestart.Reopened.Round(time.Millisecond), r.ScalerRestart.Wake.Round(time.Millisecond))
	}
	if r.NodeGone != nil {
		fmt.Fprintf(&b, "\nOne agent stopped: its pods left the scaler's answer %s later; the HPA scaled %d -> %d %s after the stop.\n",
			r.NodeGone.Left.Round(time.Millisecond), r.NodeGone.From, r.NodeGone.To, r.NodeGone.Scaled.Round(time.Millisecond))
	}
	if r.Fallback != nil {
		fmt.Fprintf(&b, "\nEvery agent stopped: the scaler answered Unavailable %s later; KEDA's fallback (%d replicas) applied %s after the stop.\n",
			r.Fallback.Unavailable.Round(time.Millisecond), r.Fallback.Replicas, r.Fallback.Applied.Round(time.Millisecond))
	}
	return b.String()
}
