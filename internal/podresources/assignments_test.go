package podresources_test

import (
	"slices"
	"testing"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// mixedNode is a node with every kind of allocation the agent must
// attribute, plus resources it must ignore.
func mixedNode() []*podresourcesv1.PodResources {
	dev, ctr, pod := fakekubelet.Devices, fakekubelet.Container, fakekubelet.Pod
	return []*podresourcesv1.PodResources{
		// A NIC of the Network Operator next to the GPU: an NVIDIA
		// resource that is no GPU, neither attributed nor unresolved.
		pod("ml", "trainer",
			ctr("main", dev("nvidia.com/gpu", gpu0), dev("example.com/foo", "foo-0"), dev("nvidia.com/hostdev", "0000:3b:00.1"))),
		// Time-slicing: two pods share gpu1 through replicas.
		pod("web", "encoder-b", ctr("enc", dev("nvidia.com/gpu.shared", gpu1+"::1"))),
		pod("web", "encoder-a", ctr("enc", dev("nvidia.com/gpu.shared", gpu1+"::0"))),
		pod("ml", "infer",
			ctr("model", dev("nvidia.com/mig-1g.5gb", migA)),
			ctr("sidecar", dev("example.com/foo", gpu3))), // non-GPU resource: ignored
		pod("gke", "job", ctr("c", dev("nvidia.com/gpu", "nvidia3/vgpu1"))),
	}
}

func wantMixed(t *testing.T, a *podresources.Assignments) {
	t.Helper()
	want := map[string][]attribution.Pod{
		gpu0: {{Namespace: "ml", Name: "trainer", Container: "main"}},
		gpu1: {{Namespace: "web", Name: "encoder-a", Container: "enc"}, {Namespace: "web", Name: "encoder-b", Container: "enc"}},
		migA: {{Namespace: "ml", Name: "infer", Container: "model"}},
		gpu3: {{Namespace: "gke", Name: "job", Container: "c"}},
	}
	for uuid, pods := range want {
		if got := a.Pods(uuid); !slices.Equal(got, pods) {
			t.Errorf("Pods(%s) = %v, want %v", uuid, got, pods)
		}
	}
	if got := a.Pods(gpu2); got != nil {
		t.Errorf("Pods(%s) = %v, want nil for an unallocated GPU", gpu2, got)
	}
	if a.Len() != len(want) {
		t.Errorf("Len() = %d, want %d", a.Len(), len(want))
	}
	if a.Unresolved() != 0 {
		t.Errorf("Unresolved() = %d, want 0", a.Unresolved())
	}
}

func TestBuildAssignments(t *testing.T) {
	a := podresources.BuildAssignments(&podresourcesv1.ListPodResourcesResponse{PodResources: mixedNode()},
		podresources.NewResolver(testInventory()))
	wantMixed(t, a)
}

func TestBuildAssignmentsDeduplicatesAndSorts(t *testing.T) {
	dev, ctr, pod := fakekubelet.Devices, fakekubelet.Container, fakekubelet.Pod
	resp := &podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{
		// One container holding two replicas of the same GPU, twice listed.
		pod("b", "p", ctr("c", dev("nvidia.com/gpu", gpu0+"::0", gpu0+"::1"), dev("nvidia.com/gpu", "nvidia0"))),
		pod("a", "q", ctr("z", dev("nvidia.com/gpu", gpu0)), ctr("y", dev("nvidia.com/gpu", gpu0))),
		pod("a", "p", ctr("c", dev("nvidia.com/gpu", gpu0+"::2"))),
	}}
	a := podresources.BuildAssignments(resp, podresources.NewResolver(testInventory()))
	want := []attribution.Pod{
		{Namespace: "a", Name: "p", Container: "c"},
		{Namespace: "a", Name: "q", Container: "y"},
		{Namespace: "a", Name: "q", Container: "z"},
		{Namespace: "b", Name: "p", Container: "c"},
	}
	if got := a.Pods(gpu0); !slices.Equal(got, want) {
		t.Fatalf("Pods = %v, want %v", got, want)
	}
}

