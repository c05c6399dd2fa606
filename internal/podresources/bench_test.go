package podresources

import (
	"fmt"
	"testing"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// BenchmarkBuildAssignments110Pods refreshes the pod map from a kubelet
// answer for a full node (110 pods, the kubelet's default maximum): 64 of
// them share 8 GPUs by time-slicing, the rest hold no GPU but CPU-like
// resources. It runs once per poll period, never per scrape; it
// allocates the new immutable map that readers swap to.
func BenchmarkBuildAssignments110Pods(b *testing.B) {
	var gpus []GPU
	for i := range 8 {
		gpus = append(gpus, GPU{UUID: fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i), Minor: i})
	}
	r := NewResolver(gpus)
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for p := range 110 {
		c := &podresourcesv1.ContainerResources{Name: "main"}
		if p < 64 {
			c.Devices = []*podresourcesv1.ContainerDevices{{
				ResourceName: "nvidia.com/gpu.shared",
				DeviceIds:    []string{fmt.Sprintf("%s::%d", gpus[p%8].UUID, p/8)},
			}}
		} else {
			c.Devices = []*podresourcesv1.ContainerDevices{{ResourceName: "example.com/nic", DeviceIds: []string{fmt.Sprint(p)}}}
		}
		resp.PodResources = append(resp.PodResources, &podresourcesv1.PodResources{
			Namespace: "ns", Name: fmt.Sprintf("pod-%d", p), Containers: []*podresourcesv1.ContainerResources{c},
		})
	}
	if a := BuildAssignments(resp, r); a.Len() != 8 || len(a.Pods(gpus[0].UUID)) != 8 {
		b.Fatalf("unexpected map: %d devices", a.Len())
	}
	b.ReportAllocs()
	for b.Loop() {
		BuildAssignments(resp, r)
	}
}
