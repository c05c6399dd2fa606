package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	fk "github.com/gpu-telemetry/agent/pkg/podresources/fakekubelet"
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
}

// The node: GPU 0 held by one inference pod (Guaranteed QoS); GPU 3
// time-sliced between two WebRTC media servers (Burstable and BestEffort)
// with a host process beside them (a recorder run by systemd) and one
// that exited before its /proc was read (no directory in the fake
// procfs). Every cgroup is v2 with the systemd driver and containerd, as
// on a GKE or EKS node.
var mockProcs = []mockProc{
	{pid: 4001, gpu: 0, sm: 40, mem: 12, enc: 0, dec: 0, fbMiB: 2048, namespace: "default", pod: "inference-0",
		uid: "6f1c2a3b-4d5e-4f60-8a71-b2c3d4e5f601", cid: "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"},
	{pid: 4101, gpu: 3, sm: 20, mem: 6, enc: 30, dec: 10, fbMiB: 1024, namespace: "media", pod: "webrtc-sfu-0",
		uid: "0e5d7c1a-9b3f-4c2e-a8d6-3f1b2c4d5e60", cid: "5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"},
	{pid: 4102, gpu: 3, sm: 45, mem: 15, enc: 55, dec: 20, fbMiB: 3072, namespace: "media", pod: "webrtc-sfu-1",
		uid: "7b2e9f4c-1d8a-4e3b-9c5f-6a0d2e8b4c71", cid: "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"},
	{pid: 4103, gpu: 3, sm: 10, mem: 4, enc: 5, dec: 0, fbMiB: 512}, // host process
	{pid: 4199, gpu: 3, sm: 5, mem: 2, enc: 0, dec: 0, fbMiB: 256},  // exited
}

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
		case p.pid == 4199:
			if err == nil {
				t.Fatalf("PID 4199 stands for an exited process: the fake procfs must not have it")
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

	a := startAgentEnv(t, []string{"MOCK_NVML_CONFIG=" + profileFile},
		"--nvml.library-path="+lib, "--interval=250ms",
		"--kubelet.pod-resources-socket="+kubelet.Path(),
		"--path.procfs="+procfs, "--kubeconfig="+kubeconfig)

	shared := uuid(3)
	s := a.waitMetrics(t, 15*time.Second, "each pod's own share", func(s samples) error {
		for _, p := range mockProcs {
			if p.pod == "" {
				continue
			}
			if v, ok := s.podSeries("DCGM_FI_DEV_GPU_UTIL", uuid(p.gpu), p.pod); !ok || v != float64(p.sm) {
				return fmt.Errorf("%s: DCGM_FI_DEV_GPU_UTIL %v (present %v), want its process's %d", p.pod, v, ok, p.sm)
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

	for _, p := range mockProcs {
		if p.pod == "" {
			continue
		}
		for metric, want := range map[string]float64{
			"DCGM_FI_DEV_GPU_UTIL":      float64(p.sm),
			"DCGM_FI_DEV_MEM_COPY_UTIL": float64(p.mem),
			"DCGM_FI_DEV_ENC_UTIL":      float64(p.enc),
			"DCGM_FI_DEV_DEC_UTIL":      float64(p.dec),
			"DCGM_FI_DEV_FB_USED":       float64(p.fbMiB),
		} {
			got, ok := s.podSeries(metric, uuid(p.gpu), p.pod)
			if !ok || got != want {
				t.Errorf("%s/%s %s = %v (present %v), want its own %v", p.namespace, p.pod, metric, got, ok, want)
			}
		}
	}

	// The host process and the exited one are left out, and counted.
	if v, ok := s.podSeries("gpu_agent_unattributed_processes", shared, ""); !ok || v != 2 {
		t.Errorf("shared GPU: gpu_agent_unattributed_processes %v (present %v), want 2 (the host process and the exited one)", v, ok)
	}
	if v, ok := s.podSeries("gpu_agent_unattributed_processes", uuid(0), ""); !ok || v != 0 {
		t.Errorf("GPU 0: gpu_agent_unattributed_processes %v (present %v), want 0", v, ok)
	}

	// The GPU-wide series stay the GPU's, and add up: the pods' shares and
	// the processes left out.
	for _, c := range []struct {
		metric string
		of     func(mockProc) int
	}{
		{"DCGM_FI_DEV_GPU_UTIL", func(p mockProc) int { return p.sm }},
		{"DCGM_FI_DEV_MEM_COPY_UTIL", func(p mockProc) int { return p.mem }},
		{"DCGM_FI_DEV_FB_USED", func(p mockProc) int { return p.fbMiB }},
	} {
		for _, gpu := range []int{0, 3} {
			device, ok := s.podSeries(c.metric, uuid(gpu), "")
			if !ok {
				t.Errorf("GPU %d: no device-level %s", gpu, c.metric)
				continue
			}
			var pods, leftOut float64
			for _, p := range mockProcs {
				switch {
				case p.gpu != gpu:
				case p.pod != "":
					v, _ := s.podSeries(c.metric, uuid(gpu), p.pod)
					pods += v
				default:
					leftOut += float64(c.of(p))
				}
			}
			if pods+leftOut != device {
				t.Errorf("GPU %d %s: pods %v + left out %v = %v, want the device's %v", gpu, c.metric, pods, leftOut, pods+leftOut, device)
			}
		}
	}
	sm0, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "webrtc-sfu-0")
	sm1, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "webrtc-sfu-1")
	enc0, _ := s.podSeries("DCGM_FI_DEV_ENC_UTIL", shared, "webrtc-sfu-0")
	enc1, _ := s.podSeries("DCGM_FI_DEV_ENC_UTIL", shared, "webrtc-sfu-1")
	device, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", shared, "")
	t.Logf("shared T4: SM %v%% GPU-wide; webrtc-sfu-0 SM %v%% encoder %v%%, webrtc-sfu-1 SM %v%% encoder %v%%", device, sm0, enc0, sm1, enc1)

	// The names came through the agent's pod watch, scoped to its node.
	reqs := api.Requests()
	if len(reqs) == 0 || reqs[0].FieldSelector != "spec.nodeName=golden-node" {
		t.Errorf("API requests %+v: want the pod watch's, with fieldSelector spec.nodeName=golden-node", reqs)
	}
	if strings.Contains(a.output.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", a.output.String())
	}
}
