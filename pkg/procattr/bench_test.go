package procattr

import (
	"fmt"
	"testing"
	"testing/fstest"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/pkg/attribution"
	"github.com/gpu-telemetry/agent/pkg/podresources"
	"github.com/gpu-telemetry/agent/pkg/procpod"
	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// benchNode is 8 GPUs with 100 processes between them, each in a pod of its
// own, every GPU time-sliced between its processes' pods.
func benchNode() (*telemetry.Snapshot, fstest.MapFS, *Table, *podresources.Assignments) {
	const gpus, procs = 8, 100
	snap := &telemetry.Snapshot{Seq: 1, Devices: make([]telemetry.Device, gpus), States: make([]telemetry.DeviceState, gpus)}
	fsys := fstest.MapFS{}
	names := &Table{Containers: map[string]podresources.PodRef{}, Pods: map[string]podresources.PodRef{}}
	var gpuList []podresources.GPU
	for g := range gpus {
		snap.Devices[g] = telemetry.Device{Index: g, Minor: g, UUID: fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", g)}
		snap.States[g].ProcessSupport = telemetry.AllProcessData
		gpuList = append(gpuList, podresources.GPU{UUID: snap.Devices[g].UUID, Minor: g})
	}
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for i := range procs {
		g, pid := i%gpus, uint32(1000+i)
		uid := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		cid := fmt.Sprintf("%064x", i+1)
		fsys[fmt.Sprintf("%d/cgroup", pid)] = &fstest.MapFile{Data: cgroup(uid, cid)}
		ref := podresources.PodRef{Namespace: "media", Pod: fmt.Sprintf("sfu-%d", i), Container: "sfu"}
		names.Containers[cid] = ref
		resp.PodResources = append(resp.PodResources, &podresourcesv1.PodResources{Namespace: ref.Namespace, Name: ref.Pod,
			Containers: []*podresourcesv1.ContainerResources{{Name: ref.Container, Devices: []*podresourcesv1.ContainerDevices{
				{ResourceName: "nvidia.com/gpu.shared", DeviceIds: []string{fmt.Sprintf("%s::%d", snap.Devices[g].UUID, i)}},
			}}}})
		snap.States[g].Processes = append(snap.States[g].Processes, telemetry.ProcessSample{PID: pid, Has: telemetry.AllProcessData, SMUtil: 1, EncUtil: 1,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.002}}})
	}
	return snap, fsys, names, podresources.BuildAssignments(resp, podresources.NewResolver(gpuList))
}

// BenchmarkUpdate is the stage's steady state per tick: every PID cached,
// 100 map lookups and the names. The first read of a PID costs one cgroup
// file read more (procpod's BenchmarkResolveCold*).
func BenchmarkUpdate(b *testing.B) {
	snap, fsys, names, _ := benchNode()
	s := New(nil, procpod.NewResolverFS(fsys), names, nil)
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
	s := New(nil, procpod.NewResolverFS(fsys), names, nil)
	s.Update(snap)
	pp := s.ProcessPods()
	b.ReportAllocs()
	for b.Loop() {
		v := attribution.Attribute(snap, a, pp)
		if len(v.Devices[0].PerPod) == 0 {
			b.Fatal("no shares")
		}
	}
}
