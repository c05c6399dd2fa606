package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

var (
	scalerOnce sync.Once
	scalerBin  string
	scalerErr  error
)

// scalerBinary builds cmd/scaler once for the tests that need it, with
// cgo off as its image is built, and the race detector when the tests
// run under it.
func scalerBinary(t *testing.T) string {
	t.Helper()
	scalerOnce.Do(func() {
		scalerBin, scalerErr = testutil.Build(context.Background(), filepath.Dir(agentBin), "./cmd/scaler",
			testutil.BuildOptions{Name: "gpu-scaler", Race: raceEnabled})
	})
	if scalerErr != nil {
		t.Fatal(scalerErr)
	}
	return scalerBin
}

// simNode is one simulated node of the push-path test: an agent with its
// own seed, node name, gRPC port and load file.
type simNode struct {
	*agent
	name, grpc, load string
	seed             int64
	args             []string
}

const simGPUs = 4

func startSimNode(t *testing.T, i int) *simNode {
	t.Helper()
	n := &simNode{name: fmt.Sprintf("node-%d", i), grpc: testutil.FreeAddrT(t), seed: int64(10 + i),
		load: filepath.Join(t.TempDir(), "load.json")}
	n.args = []string{fmt.Sprintf("--simulate=%d", simGPUs), fmt.Sprintf("--simulate.seed=%d", n.seed), "--simulate.static",
		"--simulate.load-file=" + n.load, "--node-name=" + n.name, "--interval=100ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--grpc.listen-address=" + n.grpc}
	n.agent = startAgent(t, n.args...)
	return n
}

// inferenceUtil returns the static GPU utilization of the node's
// inference pods: GPU i is held by default/inference-i, except the last,
// which WebRTC pods share.
func (n *simNode) inferenceUtil() []float64 {
	devs := sim.New(sim.Options{Devices: simGPUs, Seed: n.seed, Static: true}).Devices()
	var v []float64
	for _, d := range devs[:simGPUs-1] {
		v = append(v, d.GPUUtil(time.Now()))
	}
	return v
}

func mean(vs []float64) float64 {
	var s float64
	for _, v := range vs {
		s += v
	}
	return s / float64(len(vs))
}

// kedaClient is KEDA's own generated client, dialled as KEDA's external
// scaler dials (insecure gRPC to the scaler's Service).
type kedaClient struct {
	externalscaler.ExternalScalerClient
}

func (k kedaClient) value(ctx context.Context, ref *externalscaler.ScaledObjectRef, metric string) (float64, error) {
	resp, err := k.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: metric})
	if err != nil {
		return 0, err
	}
	if len(resp.GetMetricValues()) != 1 {
		return 0, fmt.Errorf("%d metric values, want 1", len(resp.GetMetricValues()))
	}
	m := resp.GetMetricValues()[0]
	if m.GetMetricName() != metric {
		return 0, fmt.Errorf("metric %q, want %q", m.GetMetricName(), metric)
	}
	// KEDA reads the float only when it is > 0.
	if f := m.GetMetricValueFloat(); f > 0 {
		return f, nil
	}
	return float64(m.GetMetricValue()), nil
}

// waitValue polls GetMetrics until it answers want (to 1e-9) and fails
// the test after timeout, naming the last answer.
func (k kedaClient) waitValue(t *testing.T, ref *externalscaler.ScaledObjectRef, metric string, want float64, timeout time.Duration, why string) {
	t.Helper()
	err := testutil.Poll(t.Context(), timeout, func() (bool, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		got, err := k.value(ctx, ref, metric)
		cancel()
		if err == nil && abs(got-want) < 1e-9 {
			return true, nil
		}
		return false, fmt.Errorf("GetMetrics = %v, %v", got, err)
	})
	if err != nil {
		t.Fatalf("%s: %v; want %v", why, err, want)
	}
}

func abs(x float64) float64 { return max(x, -x) }

