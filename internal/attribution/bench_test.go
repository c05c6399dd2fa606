package attribution

import (
	"fmt"
	"testing"
	"testing/fstest"

	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// benchNode is 8 GPUs with 100 processes between them, each in a pod of its
// own, every GPU time-sliced between its processes' pods.
func benchNode() (*telemetry.Snapshot, fstest.MapFS, *NameTable, *DevicePods) {
	const gpus, procs = 8, 100
	snap := &telemetry.Snapshot{Seq: 1, Devices: make([]telemetry.Device, gpus), States: make([]telemetry.DeviceState, gpus)}
	fsys := fstest.MapFS{}
	names := &NameTable{Containers: map[string]Pod{}, Pods: map[string]Pod{}}
	byDevice := map[string][]Pod{}
	for g := range gpus {
		snap.Devices[g] = telemetry.Device{Index: g, Minor: g, UUID: fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", g)}
		snap.States[g].ProcessSupport = telemetry.AllProcessData
	}
	for i := range procs {
		g, pid := i%gpus, uint32(1000+i)
		uid := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		cid := fmt.Sprintf("%064x", i+1)
		fsys[fmt.Sprintf("%d/cgroup", pid)] = &fstest.MapFile{Data: cgroupLine(uid, cid)}
		ref := Pod{Namespace: "media", Name: fmt.Sprintf("sfu-%d", i), Container: "sfu"}
		names.Containers[cid] = ref
		byDevice[snap.Devices[g].UUID] = append(byDevice[snap.Devices[g].UUID], ref)
		snap.States[g].Processes = append(snap.States[g].Processes, telemetry.ProcessSample{PID: pid, Has: telemetry.AllProcessData, SMUtil: 1, EncUtil: 1,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.002}}})
	}
	return snap, fsys, names, NewDevicePods(byDevice)
}

// BenchmarkUpdate is the process stage's steady state per tick: every PID cached,
// 100 map lookups and the names. The first read of a PID costs one cgroup
// file read more (cgroup's BenchmarkResolveCold*).
func BenchmarkProcessStageUpdate(b *testing.B) {
	snap, fsys, names, _ := benchNode()
	s := NewProcessStage(nil, cgroup.NewResolverFS(fsys), names, nil)
	b.ReportAllocs()
	for b.Loop() {
		s.Update(snap)
	}
}

// BenchmarkAttributeProcesses is the join of a snapshot with the pod map and
// the PID map, once per snapshot per reader kind (the exporter's cached
// view, the stream's item).
func BenchmarkAttributeProcesses(b *testing.B) {
	snap, fsys, names, a := benchNode()
	s := NewProcessStage(nil, cgroup.NewResolverFS(fsys), names, nil)
	s.Update(snap)
	pp := s.ProcessPods()
	b.ReportAllocs()
	for b.Loop() {
		v := Attribute(snap, a, pp)
		if len(v.Devices[0].PerPod) == 0 {
			b.Fatal("no shares")
		}
	}
}
