package attribution

import (
	"testing"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// sharedNode is node() with processes on the time-sliced GPU 1 (pods
// media/sfu-0 and sfu-1): one per pod, a host process, and a PID that
// exited before its cgroup was read (absent from the PID map).
func sharedNode() (*telemetry.Snapshot, *ProcessPods) {
	snap := node()
	st := &snap.States[1]
	st.ProcessSupport = telemetry.AllProcessData
	has := telemetry.AllProcessData
	st.Set(telemetry.EncUtil, 70)
	st.Set(telemetry.FBUsed, 3<<30)
	st.Processes = []telemetry.ProcessSample{
		{PID: 100, Has: has, SMUtil: 30, MemUtil: 10, EncUtil: 20, FBUsed: 1 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 2, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.003}}},
		{PID: 200, Has: has, SMUtil: 50, MemUtil: 20, EncUtil: 45, FBUsed: 1 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{
				telemetry.CodecH264: {Sessions: 3, FPS: 50, LatencyMean: 0.004, LatencyMax: 0.006},
				telemetry.CodecHEVC: {Sessions: 1, FPS: 60, LatencyMean: 0.008, LatencyMax: 0.008},
			}},
		{PID: 300, Has: has, SMUtil: 5, EncUtil: 5, FBUsed: 512 << 20}, // host process
		{PID: 400, Has: has, SMUtil: 1},                                // exited
	}
	pp := &ProcessPods{Seq: 1, Pods: map[uint32]Pod{
		100: {Namespace: "media", Name: "sfu-0", Container: "sfu"},
		200: {Namespace: "media", Name: "sfu-1", Container: "sidecar"}, // another container of the pod
	}}
	return snap, pp
}

