package exporter

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// withProcesses gives testSnapshot's time-sliced GPU 1 (pods media/sfu-0
// and sfu-1) a process per pod and a host process.
func withProcesses(snap *telemetry.Snapshot) (*telemetry.Snapshot, fixedProcesses) {
	st := &snap.States[1]
	st.ProcessSupport = telemetry.AllProcessData
	st.Set(telemetry.EncUtil, 50)
	all := telemetry.AllProcessData
	st.Processes = []telemetry.ProcessSample{
		{PID: 10, Has: all, SMUtil: 4, EncUtil: 20, FBUsed: 1 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.002}}},
		{PID: 11, Has: all, SMUtil: 7, EncUtil: 30, FBUsed: 2 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecHEVC: {Sessions: 3, FPS: 25, LatencyMean: 0.004, LatencyMax: 0.005}}},
		{PID: 12, Has: all, SMUtil: 1}, // a host process
	}
	return snap, fixedProcesses{&attribution.ProcessPods{Seq: snap.Seq, Pods: map[uint32]attribution.Pod{
		10: {Namespace: "media", Name: "sfu-0", Container: "sfu"},
		11: {Namespace: "media", Name: "sfu-1", Container: "sfu"},
	}}}
}

type fixedProcesses struct{ pp *attribution.ProcessPods }

func (f fixedProcesses) ProcessPods() *attribution.ProcessPods { return f.pp }

// With per-process data, a shared GPU's pod series of the per-process
// fields carry each pod's own share, the device-level series stays, and
// the fields without a per-process source (power) are on the
// device-level series only, so a sum over series counts the GPU once;
// a GPU held by one pod without per-process data keeps every field on
// its pod series, as dcgm-exporter writes it.
func TestPerPodShares(t *testing.T) {
	snap, procs := withProcesses(testSnapshot())
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), procs), Options{Hostname: "node-a", Interval: 250 * time.Millisecond, DriverVersion: "550.54.15"})
	const gpu1 = `DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",`
	const labels = `device="nvidia1",gpu="1",modelName="Tesla T4",`
	const want = `
# HELP DCGM_FI_DEV_ENC_UTIL Encoder utilization (in %).
# TYPE DCGM_FI_DEV_ENC_UTIL gauge
DCGM_FI_DEV_ENC_UTIL{` + gpu1 + labels + `pci_bus_id="00000000:3C:00.0"} 50
DCGM_FI_DEV_ENC_UTIL{` + gpu1 + `container="sfu",` + labels + `namespace="media",pci_bus_id="00000000:3C:00.0",pod="sfu-0"} 20
DCGM_FI_DEV_ENC_UTIL{` + gpu1 + `container="sfu",` + labels + `namespace="media",pci_bus_id="00000000:3C:00.0",pod="sfu-1"} 30
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 42.5
DCGM_FI_DEV_POWER_USAGE{` + gpu1 + labels + `pci_bus_id="00000000:3C:00.0"} 30
DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",device="nvidia2",gpu="2",modelName="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:3D:00.0"} 90
# HELP gpu_agent_unattributed_processes Processes on the GPU that are in none of the pods holding it (host processes, other pods, PIDs gone before their pod was read); left out of the per-pod shares.
# TYPE gpu_agent_unattributed_processes gauge
gpu_agent_unattributed_processes{UUID="GPU-11111111-1111-1111-1111-111111111111",gpu="1"} 1
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_POWER_USAGE", "gpu_agent_unattributed_processes"); err != nil {
		t.Error(err)
	}
	const wantSessions = `
