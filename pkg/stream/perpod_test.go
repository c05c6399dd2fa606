package stream

import (
	"testing"

	"github.com/gpu-telemetry/agent/pkg/attribution"
	"github.com/gpu-telemetry/agent/pkg/podresources"
	"github.com/gpu-telemetry/agent/pkg/telemetry"
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
	pp := &attribution.ProcessPods{Seq: 1, Pods: map[uint32]podresources.PodRef{
		10: {Namespace: "media", Pod: "sfu-0", Container: "sfu"},
		11: {Namespace: "media", Pod: "sfu-1", Container: "sfu"},
	}}
	v := attribution.Attribute(snap, newTestPods().a, pp)
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
	if d0 := deviceMessage(&v.Devices[0], nil); d0.GetPods()[0].GpuUtil != nil {
		t.Errorf("GPU 0 has no per-process data, yet its pod has gpu_util %v", d0.GetPods()[0].GetGpuUtil())
	}
}
