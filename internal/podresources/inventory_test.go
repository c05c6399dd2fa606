package podresources

import (
	"sync/atomic"
	"testing"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

type latest struct {
	snap atomic.Pointer[telemetry.Snapshot]
}

func (l *latest) Latest() *telemetry.Snapshot { return l.snap.Load() }

// The resolver follows the inventory the sampler publishes: nothing
// before the first snapshot, a MIG instance once an inventory has it, and
// none once a later inventory drops it.
func TestInventoryResolverFollowsTheStore(t *testing.T) {
	const gpu, mig = "GPU-00000000-0000-0000-0000-000000000001", "MIG-11111111-1111-1111-1111-111111111111"
	inv := &latest{}
	r := InventoryResolver(inv)
	ref, err := ParseDeviceID(gpu)
	if err != nil {
		t.Fatal(err)
	}
	migRef, err := ParseDeviceID(mig)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Resolve(ref); ok || r.(*inventoryResolver).ready() {
		t.Fatal("resolved, or ready, before the first snapshot")
	}
	whole := []telemetry.Device{{UUID: gpu}}
	inv.snap.Store(&telemetry.Snapshot{Devices: whole})
	if got, ok := r.Resolve(ref); !ok || got != gpu {
		t.Errorf("GPU resolved to %q, %v", got, ok)
	}
	if _, ok := r.Resolve(migRef); ok {
		t.Error("a MIG instance resolved before any inventory had it")
	}
	withMIG := []telemetry.Device{{UUID: gpu, MIGEnabled: true, MIG: []telemetry.MIGDevice{
		{UUID: mig, GI: 1, Profile: "1g.5gb", ComputeInstances: []telemetry.MIGComputeInstance{{UUID: mig}}},
	}}}
	inv.snap.Store(&telemetry.Snapshot{Devices: withMIG})
	if got, ok := r.Resolve(migRef); !ok || got != mig {
		t.Errorf("MIG instance resolved to %q, %v after the inventory gained it", got, ok)
	}
	// A later snapshot of the same inventory keeps the index.
	ir := r.(*inventoryResolver)
	before := ir.r
	inv.snap.Store(&telemetry.Snapshot{Devices: withMIG})
	r.Resolve(ref)
	if ir.r != before {
		t.Error("re-indexed an unchanged inventory")
	}
	inv.snap.Store(&telemetry.Snapshot{Devices: whole})
	if _, ok := r.Resolve(migRef); ok {
		t.Error("a destroyed MIG instance still resolves")
	}
}
