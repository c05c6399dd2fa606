package podresources

import (
	"sync"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Inventory gives the latest snapshot, whose Devices are the node's GPUs
// and their MIG instances; telemetry.Store implements it.
type Inventory interface {
	Latest() *telemetry.Snapshot
}

// InventoryResolver resolves device IDs against the GPUs of inv's latest
// snapshot, and re-indexes them when the sampler publishes a new
// inventory (MIG instances created or destroyed): the inventory reaches
// the resolver through the store the sampler publishes into, with no
// callback into the kubelet client. Before the first snapshot it is not
// ready, and a Client's Run waits for it rather than report every ID
// unresolved.
func InventoryResolver(inv Inventory) Resolver {
	return &inventoryResolver{inv: inv}
}

type inventoryResolver struct {
	inv Inventory

	mu    sync.Mutex
	first *telemetry.Device // the indexed inventory's first device: the sampler replaces, never modifies, an inventory
	n     int
	r     Resolver
}

// current returns the resolver of the latest inventory, nil before the
// first snapshot.
func (ir *inventoryResolver) current() Resolver {
	snap := ir.inv.Latest()
	if snap == nil {
		return nil
	}
	var first *telemetry.Device
	if len(snap.Devices) > 0 {
		first = &snap.Devices[0]
	}
	ir.mu.Lock()
	defer ir.mu.Unlock()
	if ir.r == nil || first != ir.first || len(snap.Devices) != ir.n {
		ir.r, ir.first, ir.n = NewResolver(GPUsOf(snap.Devices)), first, len(snap.Devices)
	}
	return ir.r
}

func (ir *inventoryResolver) ready() bool { return ir.inv.Latest() != nil }

func (ir *inventoryResolver) Resolve(ref DeviceRef) (string, bool) {
	r := ir.current()
	if r == nil {
		return "", false
	}
	return r.Resolve(ref)
}

// GPUsOf is the inventory the resolver indexes, from a snapshot's devices:
// each GPU with every compute instance of its MIG instances.
func GPUsOf(devs []telemetry.Device) []GPU {
	gpus := make([]GPU, len(devs))
	for i, d := range devs {
		gpus[i] = GPU{UUID: d.UUID, Minor: d.Minor}
		for _, m := range d.MIG {
			for _, ci := range m.ComputeInstances {
				gpus[i].MIG = append(gpus[i].MIG, MIGDevice{UUID: ci.UUID, GI: m.GI, CI: ci.CI, Profile: m.Profile})
			}
		}
	}
	return gpus
}
