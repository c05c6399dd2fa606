package test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"go.yaml.in/yaml/v2"

	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
)

// mockProc is a process of the mock NVML profile, and the pod it runs in
// (empty for a host process), with the cgroup of
// testdata/perpod-mock/proc/<pid>/cgroup.
type mockProc struct {
	pid                      int
	gpu                      int
	sm, mem, enc, dec, fbMiB int
	namespace, pod, uid, cid string
	// gone: the fake procfs has no directory for the PID (it exited, or
	// --path.procfs is not the host's /proc), so its pod is not known.
	gone bool
}

// The node, one GPU for each row of the rule of what a pod reads: GPU 0
// held by one inference pod (Guaranteed QoS); GPU 1 held by another whose
// one process's cgroup cannot be read, 80% busy; GPU 2 held by no pod;
// GPU 3 time-sliced between two WebRTC media servers (Burstable and
// BestEffort) with a host process beside them (a recorder run by
// systemd) and one that exited before its /proc was read. Every cgroup
// is v2 with the systemd driver and containerd, as on a GKE or EKS node.
var mockProcs = []mockProc{
	{pid: 4001, gpu: 0, sm: 40, mem: 12, enc: 0, dec: 0, fbMiB: 2048, namespace: "default", pod: "inference-0",
		uid: "6f1c2a3b-4d5e-4f60-8a71-b2c3d4e5f601", cid: "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"},
	{pid: 4101, gpu: 3, sm: 20, mem: 6, enc: 30, dec: 10, fbMiB: 1024, namespace: "media", pod: "webrtc-sfu-0",
		uid: "0e5d7c1a-9b3f-4c2e-a8d6-3f1b2c4d5e60", cid: "5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"},
	{pid: 4102, gpu: 3, sm: 45, mem: 15, enc: 55, dec: 20, fbMiB: 3072, namespace: "media", pod: "webrtc-sfu-1",
		uid: "7b2e9f4c-1d8a-4e3b-9c5f-6a0d2e8b4c71", cid: "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"},
	{pid: 4103, gpu: 3, sm: 10, mem: 4, enc: 5, dec: 0, fbMiB: 512},            // host process
	{pid: 4199, gpu: 3, sm: 5, mem: 2, enc: 0, dec: 0, fbMiB: 256, gone: true}, // exited
	{pid: 4201, gpu: 1, sm: 80, mem: 30, fbMiB: 4096, namespace: "default", pod: "inference-a", gone: true,
		uid: "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", cid: "2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a"},
}

// mockGPUValue is the GPU-wide value of a utilization or memory figure of
// the profile: the sum over the GPU's processes.
func mockGPUValue(gpu int, of func(mockProc) int) float64 {
	var v int
	for _, p := range mockProcs {
		if p.gpu == gpu {
			v += of(p)
		}
	}
	return float64(v)
}

// mockSharedGPU is the GPU the WebRTC pods time-slice.
const mockSharedGPU = 3

// mockPerPodProfile adds the processes to the T4 profile's GPUs 0 and 3,
// with GPU-wide utilization and memory that are their sums, as a real
// GPU's are.
func mockPerPodProfile(doc yaml.MapSlice) yaml.MapSlice {
	for i, item := range doc {
		if item.Key != "devices" {
			continue
		}
		devs := item.Value.([]any)
		for j, d := range devs {
			dev := d.(yaml.MapSlice)
			idx, _ := mapValue(dev, "index").(int)
			var procs []any
			var sm, mem, fb int
			for _, p := range mockProcs {
				if p.gpu != idx {
					continue
				}
				sm, mem, fb = sm+p.sm, mem+p.mem, fb+p.fbMiB
				procs = append(procs, yaml.MapSlice{
					{Key: "pid", Value: p.pid}, {Key: "type", Value: "C"}, {Key: "name", Value: "proc-" + fmt.Sprint(p.pid)},
					{Key: "used_memory_mib", Value: p.fbMiB}, {Key: "sm_util", Value: p.sm}, {Key: "mem_util", Value: p.mem},
					{Key: "enc_util", Value: p.enc}, {Key: "dec_util", Value: p.dec},
				})
			}
			if procs == nil {
				continue
			}
			const total, reserved = 16 << 30, 300 << 20
			used := uint64(fb) << 20
			dev = append(dev,
				yaml.MapItem{Key: "processes", Value: procs},
				yaml.MapItem{Key: "utilization", Value: yaml.MapSlice{{Key: "gpu", Value: sm}, {Key: "memory", Value: mem}}},
				yaml.MapItem{Key: "memory", Value: yaml.MapSlice{{Key: "total_bytes", Value: uint64(total)},
					{Key: "reserved_bytes", Value: uint64(reserved)}, {Key: "used_bytes", Value: used},
					{Key: "free_bytes", Value: uint64(total-reserved) - used}}},
			)
			devs[j] = dev
		}
		doc[i].Value = devs
	}
	return doc
}

