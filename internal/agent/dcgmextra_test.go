package agent

import (
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// DCGM's latest values become the GPU's profiling fields: each watched
// field mapped to its snapshot field in the same unit, an integer value
// too; absent (and unsupported) while DCGM is down, for another GPU, and
// once a value is older than 3 DCGM intervals.
func TestDCGMExtraFill(t *testing.T) {
	now := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	var latest *dcgm.Reading
	x := dcgmExtra{latest: func() *dcgm.Reading { return latest }, maxAge: staleDCGMIntervals * time.Second,
		now: func() time.Time { return now }}
	fill := func(uuid string) telemetry.DeviceState {
		var st telemetry.DeviceState
		st.Set(telemetry.GPUUtil, 40)
		st.Supported = st.Supported.With(telemetry.GPUUtil)
		x.Fill(uuid, &st.Reading, &st.Supported)
		return st
	}
	if st := fill("GPU-a"); st.Has != st.Has.With(telemetry.GPUUtil) || st.Supported&telemetry.ProfilingFields != 0 {
		t.Errorf("DCGM down: has %b, supported %b", st.Has, st.Supported)
	}
	fresh, stale := now.Add(-time.Second), now.Add(-3*time.Second-time.Millisecond)
	latest = &dcgm.Reading{Time: now, GPUs: map[string]map[dcgm.Field]dcgm.Value{"GPU-a": {
		dcgm.ProfGrEngineActive:   {Float: 0.5, Time: fresh},
		dcgm.ProfSMActive:         {Float: 0.25, Time: fresh},
		dcgm.ProfSMOccupancy:      {Float: 0.125, Time: fresh},
		dcgm.ProfPipeTensorActive: {Float: 0.75, Time: fresh},
		dcgm.ProfDRAMActive:       {Float: 0.1, Time: stale},
		dcgm.ProfPCIeTxBytes:      {Int: 5e9, Integer: true, Time: fresh},
		dcgm.ProfPCIeRxBytes:      {Int: 6e9, Integer: true, Time: now.Add(time.Second)}, // a clock ahead: fresh
		2000:                      {Float: 9, Time: fresh},                               // not a field of the snapshot
	}}}
	st := fill("GPU-a")
	want := map[telemetry.Field]float64{
		telemetry.ProfGrEngineActive: 0.5, telemetry.ProfSMActive: 0.25, telemetry.ProfSMOccupancy: 0.125,
		telemetry.ProfTensorActive: 0.75, telemetry.ProfPCIeTX: 5e9, telemetry.ProfPCIeRX: 6e9, telemetry.GPUUtil: 40,
	}
	for f := range telemetry.NumFields {
		v, ok := st.Get(f)
		w, wanted := want[f]
		if ok != wanted || v != w || (telemetry.ProfilingFields.Has(f) && st.Supported.Has(f) != wanted) {
			t.Errorf("%s = %v (present %v, supported %v), want %v (present %v)", f, v, ok, st.Supported.Has(f), w, wanted)
		}
	}
	if st := fill("GPU-b"); st.Has&telemetry.ProfilingFields != 0 || st.Supported&telemetry.ProfilingFields != 0 {
		t.Errorf("a GPU DCGM has no values of: has %b", st.Has)
	}
	// Every watched field has its snapshot field.
	for _, f := range dcgm.ProfilingFields {
		if tf, ok := profilingFields[f]; !ok || !telemetry.ProfilingFields.Has(tf) {
			t.Errorf("DCGM field %d maps to %v (%v)", f, tf, ok)
		}
	}
}

// A MIG instance gets its GPU instance entity's values, matched by its
// GPU's UUID and GPU instance ID: not its GPU's, not another instance's,
// not a stale one.
func TestDCGMExtraFillInstance(t *testing.T) {
	now := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	fresh, stale := now.Add(-time.Second), now.Add(-4*time.Second)
	latest := &dcgm.Reading{Time: now,
		GPUs: map[string]map[dcgm.Field]dcgm.Value{"GPU-a": {dcgm.ProfSMActive: {Float: 0.9, Time: fresh}}},
		Instances: map[dcgm.InstanceKey]map[dcgm.Field]dcgm.Value{
			{GPU: "GPU-a", GI: 3}: {dcgm.ProfSMActive: {Float: 0.25, Time: fresh}, dcgm.ProfDRAMActive: {Float: 0.5, Time: stale}},
			{GPU: "GPU-a", GI: 5}: {dcgm.ProfSMActive: {Float: 0.75, Time: fresh}},
			{GPU: "GPU-b", GI: 3}: {dcgm.ProfSMActive: {Float: 0.125, Time: fresh}},
		}}
	x := dcgmExtra{latest: func() *dcgm.Reading { return latest }, maxAge: staleDCGMIntervals * time.Second,
		now: func() time.Time { return now }}
	for _, c := range []struct {
		gpu  string
		gi   int
		want float64
		has  bool
	}{{"GPU-a", 3, 0.25, true}, {"GPU-a", 5, 0.75, true}, {"GPU-b", 3, 0.125, true}, {"GPU-a", 4, 0, false}, {"GPU-c", 3, 0, false}} {
		var r telemetry.Reading
		x.FillInstance(c.gpu, c.gi, &r)
		if v, ok := r.Get(telemetry.ProfSMActive); ok != c.has || v != c.want {
			t.Errorf("%s GI %d: prof_sm_active = %v (%v), want %v (%v)", c.gpu, c.gi, v, ok, c.want, c.has)
		}
		if r.Has.Has(telemetry.ProfDRAMActive) || r.Has&^telemetry.ProfilingFields != 0 {
			t.Errorf("%s GI %d: fields %b beyond the fresh profiling ones", c.gpu, c.gi, r.Has)
		}
	}
	latest = nil
	var r telemetry.Reading
	x.FillInstance("GPU-a", 3, &r)
	if r.Has != 0 {
		t.Errorf("DCGM down: fields %b", r.Has)
	}
}

// BenchmarkDCGMExtraFill8GPUs is what DCGM adds to a tick on an 8-GPU
// node: the sampler asks the extra source for each GPU's profiling values
// (map lookups in the Source's latest reading; DCGM itself is read on the
// Source's own goroutine, whose cost is the bench harness's -dcgm=both).
func BenchmarkDCGMExtraFill8GPUs(b *testing.B) {
	now := time.Now()
	latest := &dcgm.Reading{Time: now, GPUs: map[string]map[dcgm.Field]dcgm.Value{}}
	var uuids []string
	for i := range 8 {
		u := "GPU-" + string(rune('a'+i))
		uuids = append(uuids, u)
		fs := map[dcgm.Field]dcgm.Value{}
		for _, f := range dcgm.ProfilingFields {
			fs[f] = dcgm.Value{Float: 0.5, Time: now}
		}
		latest.GPUs[u] = fs
	}
	x := dcgmExtra{latest: func() *dcgm.Reading { return latest }, maxAge: time.Second, now: func() time.Time { return now }}
	var states [8]telemetry.DeviceState
	b.ReportAllocs()
	for b.Loop() {
		for i, u := range uuids {
			x.Fill(u, &states[i].Reading, &states[i].Supported)
		}
	}
}