// TestPushPathThreeNodes runs three agents on simulated nodes and one
// scaler, all real binaries, and calls the scaler with KEDA's generated
// client as KEDA does: the aggregate equals the simulation's values, a
// load step makes StreamIsActive say true, a killed agent's node drops out
// of the aggregate and comes back with the agent, and bad metadata is
// refused naming the key.
func TestPushPathThreeNodes(t *testing.T) {
	nodes := []*simNode{startSimNode(t, 0), startSimNode(t, 1), startSimNode(t, 2)}
	var grpcAddrs []string
	for _, n := range nodes {
		grpcAddrs = append(grpcAddrs, n.grpc)
	}
	scalerAddr, scalerWeb := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	scaler := testutil.StartT(t, "gpu-scaler", testutil.ProcOptions{}, scalerBinary(t), "--agents="+strings.Join(grpcAddrs, ","),
		"--grpc.listen-address="+scalerAddr, "--web.listen-address="+scalerWeb, "--stale-after=1s",
		"--log.level=debug")
	if err := scaler.WaitHTTP(t.Context(), httpClient, "http://"+scalerWeb+"/healthz", readyTimeout); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(scalerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := kedaClient{externalscaler.NewExternalScalerClient(conn)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The simulation's values: every inference pod of every node.
	var all []float64
	for _, n := range nodes {
		all = append(all, n.inferenceUtil()...)
	}
	const step = 97.0
	if slices.Max(all) >= 90 {
		t.Fatalf("a simulated inference GPU already runs at %v%%: pick seeds whose load stays under the activation mark", slices.Max(all))
	}

	avg := &externalscaler.ScaledObjectRef{Name: "inference", Namespace: "default", ScalerMetadata: map[string]string{
		"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "avg", "target": "70",
	}}
	spec, err := k.GetMetricSpec(ctx, avg)
	if err != nil {
		t.Fatalf("GetMetricSpec: %v", err)
	}
	if len(spec.GetMetricSpecs()) != 1 || spec.GetMetricSpecs()[0].GetTargetSizeFloat() != 70 || spec.GetMetricSpecs()[0].GetTargetSize() != 70 {
		t.Fatalf("GetMetricSpec = %v, want one spec with target 70", spec)
	}
	metric := spec.GetMetricSpecs()[0].GetMetricName()
	k.waitValue(t, avg, metric, mean(all), 20*time.Second, "avg over 9 inference pods on 3 nodes")
	checkSharedGPUPods(t, k, nodes)
	checkDeviceWideMetrics(t, k, nodes)

	// A load step on node-1's GPU 0: StreamIsActive says false first (the
	// state), then true on the crossing.
	peak := &externalscaler.ScaledObjectRef{Name: "burst", Namespace: "default", ScalerMetadata: map[string]string{
		"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "max", "target": "70", "activationTarget": "90",
	}}
	stream, err := k.StreamIsActive(ctx, peak)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetResult() {
		t.Fatalf("StreamIsActive first message %v, %v; want false before the step", m, err)
	}
	if active, err := k.IsActive(ctx, peak); err != nil || active.GetResult() {
		t.Fatalf("IsActive = %v, %v; want false before the step", active, err)
	}
	if err := os.WriteFile(nodes[1].load, fmt.Appendf(nil, `{"gpus": {"0": {"gpu_util": %g}}}`, step), 0o644); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	if m, err := stream.Recv(); err != nil || !m.GetResult() {
		t.Fatalf("StreamIsActive after the step: %v, %v; want true", m, err)
	}
	t.Logf("StreamIsActive true %s after the load file was written (file poll, sampling, stream, scaler)", time.Since(written).Round(time.Millisecond))
	if active, err := k.IsActive(ctx, peak); err != nil || !active.GetResult() {
		t.Fatalf("IsActive = %v, %v; want true after the step", active, err)
	}
	stepped := slices.Clone(all)
	stepped[3] = step // node-1's GPU 0
	k.waitValue(t, avg, metric, mean(stepped), 5*time.Second, "avg after the step")

	// node-2's agent dies: its pods leave the aggregate once the node is
	// stale, and return when it restarts.
	nodes[2].Kill()
	k.waitValue(t, avg, metric, mean(stepped[:6]), 10*time.Second, "avg without node-2")
	nodes[2].agent = startAgent(t, nodes[2].args...)
	k.waitValue(t, avg, metric, mean(stepped), 20*time.Second, "avg with node-2 back")

	// Bad metadata: InvalidArgument naming the key, on every call.
	bad := &externalscaler.ScaledObjectRef{Name: "bad", Namespace: "default", ScalerMetadata: map[string]string{
		"metric": "gpu_util", "podPattern": "inference-.*", "aggregation": "median", "target": "70",
	}}
	_, errSpec := k.GetMetricSpec(ctx, bad)
	_, errMetrics := k.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: bad, MetricName: "x"})
	_, errActive := k.IsActive(ctx, bad)
	for name, err := range map[string]error{"GetMetricSpec": errSpec, "GetMetrics": errMetrics, "IsActive": errActive} {
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "aggregation") {
			t.Errorf("%s with aggregation=median: %v; want InvalidArgument naming aggregation", name, err)
		}
	}

	// The scaler's shutdown ends the open stream cleanly: EOF, so KEDA
	// reopens it in 2 s instead of backing off.
	_ = scaler.Stop(testutil.StopTimeout) // the exit code is checked below
	for {
		if _, err := stream.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("StreamIsActive ended with %v on the scaler's SIGTERM, want EOF", err)
			}
			break
		}
	}
	if code := scaler.ExitCode(); code != 0 {
		t.Errorf("scaler exit code %d after SIGTERM, want 0", code)
	}
}

