package podresources_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func TestParseDRADeviceName(t *testing.T) {
	whole := func(minor int) podresources.DeviceRef {
		return podresources.DeviceRef{Kind: podresources.RefIndex, Index: minor, GI: -1, CI: -1, Replica: -1}
	}
	mig := func(minor int, profile string) podresources.DeviceRef {
		return podresources.DeviceRef{Kind: podresources.RefDRAMIG, Index: minor, GI: -1, CI: -1, Replica: -1, Profile: profile}
	}
	tests := []struct {
		name string
		want podresources.DeviceRef
	}{
		{"gpu-0", whole(0)},
		{"gpu-12", whole(12)},
		{"gpu-2-mig-1g5gb-3", mig(2, "1g5gb")},
		{"gpu-2-mig-4g20gb-0-3", mig(2, "4g20gb")},     // placement spanning slices 0 to 3
		{"gpu-2-mig-1g10gb-me-0", mig(2, "1g10gb-me")}, // "1g.10gb+me"
		{"gpu-2-mig-1g5gb-19-0", mig(2, "1g5gb")},      // pname, profile id, start
		{"gpu-2-mig-0-3-1", mig(2, "")},                // earlier releases: profile id, start, size
	}
	for _, tt := range tests {
		got, err := podresources.ParseDRADeviceName(tt.name)
		if err != nil || got != tt.want {
			t.Errorf("ParseDRADeviceName(%q) = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	for _, bad := range []string{
		"", "gpu", "gpu-", "gpu-x", "gpu-+1", "gpu--1", "gpu-0-", "GPU-0", "nvidia0", "mig-0",
		"gpu-0-mig-", "gpu-0-mig-1g5gb", "gpu-0-mig-1g5gb-x", "gpu-0-mig-3-1g5gb", "gpu-0-mig--3",
		"gpu-0-mig-1g5gb-3-", "gpu-x-mig-1g5gb-0", "gpu-01", "gpu-00-mig-1g5gb-0",
	} {
		if ref, err := podresources.ParseDRADeviceName(bad); !errors.Is(err, podresources.ErrInvalidDeviceID) {
			t.Errorf("ParseDRADeviceName(%q) = %+v, %v; want ErrInvalidDeviceID", bad, ref, err)
		}
	}
}

func TestResolverDRA(t *testing.T) {
	r := podresources.NewResolver(testInventory())
	// gpu4 has two instances of one profile; gpu5 has one instance.
	two := podresources.NewResolver(append(testInventory(),
		podresources.GPU{UUID: "GPU-4", Minor: 4, MIG: []podresources.MIGDevice{
			{UUID: "MIG-4a", GI: 3, CI: 0, Profile: "1g.5gb"},
			{UUID: "MIG-4b", GI: 5, CI: 0, Profile: "1g.5gb"},
			{UUID: "MIG-4c", GI: 1, CI: 0, Profile: "1g.10gb+me"},
		}},
		podresources.GPU{UUID: "GPU-5", Minor: 5, MIG: []podresources.MIGDevice{{UUID: "MIG-5a", GI: 2, CI: 0, Profile: "7g.40gb"}}},
	))
	tests := []struct {
		r      podresources.Resolver
		name   string
		want   string
		wantOK bool
	}{
		{r, "gpu-0", gpu0, true},
		{r, "gpu-2", gpu2, true},
		{r, "gpu-9", "", false},
		{r, "gpu-2-mig-1g5gb-0", migA, true},
		{r, "gpu-2-mig-3g20gb-4-7", migC, true}, // the instance's lowest compute instance
		// A profile the inventory does not have on that GPU (MIG
		// reconfigured since): the parent, which the claim is part of.
		{r, "gpu-2-mig-7g40gb-0", gpu2, true},
		// No profile in the name and two instances: the parent.
		{r, "gpu-2-mig-0-0-1", gpu2, true},
		{r, "gpu-0-mig-1g5gb-0", gpu0, true}, // gpu0 is not MIG-enabled in the inventory (yet)
		{r, "gpu-9-mig-1g5gb-0", "", false},
		// Two instances of the profile: the placement cannot be told
		// without placements in the inventory, so the parent.
		{two, "gpu-4-mig-1g5gb-0", "GPU-4", true},
		{two, "gpu-4-mig-1g10gb-me-6", "MIG-4c", true},
		{two, "gpu-5-mig-0-0-8", "MIG-5a", true}, // earlier names, a GPU with one instance
	}
	for _, tt := range tests {
		ref, err := podresources.ParseDRADeviceName(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := tt.r.Resolve(ref); got != tt.want || ok != tt.wantOK {
			t.Errorf("Resolve(%q) = %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

// draNode has containers holding GPUs through DRA claims, next to ones of
// other drivers and a device plugin GPU.
func draNode() []*podresourcesv1.PodResources {
	ctr, pod, dev := fakekubelet.Container, fakekubelet.Pod, fakekubelet.Devices
	claims, claim, d := fakekubelet.WithClaims, fakekubelet.Claim, fakekubelet.ClaimDevice
	const drv = podresources.DRADriverName
	return []*podresourcesv1.PodResources{
		pod("ml", "whole", claims(ctr("main"), claim("ml", "gpu", d(drv, "node-1", "gpu-0")))),
		pod("ml", "mig", claims(ctr("main", dev("nvidia.com/hostdev", "0000:3b:00.1")),
			claim("ml", "mig", d(drv, "node-1", "gpu-2-mig-1g5gb-0"))),
			// Two containers sharing one claim.
			claims(ctr("side"), claim("ml", "mig", d(drv, "node-1", "gpu-2-mig-1g5gb-0")))),
		pod("ml", "both", claims(ctr("main", dev("nvidia.com/gpu", gpu1)),
			claim("ml", "imex", d("compute-domain.nvidia.com", "node-1", "channel-0")), // not a GPU
			claim("ml", "other", d("gpu.example.com", "node-1", "gpu-3")),              // another vendor's
			claim("ml", "vm", d(drv, "node-1", "gpu-vfio-0")))),                        // not visible to NVML
		pod("ml", "lost", claims(ctr("main"), claim("ml", "gone", d(drv, "node-1", "gpu-9")))),
	}
}

func wantDRA(t *testing.T, a *podresources.Assignments) {
	t.Helper()
	want := map[string][]attribution.Pod{
		gpu0: {{Namespace: "ml", Name: "whole", Container: "main"}},
		migA: {{Namespace: "ml", Name: "mig", Container: "main"}, {Namespace: "ml", Name: "mig", Container: "side"}},
		gpu1: {{Namespace: "ml", Name: "both", Container: "main"}},
	}
	for uuid, pods := range want {
		if got := a.Pods(uuid); !slices.Equal(got, pods) {
			t.Errorf("Pods(%s) = %v, want %v", uuid, got, pods)
		}
	}
	if a.Len() != len(want) {
		t.Errorf("Len() = %d, want %d: gpu3 is another driver's, gpu2 only through its MIG instance", a.Len(), len(want))
	}
	if a.Unresolved() != 1 {
		t.Errorf("Unresolved() = %d, want 1 (gpu-9 matches no GPU; other drivers, vfio and hostdev are not counted)", a.Unresolved())
	}
}

func TestBuildAssignmentsDRA(t *testing.T) {
	wantDRA(t, podresources.BuildAssignments(&podresourcesv1.ListPodResourcesResponse{PodResources: draNode()},
		podresources.NewResolver(testInventory())))
}

// FuzzParseDRADeviceName checks that whatever a ResourceSlice names a
// device, the parser either refuses it with ErrInvalidDeviceID or names a
// GPU by the minor number the name starts with.
func FuzzParseDRADeviceName(f *testing.F) {
	for _, s := range []string{
		"gpu-0", "gpu-12", "gpu-2-mig-1g5gb-3", "gpu-2-mig-4g20gb-0-3", "gpu-2-mig-1g10gb-me-0", "gpu-2-mig-0-3-1",
		"", "gpu-", "gpu--1", "gpu-0-mig-", "gpu-0-mig--3", "gpu-vfio-0", "channel-0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		ref, err := podresources.ParseDRADeviceName(name)
		if err != nil {
			if !errors.Is(err, podresources.ErrInvalidDeviceID) {
				t.Fatalf("error %v does not wrap ErrInvalidDeviceID", err)
			}
			return
		}
		if ref.Index < 0 || ref.UUID != "" || ref.GI != -1 || ref.CI != -1 || ref.Replica != -1 {
			t.Fatalf("%q parsed to %+v", name, ref)
		}
		prefix := fmt.Sprintf("gpu-%d", ref.Index)
		switch ref.Kind {
		case podresources.RefIndex:
			if name != prefix || ref.Profile != "" {
				t.Fatalf("%q parsed to whole GPU %+v", name, ref)
			}
		case podresources.RefDRAMIG:
			if !strings.HasPrefix(name, prefix+"-mig-") || !strings.HasPrefix(name, ref.String()) {
				t.Fatalf("%q parsed to MIG %+v (%s)", name, ref, ref)
			}
		default:
			t.Fatalf("unexpected kind %v from %q", ref.Kind, name)
		}
	})
}
