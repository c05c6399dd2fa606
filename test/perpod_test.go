package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
)

// On the simulated node (its own kubelet, procfs and pod names), the two
// WebRTC pods time-sharing the last GPU each see their own encoder and SM
// utilization and their own encoder sessions, and the pods' shares add up
// to the device-level series.
func TestSharedGPUPerPod(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 4, Seed: 3, Static: true}).Devices()
	shared := devs[3].UUID()
	a := startAgent(t, "--simulate=4", "--simulate.seed=3", "--simulate.static",
		"--kubelet.pod-resources-socket="+t.TempDir()+"/none.sock")
	pods := []string{"webrtc-sfu-0", "webrtc-sfu-1"}
	s := a.waitMetrics(t, 10*time.Second, "per-pod series of the shared GPU", func(s samples) error {
		for _, p := range pods {
			if _, ok := s.podSeries("gpu_agent_pod_encoder_sessions", shared, p, "codec", "h264"); !ok {
				return fmt.Errorf("no gpu_agent_pod_encoder_sessions of %s", p)
			}
		}
		if _, ok := s.podSeries("DCGM_FI_DEV_ENC_UTIL", shared, ""); !ok {
			return fmt.Errorf("no device-level DCGM_FI_DEV_ENC_UTIL")
		}
		// A process is attributed from the tick after its cgroup was
		// read: until then it counts as unattributed and the pods' shares
		// leave it out. Every simulated process runs in a pod holding its
		// GPU, so this reaches 0 (or the wait fails).
		for _, d := range devs {
			if v, ok := s.podSeries("gpu_agent_unattributed_processes", d.UUID(), ""); !ok || v != 0 {
				return fmt.Errorf("GPU %s: gpu_agent_unattributed_processes %v (present %v)", d.UUID(), v, ok)
			}
		}
		return nil
	})
	for _, m := range []string{"DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} {
		device, _ := s.podSeries(m, shared, "")
		p0, _ := s.podSeries(m, shared, pods[0])
		p1, _ := s.podSeries(m, shared, pods[1])
		if p0 == p1 {
			t.Errorf("%s: both pods read %v; want each its own share", m, p0)
		}
		if p0+p1 != device {
			t.Errorf("%s: pods %v + %v = %v, want the device's %v", m, p0, p1, p0+p1, device)
		}
	}
	var sessions [2]float64
	for i, p := range pods {
		for _, codec := range []string{"h264", "hevc", "av1", "other"} {
			v, ok := s.podSeries("gpu_agent_pod_encoder_sessions", shared, p, "codec", codec)
			if !ok {
				t.Errorf("%s: no gpu_agent_pod_encoder_sessions{codec=%q}; an idle codec reads 0", p, codec)
			}
			sessions[i] += v
		}
	}
	if total, _ := s.podSeries("gpu_agent_encoder_sessions", shared, ""); sessions[0]+sessions[1] != total || sessions[0] == sessions[1] {
		t.Errorf("pod encoder sessions %v, device %v: want different shares adding up", sessions, total)
	}
}