// sharedPods are the simulated node's WebRTC pods, time-sharing its last
// GPU with different encoder loads.
var sharedPods = [2]string{"webrtc-sfu-0", "webrtc-sfu-1"}

// podShares is what one node's /metrics says of the shared GPU: the
// device-level series and each WebRTC pod's own.
type podShares struct {
	device struct{ enc, sm float64 }
	pods   [2]struct{ enc, sm, latency float64 }
}

// sharedGPUShares scrapes n's agent until its shared GPU has both pods'
// own series, and reads them; a pod's encode latency is its mean over
// every session, from the per-codec series.
func (n *simNode) sharedGPUShares(t *testing.T) podShares {
	t.Helper()
	uuid := sim.New(sim.Options{Devices: simGPUs, Seed: n.seed, Static: true}).Devices()[simGPUs-1].UUID()
	s := n.waitMetrics(t, 10*time.Second, "the shared GPU's per-pod series", func(s samples) error {
		for _, p := range sharedPods {
			if _, ok := s.podSeries("gpu_agent_pod_encoder_latency_seconds", uuid, p, "stat", "mean"); !ok {
				return fmt.Errorf("%s: no encode latency of %s", n.name, p)
			}
		}
		return nil
	})
	var sh podShares
	sh.device.enc, _ = s.podSeries("DCGM_FI_DEV_ENC_UTIL", uuid, "")
	sh.device.sm, _ = s.podSeries("DCGM_FI_DEV_GPU_UTIL", uuid, "")
	for i, p := range sharedPods {
		sh.pods[i].enc, _ = s.podSeries("DCGM_FI_DEV_ENC_UTIL", uuid, p)
		sh.pods[i].sm, _ = s.podSeries("DCGM_FI_DEV_GPU_UTIL", uuid, p)
		var sessions, weighted float64
		for _, codec := range []string{"h264", "hevc", "av1", "other"} {
			c, _ := s.podSeries("gpu_agent_pod_encoder_sessions", uuid, p, "codec", codec)
			l, _ := s.podSeries("gpu_agent_pod_encoder_latency_seconds", uuid, p, "codec", codec, "stat", "mean")
			sessions += c
			weighted += c * l
		}
		if sessions > 0 {
			sh.pods[i].latency = weighted / sessions
		}
	}
	return sh
}