# HELP gpu_agent_pod_encoder_sessions The pod's own active NVENC encoder sessions, by codec.
# TYPE gpu_agent_pod_encoder_sessions gauge
`
	var b strings.Builder
	b.WriteString(wantSessions)
	for _, p := range []struct {
		pod           string
		h264, hevc, _ int
	}{{"sfu-0", 1, 0, 0}, {"sfu-1", 0, 3, 0}} {
		for _, cv := range []struct {
			codec string
			n     int
		}{{"av1", 0}, {"h264", p.h264}, {"hevc", p.hevc}, {"other", 0}} {
			b.WriteString(`gpu_agent_pod_encoder_sessions{` + gpu1 + `codec="` + cv.codec + `",container="sfu",` + labels +
				`namespace="media",pci_bus_id="00000000:3C:00.0",pod="` + p.pod + `"} ` + string(rune('0'+cv.n)) + "\n")
		}
	}
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(b.String()), "gpu_agent_pod_encoder_sessions"); err != nil {
		t.Error(err)
	}
	// Frame rate and latency only for the codec each pod encodes: sfu-0's
	// h264, sfu-1's hevc.
	if n := testutil.CollectAndCount(c.Latest(), "gpu_agent_pod_encoder_latency_seconds"); n != 2*2 {
		t.Errorf("%d gpu_agent_pod_encoder_latency_seconds series, want 4 (2 pods, one codec each, mean and max)", n)
	}
	if n := testutil.CollectAndCount(c.Latest(), "gpu_agent_pod_encoder_fps"); n != 2 {
		t.Errorf("%d gpu_agent_pod_encoder_fps series, want 2 (2 pods, one codec each)", n)
	}
}

// A GPU held by one pod, with per-process data that explains only part of
// its load: the pod's series is the GPU's one series, the device's values
// (60, not its process's 45), every field on it as dcgm-exporter writes a
// whole GPU; no device-level series beside it, so a sum counts the GPU
// once; what no pod's process explains is its own metric.
func TestPerPodSharesOnePod(t *testing.T) {
	snap := testSnapshot()
	st := &snap.States[0] // inference-0's GPU
	st.ProcessSupport = telemetry.AllProcessData
	st.Set(telemetry.GPUUtil, 60)
	st.Processes = []telemetry.ProcessSample{
		{PID: 20, Has: telemetry.AllProcessData, SMUtil: 45},
		{PID: 21, Has: telemetry.AllProcessData, SMUtil: 15}, // a host process
	}
	procs := fixedProcesses{&attribution.ProcessPods{Seq: snap.Seq, Pods: map[uint32]attribution.Pod{
		20: {Namespace: "ml", Name: "inference-0", Container: "server"},
	}}}
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), procs), Options{Hostname: "node-a", Interval: 250 * time.Millisecond, DriverVersion: "550.54.15"})
	const gpu0 = `DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",`
	const pod = `container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"`
	const want = `
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{` + gpu0 + pod + `} 60
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{` + gpu0 + pod + `} 42.5
# HELP gpu_agent_unattributed_processes Processes on the GPU that are in none of the pods holding it (host processes, other pods, PIDs gone before their pod was read); left out of the per-pod shares.
# TYPE gpu_agent_unattributed_processes gauge
gpu_agent_unattributed_processes{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0"} 1
# HELP gpu_agent_unattributed_utilization_ratio The part of the engine's utilization that the processes of the pods holding the GPU do not explain (host processes, other pods, PIDs whose pod is not known); never below 0.
# TYPE gpu_agent_unattributed_utilization_ratio gauge
gpu_agent_unattributed_utilization_ratio{UUID="GPU-00000000-0000-0000-0000-000000000000",engine="gpu",gpu="0"} 0.15
`
	got, err := testutil.CollectAndFormat(c.Latest(), expfmt.TypeTextPlain, "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE",
		"gpu_agent_unattributed_processes", "gpu_agent_unattributed_utilization_ratio")
	if err != nil {
		t.Fatal(err)
	}
	var kept strings.Builder
	for _, l := range strings.Split(string(got), "\n") {
		// GPUs 1 and 2 are not what this test is about.
		if l != "" && (!strings.Contains(l, "{") || strings.Contains(l, `gpu="0"`)) {
			kept.WriteString(l + "\n")
		}
	}
	if strings.TrimSpace(kept.String()) != strings.TrimSpace(want) {
		t.Errorf("GPU 0's series:\n%s\nwant:\n%s", kept.String(), want)
	}
}
