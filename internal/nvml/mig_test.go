package nvml

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// migNode is a MIG-enabled GPU whose MIG devices a test creates and
// destroys between ticks, as mig-manager does.
type migNode struct {
	mu     sync.Mutex
	slots  map[int]*mock.Device
	gone   map[int]*atomic.Bool
	parent *mock.Device
}

func newMIGNode() *migNode {
	n := &migNode{slots: map[int]*mock.Device{}, gone: map[int]*atomic.Bool{}, parent: newFullGPU(0)}
	n.parent.GetMigModeFunc = func() (int, int, nvml.Return) {
		return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
	}
	n.parent.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	n.parent.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	n.parent.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if m, ok := n.slots[i]; ok {
			return m, nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	return n
}

// create puts a MIG device in slot i.
func (n *migNode) create(i int, uuid string, gi, ci int, used uint64) {
	gone := new(atomic.Bool)
	m := &mock.Device{
		GetUUIDFunc:              func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return gi, nvml.SUCCESS },
		GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ci, nvml.SUCCESS },
		GetNameFunc:              func() (string, nvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 1g.5gb", nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			if gone.Load() {
				return nvml.Memory_v2{}, nvml.ERROR_INVALID_ARGUMENT
			}
			return nvml.Memory_v2{Total: 5 << 30, Used: used, Free: 5<<30 - used}, nvml.SUCCESS
		},
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.slots[i], n.gone[i] = m, gone
}

// destroy removes slot i; its old handle answers INVALID_ARGUMENT from
// then on, as a destroyed instance's does.
func (n *migNode) destroy(i int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gone[i].Store(true)
	delete(n.slots, i)
}

func migUUIDs(d telemetry.Device) []string {
	var out []string
	for _, m := range d.MIG {
		out = append(out, m.UUID)
	}
	return out
}

func TestMIGInstancesFollowReconfiguration(t *testing.T) {
	n := newMIGNode()
	n.create(0, "MIG-a", 7, 0, 1<<30)
	lib, _ := newLib(n.parent)
	s := open(t, lib, Config{MIGRescan: time.Nanosecond})
	if got := migUUIDs(s.Devices()[0]); len(got) != 1 || got[0] != "MIG-a" {
		t.Fatalf("MIG at start = %v", got)
	}
	// Readers (the pod resolver) tell a new inventory by its slice: a tick
	// without a change keeps it, a change replaces it.
	changes := 0
	last := &tick(s).Devices[0]
	newInventory := func(snap *telemetry.Snapshot) {
		if &snap.Devices[0] != last {
			changes++
			last = &snap.Devices[0]
		}
	}
	newInventory(tick(s))
	if changes != 0 {
		t.Fatal("an unchanged inventory was replaced")
	}

	n.create(3, "MIG-b", 8, 0, 2<<30)
	snap := tick(s)
	newInventory(snap)
	if got := migUUIDs(snap.Devices[0]); len(got) != 2 || got[1] != "MIG-b" {
		t.Fatalf("after creating MIG-b: %v", got)
	}
	if len(snap.States[0].MIG) != 2 {
		t.Fatalf("%d MIG readings for 2 instances", len(snap.States[0].MIG))
	}
	if v, _ := snap.States[0].MIG[1].Get(telemetry.FBUsed); v != 2<<30 {
		t.Errorf("MIG-b FB used = %v", v)
	}
	if changes != 1 {
		t.Errorf("inventory replaced %d times, want 1", changes)
	}
	if got := migUUIDs(s.Devices()[0]); len(got) != 2 {
		t.Errorf("Devices() = %v after the change", got)
	}

	n.destroy(0)
	snap = tick(s)
	newInventory(snap)
	if got := migUUIDs(snap.Devices[0]); len(got) != 1 || got[0] != "MIG-b" {
		t.Errorf("after destroying MIG-a: %v", got)
	}
	if len(snap.States[0].MIG) != 1 {
		t.Errorf("%d MIG readings for 1 instance", len(snap.States[0].MIG))
	}
	if snap.States[0].MIGReadErrors != 0 {
		t.Errorf("MIG read errors %d: the rescan came first, nothing failed", snap.States[0].MIGReadErrors)
	}
	if changes != 2 {
		t.Errorf("inventory replaced %d times, want 2", changes)
	}
}

// Without a periodic rescan due, a read answering that a handle is gone
// counts an error and makes the next read list the instances again.
func TestStaleMIGHandleTriggersRescan(t *testing.T) {
	n := newMIGNode()
	n.create(0, "MIG-a", 7, 0, 1<<30)
	n.create(1, "MIG-b", 8, 0, 1<<30)
	lib, _ := newLib(n.parent)
	s := open(t, lib, Config{MIGRescan: time.Hour})
	tick(s)
	n.destroy(0)
	snap := tick(s)
	if st := snap.States[0]; st.MIGReadErrors != 1 || st.Stalled || st.Lost {
		t.Errorf("stale handle: MIG read errors %d (want 1), stalled %v, lost %v", st.MIGReadErrors, st.Stalled, st.Lost)
	}
	snap = tick(s)
	if got := migUUIDs(snap.Devices[0]); len(got) != 1 || got[0] != "MIG-b" {
		t.Errorf("after the stale handle: MIG %v, want only MIG-b", got)
	}
	if st := snap.States[0]; st.MIGReadErrors != 1 || len(st.MIG) != 1 {
		t.Errorf("after rescan: errors %d, %d readings", st.MIGReadErrors, len(st.MIG))
	}
}

// Two compute instances under one GPU instance share its memory: one
// entry (one series) per GPU instance, named by the lowest compute
// instance, listing both so a pod holding either resolves.
func TestComputeInstancesShareTheirGPUInstance(t *testing.T) {
	n := newMIGNode()
	n.create(0, "MIG-ci1", 3, 1, 1<<30)
	n.create(1, "MIG-ci0", 3, 0, 1<<30)
	n.create(2, "MIG-other", 5, 0, 1<<30)
	lib, _ := newLib(n.parent)
	s := open(t, lib, Config{})
	mig := s.Devices()[0].MIG
	if len(mig) != 2 {
		t.Fatalf("%d MIG entries, want one per GPU instance (2): %+v", len(mig), mig)
	}
	m := mig[0]
	if m.GI != 3 || m.UUID != "MIG-ci0" || m.CI != 0 {
		t.Errorf("GPU instance 3 named %s (CI %d), want MIG-ci0, the lowest CI", m.UUID, m.CI)
	}
	want := []telemetry.MIGComputeInstance{{UUID: "MIG-ci0", CI: 0}, {UUID: "MIG-ci1", CI: 1}}
	if len(m.ComputeInstances) != 2 || m.ComputeInstances[0] != want[0] || m.ComputeInstances[1] != want[1] {
		t.Errorf("compute instances %+v, want %+v", m.ComputeInstances, want)
	}
	if st := tick(s).States[0]; len(st.MIG) != 2 {
		t.Errorf("%d MIG readings, want 2", len(st.MIG))
	}
}