// checkSharedGPUPods: the scaler answers each WebRTC pod's own SM and
// encoder utilization and encode latency, as the agents' /metrics show
// them, not the GPU's they share; and the pods' shares add up to the
// GPUs' values.
func checkSharedGPUPods(t *testing.T, k kedaClient, nodes []*simNode) {
	t.Helper()
	var per [2]struct{ enc, sm, latency []float64 }
	var deviceEnc, deviceSM float64
	for _, n := range nodes {
		sh := n.sharedGPUShares(t)
		deviceEnc += sh.device.enc
		deviceSM += sh.device.sm
		for i := range sharedPods {
			per[i].enc = append(per[i].enc, sh.pods[i].enc)
			per[i].sm = append(per[i].sm, sh.pods[i].sm)
			per[i].latency = append(per[i].latency, sh.pods[i].latency)
		}
	}
	ref := func(metric, pattern, agg string) (*externalscaler.ScaledObjectRef, string) {
		r := &externalscaler.ScaledObjectRef{Name: "webrtc", Namespace: "media", ScalerMetadata: map[string]string{
			"metric": metric, "podPattern": pattern, "aggregation": agg, "target": "50"}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		spec, err := k.GetMetricSpec(ctx, r)
		if err != nil || len(spec.GetMetricSpecs()) != 1 {
			t.Fatalf("GetMetricSpec %v: %v, %v", r.ScalerMetadata, spec, err)
		}
		return r, spec.GetMetricSpecs()[0].GetMetricName()
	}
	for i, p := range sharedPods {
		for _, c := range []struct {
			metric string
			want   []float64
		}{{"enc_util", per[i].enc}, {"gpu_util", per[i].sm}, {"encoder_latency", per[i].latency}} {
			r, name := ref(c.metric, p, "avg")
			k.waitValue(t, r, name, mean(c.want), 10*time.Second, fmt.Sprintf("%s of %s on 3 nodes", c.metric, p))
		}
	}
	t.Logf("shared GPUs of 3 nodes: device encoder %v%% and SM %v%% in all; pods' own: %+v", deviceEnc, deviceSM, per)
	if slices.Equal(per[0].enc, per[1].enc) || slices.Equal(per[0].sm, per[1].sm) || slices.Equal(per[0].latency, per[1].latency) {
		t.Errorf("the two WebRTC pods read the same values (%+v): the simulation should give them different loads", per)
	}
	// Their shares add up to their GPUs': a sum over the pods counts each
	// shared GPU once.
	for metric, want := range map[string]float64{"enc_util": deviceEnc, "gpu_util": deviceSM} {
		r, name := ref(metric, "webrtc-sfu-.*", "sum")
		k.waitValue(t, r, name, want, 10*time.Second, "sum of "+metric+" over the WebRTC pods, the shared GPUs' total")
	}
}

// checkDeviceWideMetrics: the scaler answers the GPUs' own figures that
// the agents push (temperature, power against the enforced limit, PCIe
// throughput) as the simulated GPUs give them, each pod reading its GPU's
// value: the two WebRTC pods of a shared GPU read the same temperature,
// and a sum of power over them counts the GPU once per pod.
func checkDeviceWideMetrics(t *testing.T, k kedaClient, nodes []*simNode) {
	t.Helper()
	var temps, ratios, pcieTX, sharedTemps []float64
	var sharedWatts float64
	for _, n := range nodes {
		for i, d := range sim.New(sim.Options{Devices: simGPUs, Seed: n.seed, Static: true}).Devices() {
			c, _ := d.GetTemperature(gonvml.TEMPERATURE_GPU)
			mw, _ := d.GetPowerUsage()
			limit, _ := d.GetEnforcedPowerLimit()
			kbps, _ := d.GetPcieThroughput(gonvml.PCIE_UTIL_TX_BYTES) // KB/s: the byte counters' rate on a static load
			if i == simGPUs-1 {
				sharedTemps = append(sharedTemps, float64(c), float64(c)) // one per WebRTC pod
				sharedWatts += 2 * float64(mw) / 1000
				continue
			}
			temps = append(temps, float64(c))
			ratios = append(ratios, float64(mw)/float64(limit))
			pcieTX = append(pcieTX, float64(kbps)*1024)
		}
	}
	var txSum float64
	for _, v := range pcieTX {
		txSum += v
	}
	for _, c := range []struct {
		ns, metric, pattern, agg string
		want                     float64
	}{
		{"default", "temperature", "inference-.*", "avg", mean(temps)},
		{"default", "power_ratio", "inference-.*", "max", slices.Max(ratios)},
		{"default", "pcie_tx", "inference-.*", "sum", txSum},
		{"media", "temperature", "webrtc-sfu-.*", "avg", mean(sharedTemps)},
		{"media", "power", "webrtc-sfu-.*", "sum", sharedWatts},
	} {
		r := &externalscaler.ScaledObjectRef{Name: "gpu", Namespace: c.ns, ScalerMetadata: map[string]string{
			"metric": c.metric, "podPattern": c.pattern, "aggregation": c.agg, "target": "1"}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		spec, err := k.GetMetricSpec(ctx, r)
		cancel()
		if err != nil || len(spec.GetMetricSpecs()) != 1 {
			t.Fatalf("GetMetricSpec %v: %v, %v", r.ScalerMetadata, spec, err)
		}
		k.waitValue(t, r, spec.GetMetricSpecs()[0].GetMetricName(), c.want, 10*time.Second,
			fmt.Sprintf("%s %s over %s/%s on 3 nodes", c.agg, c.metric, c.ns, c.pattern))
	}
}