func TestBuildAssignmentsGarbage(t *testing.T) {
	resp := &podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{
		nil,
		{Namespace: "ns", Name: "nil-containers"},
		{Namespace: "ns", Name: "nil-entries", Containers: []*podresourcesv1.ContainerResources{
			nil,
			{Name: "c", Devices: []*podresourcesv1.ContainerDevices{
				nil,
				{ResourceName: "nvidia.com/gpu"}, // no ids
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{"", "GPU-", "bogus", gpu0 + "::x"}},
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{"GPU-99999999-9999-4999-8999-999999999999", "nvidia42"}},
				{ResourceName: "example.com/foo", DeviceIds: []string{"garbage not counted"}},
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{gpu1}},
			}},
		}},
	}}
	a := podresources.BuildAssignments(resp, podresources.NewResolver(testInventory()))
	if got := a.Unresolved(); got != 6 {
		t.Errorf("Unresolved() = %d, want 6 (4 unparseable, 2 unknown)", got)
	}
	if got, want := a.Pods(gpu1), []attribution.Pod{{Namespace: "ns", Name: "nil-entries", Container: "c"}}; !slices.Equal(got, want) {
		t.Errorf("Pods(gpu1) = %v, want %v", got, want)
	}
	if a.Len() != 1 {
		t.Errorf("Len() = %d, want 1", a.Len())
	}

	for _, r := range []*podresourcesv1.ListPodResourcesResponse{nil, {}} {
		if a := podresources.BuildAssignments(r, podresources.NewResolver(nil)); a.Len() != 0 || a.Unresolved() != 0 {
			t.Errorf("BuildAssignments(%v) = len %d, unresolved %d; want empty", r, a.Len(), a.Unresolved())
		}
	}
}

func TestAssignmentsNilReceiver(t *testing.T) {
	var a *podresources.Assignments
	if a.Pods(gpu0) != nil || a.Len() != 0 || a.Unresolved() != 0 {
		t.Fatal("nil *Assignments must read as empty")
	}
}

func TestAssignmentsPodsIsACopy(t *testing.T) {
	a := podresources.BuildAssignments(&podresourcesv1.ListPodResourcesResponse{PodResources: mixedNode()},
		podresources.NewResolver(testInventory()))
	got := a.Pods(gpu1)
	got[0].Name = "mutated"
	if a.Pods(gpu1)[0].Name != "encoder-a" {
		t.Fatal("mutating the result of Pods changed the shared map")
	}
}

// TestBuildAssignmentsGPUResourcesOnly checks that only GPU resource names
// are attributed: NVIDIA's other resources (the Network Operator's NICs)
// are neither attributed nor counted unresolved, whatever their IDs.
func TestBuildAssignmentsGPUResourcesOnly(t *testing.T) {
	dev, ctr, pod := fakekubelet.Devices, fakekubelet.Container, fakekubelet.Pod
	resp := &podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{
		pod("net", "rdma", ctr("c",
			dev("nvidia.com/hostdev", "0000:3b:00.1", "0000:3b:00.2"),
			dev("nvidia.com/rdma_shared_device_a", "rdma-0"),
			dev("nvidia.com/gpu", gpu0))),
		pod("ml", "shared-mig", ctr("c", dev("nvidia.com/mig-1g.5gb.shared", migA+"::1"))),
		pod("ml", "renamed", ctr("c", dev("nvidia.com/gpu.shared", gpu1+"::0"))),
		pod("ml", "custom", ctr("c", dev("nvidia.com/t4", gpu3), dev("nvidia.com/t4-x", "GPU-unknown"))),
	}}
	a := podresources.BuildAssignments(resp, podresources.NewResolver(testInventory()))
	for uuid, pod := range map[string]string{gpu0: "rdma", migA: "shared-mig", gpu1: "renamed"} {
		if got := a.Pods(uuid); len(got) != 1 || got[0].Name != pod {
			t.Errorf("Pods(%s) = %v, want pod %s", uuid, got, pod)
		}
	}
	if a.Len() != 3 || a.Unresolved() != 0 {
		t.Errorf("Len() = %d, Unresolved() = %d; want 3, 0 (a custom name is ignored unless given)", a.Len(), a.Unresolved())
	}

	// Given as an extra name, the custom resource is a GPU, matched
	// exactly: its look-alike stays ignored.
	a = podresources.BuildAssignments(resp, podresources.NewResolver(testInventory()), "nvidia.com/t4")
	if got := a.Pods(gpu3); len(got) != 1 || got[0].Name != "custom" {
		t.Errorf("with nvidia.com/t4 given, Pods(gpu3) = %v, want pod custom", got)
	}
	if a.Len() != 4 || a.Unresolved() != 0 {
		t.Errorf("Len() = %d, Unresolved() = %d; want 4, 0", a.Len(), a.Unresolved())
	}
}

func TestValidResourceName(t *testing.T) {
	for _, ok := range []string{"nvidia.com/gpu", "nvidia.com/t4", "example.com/a100-80gb", "nvidia.com/mig-1g.5gb"} {
		if err := podresources.ValidResourceName(ok); err != nil {
			t.Errorf("ValidResourceName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "gpu", "/gpu", "nvidia.com/", "nvidia.com/gpu/x", "nvidia.com/gpu ", "nvidia.com/a,nvidia.com/b"} {
		if err := podresources.ValidResourceName(bad); err == nil {
			t.Errorf("ValidResourceName(%q) = nil, want an error", bad)
		}
	}
}
