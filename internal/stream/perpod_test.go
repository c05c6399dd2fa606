package stream

import (
	"testing"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// The Pod messages of a shared GPU carry each pod's own share, as the
// exporter's pod series do; the device's fields stay the device's. A GPU
// without per-process data sends pods without values.
func TestPodShares(t *testing.T) {
	snap := snapshot(1)
	st := &snap.States[1]
	st.ProcessSupport = telemetry.AllProcessData.Without(telemetry.ProcFB) // framebuffer: the device's
	all := st.ProcessSupport
	st.Processes = []telemetry.ProcessSample{
		{PID: 10, Has: all, SMUtil: 4, EncUtil: 20,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.002}}},
		{PID: 11, Has: all, SMUtil: 7, EncUtil: 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecHEVC: {Sessions: 3, FPS: 25, LatencyMean: 0.004, LatencyMax: 0.005}}},
	}
	pp := &attribution.ProcessPods{Seq: 1, Pods: map[uint32]attribution.Pod{
		10: {Namespace: "media", Name: "sfu-0", Container: "sfu"},
		11: {Namespace: "media", Name: "sfu-1", Container: "sfu"},
	}}
	v := attribution.Attribute(snap, newTestPods().a.DevicePods(), pp)
	m := deviceMessage(&v.Devices[1], []*telemetry.Snapshot{snap})
	if m.GetEncUtil() != 50 || len(m.GetPods()) != 2 {
		t.Fatalf("device enc %v, %d pods", m.GetEncUtil(), len(m.GetPods()))
	}
	p0, p1 := m.GetPods()[0], m.GetPods()[1]
	if p0.GetName() != "sfu-0" || p0.GetEncUtil() != 20 || p1.GetEncUtil() != 30 || p0.GetGpuUtil() != 4 || p1.GetGpuUtil() != 7 {
		t.Errorf("pod shares: %v; %v", p0, p1)
	}
	if p1.GetEncoderSessions() != 3 || p1.GetEncoderFps() != 25 || p1.GetEncoderLatencyMaxSeconds() != 0.005 {
		t.Errorf("sfu-1 encoder: %v", p1)
	}
	if p0.FbUsedBytes != nil {
		t.Errorf("sfu-0 fb_used_bytes %d, want absent (no per-process framebuffer)", p0.GetFbUsedBytes())
	}
	if d0 := deviceMessage(&v.Devices[0], nil); d0.GetPods()[0].GpuUtil != nil || d0.UnattributedGpuUtil != nil {
		t.Errorf("GPU 0 has no per-process data, yet its pod has gpu_util %v, the device unattributed %v",
			d0.GetPods()[0].GetGpuUtil(), d0.GetUnattributedGpuUtil())
	}
	// The encoder load the pods' processes explain is all of it; the SM
	// load (11 on the device) is 4 + 7: nothing unattributed either.
	if m.UnattributedEncUtil == nil || m.GetUnattributedEncUtil() != 0 || m.GetUnattributedGpuUtil() != 0 {
		t.Errorf("unattributed encoder %v, SM %v; want 0, 0", m.UnattributedEncUtil, m.GetUnattributedGpuUtil())
	}
}

// A GPU held by one pod sends that pod without a share of its own, so the
// scaler reads the device's values for it, whatever the pod's processes
// show: here a process whose pod is not known carries all the load, and
// the device says so in its unattributed figures.
func TestOnePodNoShare(t *testing.T) {
	snap := snapshot(1)
	st := &snap.States[0] // held by one pod
	st.ProcessSupport = telemetry.AllProcessData
	st.Set(telemetry.GPUUtil, 80)
	st.Processes = []telemetry.ProcessSample{{PID: 99, Has: st.ProcessSupport, SMUtil: 80}}
	v := attribution.Attribute(snap, newTestPods().a.DevicePods(), &attribution.ProcessPods{Seq: 1, Pods: map[uint32]attribution.Pod{}})
	m := deviceMessage(&v.Devices[0], []*telemetry.Snapshot{snap})
	if len(m.GetPods()) != 1 {
		t.Fatalf("%d pods, want 1", len(m.GetPods()))
	}
	if p := m.GetPods()[0]; p.GpuUtil != nil || p.EncUtil != nil || p.FbUsedBytes != nil {
		t.Errorf("the one pod of a GPU carries a share: %v", p)
	}
	if m.GetGpuUtil() != 80 || m.UnattributedGpuUtil == nil || m.GetUnattributedGpuUtil() != 80 {
		t.Errorf("device GPU util %v, unattributed %v; want 80, 80", m.GetGpuUtil(), m.UnattributedGpuUtil)
	}
}
