package cgroup_test

import (
	"fmt"
	"maps"
	"slices"

	"github.com/gpu-telemetry/agent/internal/cgroup"
)

// One tick of a sampler: the PIDs NVML reported on every GPU, resolved in one
// call. The host process (3001) and the PID that exited before its cgroup
// file was read (4001) are left out without an error, and the next tick's call
// forgets whichever PIDs it no longer carries.
func ExampleResolver_Resolve() {
	r := cgroup.NewResolver("testdata/proc") // --path.procfs; "" means /proc
	owners, err := r.Resolve([]uint32{1001, 1002, 2001, 3001, 4001})
	if err != nil {
		fmt.Println("error:", err)
	}
	for _, pid := range slices.Sorted(maps.Keys(owners)) {
		o := owners[pid]
		fmt.Printf("%d pod=%s container=%.12s runtime=%q\n", pid, o.PodUID, o.ContainerID, o.Runtime)
	}
	// Output:
	// 1001 pod=5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1b container=4a1b3c5d7e9f runtime="containerd"
	// 1002 pod=5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1b container=2c26b46b68ff runtime="containerd"
	// 2001 pod=c0ffee00-1234-4abc-8def-0123456789ab container=e3b0c44298fc runtime=""
}

// Parse works on a file's contents alone, for callers that have the text
// from elsewhere (a simulated node).
func ExampleParse() {
	o, ok := cgroup.Parse([]byte("0::/../../kubepods-burstable-pod5f3e7b2a_9c1d_4e8f_a6b0_2d4c6e8f0a1b.slice/crio-4a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b.scope\n"))
	fmt.Println(ok, o.PodUID, o.Runtime)
	_, ok = cgroup.Parse([]byte("0::/system.slice/sshd.service\n"))
	fmt.Println(ok)
	// Output:
	// true 5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1b cri-o
	// false
}
