package podresources

import (
	"testing"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Every compute instance of a MIG GPU instance resolves, not only the one
// that names the instance's series.
func TestGPUsOfListsEveryComputeInstance(t *testing.T) {
	devs := []telemetry.Device{{UUID: "GPU-a", Minor: 0, MIG: []telemetry.MIGDevice{{
		UUID: "MIG-ci0", GI: 3, CI: 0,
		ComputeInstances: []telemetry.MIGComputeInstance{{UUID: "MIG-ci0", CI: 0}, {UUID: "MIG-ci1", CI: 1}},
	}}}}
	r := NewResolver(GPUsOf(devs))
	for _, id := range []string{"MIG-ci0", "MIG-ci1"} {
		refs, err := ParseDeviceID(id)
		if err != nil {
			t.Fatal(err)
		}
		if uuid, ok := r.Resolve(refs); !ok || uuid != id {
			t.Errorf("%s resolves to %q, %v", id, uuid, ok)
		}
	}
	legacy, _ := ParseDeviceID("MIG-GPU-a/3/1")
	if uuid, ok := r.Resolve(legacy); !ok || uuid != "MIG-ci1" {
		t.Errorf("MIG-GPU-a/3/1 resolves to %q, %v; want MIG-ci1", uuid, ok)
	}
}
