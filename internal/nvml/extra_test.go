package nvml

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// fakeExtra is an ExtraSource with fixed values by GPU UUID, and by
// "<GPU UUID>/<GI>" for MIG instances, recording what it was asked for.
type fakeExtra struct {
	mu     sync.Mutex
	values map[string]map[telemetry.Field]float64
	asked  []string
}

func (x *fakeExtra) FillInstance(gpuUUID string, gi int, r *telemetry.Reading) {
	x.mu.Lock()
	defer x.mu.Unlock()
	key := fmt.Sprintf("%s/%d", gpuUUID, gi)
	x.asked = append(x.asked, key)
	for f, v := range x.values[key] {
		r.Set(f, v)
	}
}

func (x *fakeExtra) Fill(uuid string, r *telemetry.Reading, supported *telemetry.FieldSet) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.asked = append(x.asked, uuid)
	for f, v := range x.values[uuid] {
		r.Set(f, v)
		*supported = supported.With(f)
	}
}

func (x *fakeExtra) set(values map[string]map[telemetry.Field]float64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.values = values
}

func (x *fakeExtra) takeAsked() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := x.asked
	x.asked = nil
	return out
}

// The extra source's values join the NVML reading of the same tick, in
// one snapshot: present and supported where it has them, absent (not
// zero) and unsupported where it has not; NVML's fields untouched.
func TestExtraSourceJoinsTheReading(t *testing.T) {
	lib, _ := newLib(newFullGPU(0), newFullGPU(1))
	x := &fakeExtra{}
	s := open(t, lib, Config{Extra: x})
	uuids := []string{s.Devices()[0].UUID, s.Devices()[1].UUID}
	x.set(map[string]map[telemetry.Field]float64{
		uuids[1]: {telemetry.ProfGrEngineActive: 0.75, telemetry.ProfPCIeTX: 3e9},
	})
	snap := tick(s)
	if got := x.takeAsked(); !slices.Equal(got, uuids) {
		t.Errorf("Fill asked for %v, want each whole GPU once: %v", got, uuids)
	}
	without, with := snap.States[0], snap.States[1]
	for f := range telemetry.NumFields {
		if telemetry.ProfilingFields.Has(f) && (without.Has.Has(f) || without.Supported.Has(f)) {
			t.Errorf("GPU 0: %s present %v, supported %v; want neither", f, without.Has.Has(f), without.Supported.Has(f))
		}
	}
	for f, want := range map[telemetry.Field]float64{telemetry.ProfGrEngineActive: 0.75, telemetry.ProfPCIeTX: 3e9} {
		if v, ok := with.Get(f); !ok || v != want || !with.Supported.Has(f) {
			t.Errorf("GPU 1: %s = %v (present %v, supported %v), want %v", f, v, ok, with.Supported.Has(f), want)
		}
	}
	if _, ok := with.Get(telemetry.ProfSMActive); ok || with.Supported.Has(telemetry.ProfSMActive) {
		t.Error("GPU 1: a field the source lacks is present or supported")
	}
	if v, ok := with.Get(telemetry.GPUUtil); !ok || v != 40 {
		t.Errorf("GPU 1: NVML's gpu_util = %v (%v), want 40", v, ok)
	}
	// The next tick asks again: nothing is kept from the last.
	x.set(nil)
	if st := tick(s).States[1]; st.Has&telemetry.ProfilingFields != 0 || st.Supported&telemetry.ProfilingFields != 0 {
		t.Errorf("GPU 1 keeps %v after its source lost them", st.Has&telemetry.ProfilingFields)
	}
}

// A MIG-enabled GPU is filled as a whole GPU, under its own UUID, and
// each MIG instance by its GPU's UUID and GPU instance ID (the compute
// instance does not matter), its values its own, following a
// reconfiguration. A lost GPU is not filled.
func TestExtraSourceFillsMIGAndSkipsLostGPUs(t *testing.T) {
	n := newMIGNode()
	n.create(0, "MIG-a", 7, 0, 1<<30)
	n.create(1, "MIG-b", 9, 2, 1<<30)
	lost := newFullGPU(1)
	lib, _ := newLib(n.parent, lost)
	x := &fakeExtra{}
	s := open(t, lib, Config{Extra: x, MIGRescan: time.Nanosecond})
	parent := s.Devices()[0].UUID
	x.set(map[string]map[telemetry.Field]float64{
		parent: {telemetry.ProfDRAMActive: 0.5}, s.Devices()[1].UUID: {telemetry.ProfDRAMActive: 0.25},
		parent + "/7": {telemetry.ProfDRAMActive: 0.125, telemetry.ProfTensorActive: 0.75},
		parent + "/8": {telemetry.ProfDRAMActive: 0.375},
	})
	snap := tick(s)
	if got := x.takeAsked(); !slices.Equal(got, []string{parent, parent + "/7", parent + "/9", s.Devices()[1].UUID}) {
		t.Errorf("asked for %v", got)
	}
	if v, ok := snap.States[0].Get(telemetry.ProfDRAMActive); !ok || v != 0.5 {
		t.Errorf("MIG-enabled GPU: prof_dram_active = %v (%v), want 0.5", v, ok)
	}
	migValues := func(snap *telemetry.Snapshot) map[string]map[telemetry.Field]float64 {
		out := map[string]map[telemetry.Field]float64{}
		for j, m := range snap.States[0].MIG {
			vs := map[telemetry.Field]float64{}
			for f := range telemetry.NumFields {
				if v, ok := m.Get(f); ok && telemetry.ProfilingFields.Has(f) {
					vs[f] = v
				}
			}
			out[snap.Devices[0].MIG[j].UUID] = vs
		}
		return out
	}
	want := map[string]map[telemetry.Field]float64{
		"MIG-a": {telemetry.ProfDRAMActive: 0.125, telemetry.ProfTensorActive: 0.75},
		"MIG-b": {}, // GI 9: no values
	}
	if got := migValues(snap); !maps.EqualFunc(got, want, maps.Equal) {
		t.Errorf("MIG instances' profiling fields %v, want %v", got, want)
	}
	// Reconfigured: MIG-b goes, MIG-c (GI 8) comes, and gets GI 8's values.
	n.destroy(1)
	n.create(1, "MIG-c", 8, 0, 1<<30)
	tick(s)
	snap = tick(s)
	want = map[string]map[telemetry.Field]float64{
		"MIG-a": {telemetry.ProfDRAMActive: 0.125, telemetry.ProfTensorActive: 0.75},
		"MIG-c": {telemetry.ProfDRAMActive: 0.375},
	}
	if got := migValues(snap); !maps.EqualFunc(got, want, maps.Equal) {
		t.Errorf("after reconfiguring: %v, want %v", got, want)
	}

	lost.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST }
	tick(s)
	snap = tick(s)
	if !snap.States[1].Lost {
		t.Fatal("GPU 1 is not lost")
	}
	x.takeAsked()
	snap = tick(s)
	if got := x.takeAsked(); !slices.Equal(got, []string{parent, parent + "/7", parent + "/8"}) {
		t.Errorf("asked for %v, want the GPU that is not lost and its instances only", got)
	}
	if snap.States[1].Has&telemetry.ProfilingFields != 0 {
		t.Error("the lost GPU has profiling fields")
	}
}