func mapValue(m yaml.MapSlice, key string) any {
	for _, kv := range m {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

// On NVIDIA's mock libnvidia-ml.so.1 with processes in its profile, a
// fake procfs of their cgroups, a fake kubelet that time-slices one T4
// between two WebRTC pods, and a fake API server that names the pods by
// UID (through --kubeconfig, the agent's real client-go pod watch), each
// pod's /metrics series carry its own SM, memory, encoder and decoder
// utilization and framebuffer; the host process and the exited one are
// left out (gpu_agent_unattributed_processes); and the pods' shares plus
// what is left out add up to the GPU-wide series.
//
// The mock answers the GPU-wide encoder and decoder utilization with 0
// whatever the profile says (third_party/README.md), so only the pods'
// own encoder figures, which come from its GetProcessUtilization, are
// checked against the profile; SM, memory and framebuffer add up.
func TestPerPodMockNVML(t *testing.T) {
	lib, configs := requireMockNVML(t)
	raw, err := os.ReadFile(filepath.Join(configs, "mock-nvml-config-t4.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.MapSlice
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if raw, err = yaml.Marshal(mockPerPodProfile(doc)); err != nil {
		t.Fatal(err)
	}
	var profile mockProfile
	if err := yaml.Unmarshal(raw, &profile); err != nil {
		t.Fatal(err)
	}
	uuid := func(gpu int) string { return profile.Devices[gpu].UUID }
	dir := t.TempDir()
	profileFile := filepath.Join(dir, "profile.yaml")
	if err := os.WriteFile(profileFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	procfs, err := filepath.Abs(filepath.Join("testdata", "perpod-mock", "proc"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range mockProcs {
		b, err := os.ReadFile(filepath.Join(procfs, fmt.Sprint(p.pid), "cgroup"))
		switch {
		case p.gone:
			if err == nil {
				t.Fatalf("PID %d stands for a process whose cgroup cannot be read: the fake procfs must not have it", p.pid)
			}
		case err != nil:
			t.Fatal(err)
		case p.pod != "" && (!strings.Contains(string(b), strings.ReplaceAll(p.uid, "-", "_")) || !strings.Contains(string(b), p.cid)):
			t.Fatalf("testdata cgroup of PID %d does not name pod %s's UID %s and container %s:\n%s", p.pid, p.pod, p.uid, p.cid, b)
		}
	}

	// The kubelet: the inference pod holds GPU 0 whole; the media servers
	// hold replicas of GPU 3 (NVIDIA's device plugin with time-slicing).
	kubelet, err := fk.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kubelet.Stop)
	var kubePods []*podresourcesv1.PodResources
	var apiPods []corev1.Pod
	replica := 0
	for _, p := range mockProcs {
		if p.pod == "" {
			continue
		}
		container, res, dev := "server", "nvidia.com/gpu", uuid(p.gpu)
		if p.namespace == "media" {
			container, res, dev = "sfu", "nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", uuid(p.gpu), replica)
			replica++
		}
		kubePods = append(kubePods, fk.Pod(p.namespace, p.pod, fk.Container(container, fk.Devices(res, dev))))
		apiPods = append(apiPods, fakeapi.Pod("golden-node", p.namespace, p.pod, p.uid, container+"="+p.cid))
	}
	// A pod of another node, which the agent's watch must not list.
	apiPods = append(apiPods, fakeapi.Pod("other-node", "media", "webrtc-sfu-9", "1d2c3b4a-5f6e-4a7b-8c9d-0e1f2a3b4c5d"))
	kubelet.SetPods(kubePods)

	api := fakeapi.Start(apiPods...)
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}

	grpcAddr := testutil.FreeAddrT(t)
	a := startAgentEnv(t, []string{"MOCK_NVML_CONFIG=" + profileFile},
		"--nvml.library-path="+lib, "--interval=250ms",
		"--kubelet.pod-resources-socket="+kubelet.Path(),
		"--path.procfs="+procfs, "--kubeconfig="+kubeconfig, "--grpc.listen-address="+grpcAddr)

	shared := uuid(mockSharedGPU)
	sm := func(p mockProc) int { return p.sm }
	// podWant is what a pod's series of a per-pod field reads: its own
	// process's figure on the shared GPU, the GPU's on a GPU it holds alone
	// (the mock answers the GPU-wide encoder and decoder with 0).
	podWant := func(p mockProc, metric string) float64 {
		of := map[string]func(mockProc) int{
			"DCGM_FI_DEV_GPU_UTIL": sm, "DCGM_FI_DEV_MEM_COPY_UTIL": func(p mockProc) int { return p.mem },
			"DCGM_FI_DEV_ENC_UTIL": func(p mockProc) int { return p.enc }, "DCGM_FI_DEV_DEC_UTIL": func(p mockProc) int { return p.dec },
			"DCGM_FI_DEV_FB_USED": func(p mockProc) int { return p.fbMiB },
		}[metric]
		switch {
		case p.gpu == mockSharedGPU:
			return float64(of(p))
		case metric == "DCGM_FI_DEV_ENC_UTIL" || metric == "DCGM_FI_DEV_DEC_UTIL":
			return 0
		}
		return mockGPUValue(p.gpu, of)
	}
	s := a.waitMetrics(t, 15*time.Second, "each pod's value", func(s samples) error {
		for _, p := range mockProcs {
			if p.pod == "" {
				continue
			}
			if v, ok := s.podSeries("DCGM_FI_DEV_GPU_UTIL", uuid(p.gpu), p.pod); !ok || v != podWant(p, "DCGM_FI_DEV_GPU_UTIL") {
				return fmt.Errorf("%s: DCGM_FI_DEV_GPU_UTIL %v (present %v), want %v", p.pod, v, ok, podWant(p, "DCGM_FI_DEV_GPU_UTIL"))
			}
		}
		// A scrape reads the device families and the agent's own from
		// the latest snapshot each: just after the first attribution the
		// two may be a tick apart.
		if _, ok := s.podSeries("gpu_agent_unattributed_processes", shared, ""); !ok {
			return fmt.Errorf("no gpu_agent_unattributed_processes yet")
		}
		return nil
	})
	// The watch says it works: synced, holding this node's pods only.
	nodePods := 0
	for _, p := range apiPods {
		if p.Spec.NodeName == "golden-node" {
			nodePods++
		}
	}
	for metric, want := range map[string]float64{
		"gpu_agent_pod_watch_synced": 1, "gpu_agent_pod_watch_pods": float64(nodePods), "gpu_agent_pod_watch_errors_total": 0,
	} {
		if err := s.expect(metric, want); err != nil {
			t.Error(err)
		}
	}

	// Each pod's series of the per-pod fields.
	for _, p := range mockProcs {
		if p.pod == "" {
			continue
		}
		for _, metric := range []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_FB_USED"} {
			got, ok := s.podSeries(metric, uuid(p.gpu), p.pod)
			if want := podWant(p, metric); !ok || got != want {
				t.Errorf("%s/%s %s = %v (present %v), want %v", p.namespace, p.pod, metric, got, ok, want)
			}
		}
	}

	// One series per GPU for each field but on the shared GPU, whose pods
	// add theirs: its pod's on a GPU one pod holds (no device-level series
	// beside it, so a sum counts the GPU once), one without pod labels on
	// the free GPU and the shared one.
	wantPods := map[int][]string{
		0: {"default/inference-0/server"}, 1: {"default/inference-a/server"}, 2: {"-"},
		3: {"-", "media/webrtc-sfu-0/sfu", "media/webrtc-sfu-1/sfu"},
	}
	for gpu, want := range wantPods {
		if got := s.pods("DCGM_FI_DEV_GPU_UTIL", uuid(gpu)); !slices.Equal(got, want) {
			t.Errorf("GPU %d: DCGM_FI_DEV_GPU_UTIL series of %v, want %v", gpu, got, want)
		}
		if got := s.pods("DCGM_FI_DEV_POWER_USAGE", uuid(gpu)); !slices.Equal(got, want[:1]) {
			t.Errorf("GPU %d: DCGM_FI_DEV_POWER_USAGE series of %v, want %v only", gpu, got, want[:1])
		}
	}

	// The processes no pod explains, counted and measured: the host
	// process and the exited one on the shared GPU, the unreadable one on
	// GPU 1.
	for _, c := range []struct {
		gpu          int
		processes    float64
		smRatio, mem float64
	}{{0, 0, 0, 0}, {1, 1, 0.8, 0.3}, {mockSharedGPU, 2, 0.15, 0.06}} {
		if v, ok := s.podSeries("gpu_agent_unattributed_processes", uuid(c.gpu), ""); !ok || v != c.processes {
			t.Errorf("GPU %d: gpu_agent_unattributed_processes %v (present %v), want %v", c.gpu, v, ok, c.processes)
		}
		for engine, want := range map[string]float64{"gpu": c.smRatio, "memory": c.mem} {
			v, ok := unattributedLoad(s, uuid(c.gpu), engine)
			if !ok || math.Abs(v-want) > 1e-9 {
				t.Errorf("GPU %d: gpu_agent_unattributed_utilization_ratio{engine=%q} %v (present %v), want %v", c.gpu, engine, v, ok, want)
			}
		}
	}

	// The shared GPU's device-level series stay the GPU's, and add up: the
	// pods' shares and the processes left out.
	for _, c := range []struct {
		metric string
		of     func(mockProc) int
	}{
		{"DCGM_FI_DEV_GPU_UTIL", sm},
		{"DCGM_FI_DEV_MEM_COPY_UTIL", func(p mockProc) int { return p.mem }},
		{"DCGM_FI_DEV_FB_USED", func(p mockProc) int { return p.fbMiB }},
	} {
		device, ok := s.podSeries(c.metric, shared, "")
		if !ok || device != mockGPUValue(mockSharedGPU, c.of) {
			t.Errorf("shared GPU: device-level %s %v (present %v), want %v", c.metric, device, ok, mockGPUValue(mockSharedGPU, c.of))
			continue
		}
		var pods, leftOut float64
		for _, p := range mockProcs {
			switch {
			case p.gpu != mockSharedGPU:
			case p.pod != "":
				v, _ := s.podSeries(c.metric, shared, p.pod)
				pods += v
			default:
				leftOut += float64(c.of(p))
			}
		}
		if pods+leftOut != device {
			t.Errorf("shared GPU %s: pods %v + left out %v = %v, want the device's %v", c.metric, pods, leftOut, pods+leftOut, device)
		}
	}
	sm0, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "webrtc-sfu-0")
	sm1, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "webrtc-sfu-1")
	enc0, _ := s.podSeries("DCGM_FI_DEV_ENC_UTIL", shared, "webrtc-sfu-0")
	enc1, _ := s.podSeries("DCGM_FI_DEV_ENC_UTIL", shared, "webrtc-sfu-1")
	device, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "")
	t.Logf("shared T4: SM %v%% GPU-wide; webrtc-sfu-0 SM %v%% encoder %v%%, webrtc-sfu-1 SM %v%% encoder %v%%", device, sm0, enc0, sm1, enc1)

	// The same rule through the push stream, read by the real scaler with
	// KEDA's client: a pod alone on its GPU reads the GPU's value (the
	// unreadable process's 80 included); on the shared GPU each pod reads
	// its own share of a utilization its pods explain (the encoder, the
	// memory copy engine: 0 and 6 points unexplained) and the GPU's value
	// of one they do not (SM: 15 points, above the scaler's default 10).
	checkScalerRule(t, grpcAddr, []scalerWant{
		{"default", "inference-a", "gpu_util", 80},
		{"default", "inference-0", "gpu_util", 40},
		{"media", "webrtc-sfu-0", "enc_util", 30},
		{"media", "webrtc-sfu-1", "enc_util", 55},
		{"media", "webrtc-sfu-0", "mem_copy_util", 6},
		{"media", "webrtc-sfu-1", "mem_copy_util", 15},
		{"media", "webrtc-sfu-0", "gpu_util", mockGPUValue(mockSharedGPU, sm)},
		{"media", "webrtc-sfu-1", "gpu_util", mockGPUValue(mockSharedGPU, sm)},
	})

	// The names came through the agent's pod watch, scoped to its node.
	reqs := api.Requests()
	if len(reqs) == 0 || reqs[0].FieldSelector != "spec.nodeName=golden-node" {
		t.Errorf("API requests %+v: want the pod watch's, with fieldSelector spec.nodeName=golden-node", reqs)
	}
	if strings.Contains(a.Output(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", a.Output())
	}
}

// unattributedLoad is the GPU's gpu_agent_unattributed_utilization_ratio
// of the engine.
func unattributedLoad(s samples, uuid, engine string) (float64, bool) {
	for _, x := range s {
		if x.name == "gpu_agent_unattributed_utilization_ratio" && x.labels["UUID"] == uuid && x.labels["engine"] == engine {
			return x.value, true
		}
	}
	return 0, false
}

// scalerWant is what the scaler must answer for one pod's metric (avg
// over the pod alone).
type scalerWant struct {
	namespace, pod, metric string
	want                   float64
}

// checkScalerRule runs the scaler on the agent's stream and asks it, with
// KEDA's client, each pod's value.
func checkScalerRule(t *testing.T, agentGRPC string, wants []scalerWant) {
	t.Helper()
	scalerAddr, scalerWeb := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	scaler := testutil.StartT(t, "gpu-scaler", testutil.ProcOptions{}, scalerBinary(t), "--agents="+agentGRPC,
		"--grpc.listen-address="+scalerAddr, "--web.listen-address="+scalerWeb)
	if err := scaler.WaitHTTP(t.Context(), httpClient, "http://"+scalerWeb+"/healthz", readyTimeout); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(scalerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := kedaClient{externalscaler.NewExternalScalerClient(conn)}
	for _, w := range wants {
		ref := &externalscaler.ScaledObjectRef{Name: "rule", Namespace: w.namespace, ScalerMetadata: map[string]string{
			"metric": w.metric, "podPattern": w.pod, "aggregation": "avg", "target": "50"}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		spec, err := k.GetMetricSpec(ctx, ref)
		cancel()
		if err != nil || len(spec.GetMetricSpecs()) != 1 {
			t.Fatalf("GetMetricSpec %v: %v, %v", ref.ScalerMetadata, spec, err)
		}
		k.waitValue(t, ref, spec.GetMetricSpecs()[0].GetMetricName(), w.want, 10*time.Second, fmt.Sprintf("%s of %s/%s", w.metric, w.namespace, w.pod))
	}
}