func TestPerPodShares(t *testing.T) {
	snap, pp := sharedNode()
	v := Attribute(snap, assignments(), pp)
	d := &v.Devices[1]
	if d.GPU.UUID != uuidShared || len(d.Pods) != 2 || len(d.PerPod) != 2 {
		t.Fatalf("device 1: %s, %d pods, %d shares", d.GPU.UUID, len(d.Pods), len(d.PerPod))
	}
	if !d.ProcessesAttributed || d.Unattributed != 2 {
		t.Errorf("attributed %v, unattributed %d; want true, 2 (the host process and the exited PID)", d.ProcessesAttributed, d.Unattributed)
	}
	for _, tt := range []struct {
		pod          int
		field        telemetry.Field
		want         float64
		wantPresence bool
	}{
		{0, telemetry.GPUUtil, 30, true},
		{1, telemetry.GPUUtil, 50, true},
		{0, telemetry.EncUtil, 20, true},
		{1, telemetry.EncUtil, 45, true},
		{0, telemetry.MemCopyUtil, 10, true},
		{1, telemetry.FBUsed, 1 << 30, true},
		{0, telemetry.EncSessions, 2, true},
		{1, telemetry.EncSessions, 4, true},
		{1, telemetry.EncFPS, 52.5, true},      // (3×50 + 60) / 4
		{1, telemetry.EncLatency, 0.005, true}, // (3×0.004 + 0.008) / 4
		{0, telemetry.Temperature, 0, false},   // no per-process source: the device's (absent here)
		{0, telemetry.DecUtil, 0, true},        // a true 0
		{1, telemetry.PCIeTX, 0, false},        // the device has none
		{1, telemetry.MemCopyUtil, 20, true},
		{0, telemetry.FBUsed, 1 << 30, true},
		{0, telemetry.EncLatency, 0.002, true},
		{0, telemetry.EncFPS, 30, true},
		{1, telemetry.DecUtil, 0, true},
	} {
		got, ok := d.PodValue(tt.pod, tt.field)
		if ok != tt.wantPresence || (ok && !near(got, tt.want)) {
			t.Errorf("pod %d %s = %v, %v; want %v, %v", tt.pod, tt.field, got, ok, tt.want, tt.wantPresence)
		}
	}
	if e := d.PerPod[1].Encoder[telemetry.CodecHEVC]; e.Sessions != 1 || e.LatencyMax != 0.008 {
		t.Errorf("sfu-1 HEVC = %+v", e)
	}
	if e := d.PerPod[1].Encoder[telemetry.CodecH264]; e.Sessions != 3 || e.FPS != 50 || e.LatencyMax != 0.006 {
		t.Errorf("sfu-1 H264 = %+v", e)
	}
	// The whole GPU held by one pod has no per-process data: today's
	// behaviour, the device's value.
	if w := &v.Devices[0]; w.PerPod != nil || w.ProcessesAttributed {
		t.Errorf("GPU 0 without per-process data got shares %+v", w.PerPod)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// A pod with no process on the GPU this tick reads 0, not the GPU's
// value; one with nothing running at all too.
func TestPerPodIdlePodGetsZero(t *testing.T) {
	snap, pp := sharedNode()
	snap.States[1].Processes = snap.States[1].Processes[1:] // sfu-0's process is gone
	d := &Attribute(snap, assignments(), pp).Devices[1]
	for _, f := range []telemetry.Field{telemetry.GPUUtil, telemetry.EncUtil, telemetry.FBUsed, telemetry.EncSessions} {
		if v, ok := d.PodValue(0, f); !ok || v != 0 {
			t.Errorf("idle sfu-0 %s = %v, %v; want 0, true", f, v, ok)
		}
	}
	snap.States[1].Processes = nil
	d = &Attribute(snap, assignments(), pp).Devices[1]
	if v, ok := d.PodValue(1, telemetry.EncUtil); !ok || v != 0 {
		t.Errorf("no process at all: sfu-1 enc = %v, %v; want 0, true", v, ok)
	}
	if d.Unattributed != 0 {
		t.Errorf("unattributed %d, want 0", d.Unattributed)
	}
}

// Without a PID map (no name source, or one not synced) every pod keeps
// the device's value; a source that failed this tick makes its fields
// absent rather than the device's.
func TestPerPodWithoutMapOrSource(t *testing.T) {
	snap, pp := sharedNode()
	d := &Attribute(snap, assignments(), nil).Devices[1]
	if d.PerPod != nil {
		t.Fatal("shares without a PID map")
	}
	if v, _ := d.PodValue(0, telemetry.EncUtil); v != 70 {
		t.Errorf("without a map sfu-0 enc = %v, want the device's 70", v)
	}
	for i := range snap.States[1].Processes {
		snap.States[1].Processes[i].Has = snap.States[1].Processes[i].Has.Without(telemetry.ProcFB)
	}
	d = &Attribute(snap, assignments(), pp).Devices[1]
	if v, ok := d.PodValue(0, telemetry.FBUsed); ok {
		t.Errorf("framebuffer failed this tick: sfu-0 fb = %v, want absent", v)
	}
	snap.States[1].ProcessSupport = snap.States[1].ProcessSupport.Without(telemetry.ProcFB)
	d = &Attribute(snap, assignments(), pp).Devices[1]
	if v, ok := d.PodValue(0, telemetry.FBUsed); !ok || v != 3<<30 {
		t.Errorf("framebuffer unsupported: sfu-0 fb = %v, %v; want the device's", v, ok)
	}
}

// The Attributor rebuilds the view when the PID map changes, not only the
// snapshot or the pod map.
func TestAttributorFollowsProcessPods(t *testing.T) {
	snap, pp := sharedNode()
	procs := &fixedProcs{}
	at := NewAttributor(fixedSnap{snap}, fixedAssignments{assignments()}, procs)
	if at.Latest().Devices[1].PerPod != nil {
		t.Fatal("shares before any PID map")
	}
	procs.pp = pp
	if at.Latest().Devices[1].PerPod == nil {
		t.Fatal("no shares once the PID map exists")
	}
}

type fixedSnap struct{ s *telemetry.Snapshot }

func (f fixedSnap) Latest() *telemetry.Snapshot { return f.s }

type fixedAssignments struct{ a *DevicePods }

func (f fixedAssignments) DevicePods() *DevicePods { return f.a }
func (f fixedAssignments) Stale() bool             { return false }

type fixedProcs struct{ pp *ProcessPods }

func (f *fixedProcs) ProcessPods() *ProcessPods { return f.pp }

// A GPU held by one pod is that pod's: the pod reads the device's value
// whatever process attribution says. The case a user hit: a whole T4
// 80% busy, its one process's cgroup unreadable (the PID exited, or
// --path.procfs is not the host's /proc), so no process is the pod's; a
// share would read 0 and scale the busy service in.
func TestOnePodReadsItsGPU(t *testing.T) {
	snap, pp := sharedNode()
	st := &snap.States[0]
	st.ProcessSupport = telemetry.AllProcessData
	st.Set(telemetry.GPUUtil, 80)
	st.Processes = []telemetry.ProcessSample{{PID: 999, Has: telemetry.AllProcessData, SMUtil: 80, FBUsed: 1 << 30}}
	d := &Attribute(snap, assignments(), pp).Devices[0]
	if d.Shared || d.PerPod != nil {
		t.Fatalf("GPU held by one pod: shared %v, shares %+v; want neither", d.Shared, d.PerPod)
	}
	if v, ok := d.PodValue(0, telemetry.GPUUtil); !ok || v != 80 {
		t.Errorf("inference-0 GPU util = %v, %v; want the device's 80", v, ok)
	}
	if !d.ProcessesAttributed || d.Unattributed != 1 {
		t.Errorf("attributed %v, unattributed %d; want true, 1", d.ProcessesAttributed, d.Unattributed)
	}
	if v, ok := d.UnattributedLoad.Get(telemetry.GPUUtil); !ok || v != 80 {
		t.Errorf("unattributed GPU load = %v, %v; want 80", v, ok)
	}

	// Its process resolved: still the device's value, and nothing left
	// unexplained.
	pp.Pods[999] = Pod{Namespace: "ml", Name: "inference-0", Container: "server"}
	d = &Attribute(snap, assignments(), pp).Devices[0]
	if v, _ := d.PodValue(0, telemetry.GPUUtil); v != 80 || d.Unattributed != 0 {
		t.Errorf("resolved: GPU util %v, unattributed %d; want 80, 0", v, d.Unattributed)
	}
	if v, ok := d.UnattributedLoad.Get(telemetry.GPUUtil); !ok || v != 0 {
		t.Errorf("resolved: unattributed GPU load = %v, %v; want 0", v, ok)
	}
}

// What the pods of a shared GPU do not explain is the device's value less
// their shares, per utilization field, never below 0; a field whose
// per-process source failed this tick has none.
func TestUnattributedLoad(t *testing.T) {
	snap, pp := sharedNode()
	snap.States[1].Set(telemetry.MemCopyUtil, 25)
	d := &Attribute(snap, assignments(), pp).Devices[1]
	for _, c := range []struct {
		f    telemetry.Field
		want float64
	}{
		{telemetry.GPUUtil, 0},     // the device's 11 against shares of 30 + 50
		{telemetry.MemCopyUtil, 0}, // 25 - (10 + 20): below 0 is 0
		{telemetry.EncUtil, 5},     // 70 - (20 + 45): the host process's 5
	} {
		if v, ok := d.UnattributedLoad.Get(c.f); !ok || !near(v, c.want) {
			t.Errorf("unattributed %s = %v, %v; want %v", c.f, v, ok, c.want)
		}
	}
	if _, ok := d.UnattributedLoad.Get(telemetry.DecUtil); ok {
		t.Error("unattributed decoder load without a device decoder value")
	}
	for i := range snap.States[1].Processes {
		snap.States[1].Processes[i].Has = snap.States[1].Processes[i].Has.Without(telemetry.ProcUtil)
	}
	d = &Attribute(snap, assignments(), pp).Devices[1]
	if v, ok := d.UnattributedLoad.Get(telemetry.EncUtil); ok {
		t.Errorf("per-process utilization failed this tick: unattributed encoder load %v, want absent", v)
	}
}

// Two containers of one pod on one GPU are still one pod: not shared.
func TestContainersOfOnePodAreNotShared(t *testing.T) {
	a := NewDevicePods(map[string][]Pod{uuidShared: {
		{Namespace: "media", Name: "sfu-0", Container: "sfu"}, {Namespace: "media", Name: "sfu-0", Container: "recorder"},
	}})
	snap, pp := sharedNode()
	snap.Devices, snap.States = snap.Devices[1:2], snap.States[1:2]
	d := &Attribute(snap, a, pp).Devices[0]
	if len(d.Pods) != 2 || d.Shared || d.PerPod != nil {
		t.Errorf("one pod's two containers: %d pod refs, shared %v, shares %v; want 2, false, none", len(d.Pods), d.Shared, d.PerPod != nil)
	}
}
