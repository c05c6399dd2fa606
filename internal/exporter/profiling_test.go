package exporter

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// profScrape serves testSnapshot with DCGM's profiling fields on GPU 0
// (held by one pod) and GPU 1 (shared by two), as generation g with
// field list fields, and returns each DCGM_FI_PROF_ series' value by
// name and the GPU and pod labels.
func profScrape(t *testing.T, g Generation, fields []dcgmcsv.Field) map[string]float64 {
	t.Helper()
	snap := testSnapshot()
	for _, i := range []int{0, 1} {
		for f, v := range map[telemetry.Field]float64{telemetry.ProfGrEngineActive: 0.5, telemetry.ProfSMActive: 0.25,
			telemetry.ProfSMOccupancy: 0.125, telemetry.ProfTensorActive: 0.75, telemetry.ProfDRAMActive: 0.0625,
			telemetry.ProfPCIeTX: 3e9, telemetry.ProfPCIeRX: 4e9} {
			snap.States[i].Set(f, v)
		}
	}
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), nil),
		Options{Hostname: "node-a", Interval: time.Second, Generation: g, Counters: fields, Profiling: true})
	out := map[string]float64{}
	for n, mf := range gather(t, c.Latest()) {
		if !strings.HasPrefix(n, "DCGM_FI_PROF_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			gpu, _ := labelOf(m, "gpu")
			pod, _ := labelOf(m, "pod")
			out[n+"/"+gpu+"/"+pod] = m.GetGauge().GetValue()
		}
	}
	return out
}

// The profiling fields under each generation's default names, in their
// units (ratios, bytes per second), device-wide: once per GPU, on the
// pod's series of a GPU one pod holds and on the device series of a
// shared one, never per pod of a shared GPU.
func TestProfilingFieldsByGeneration(t *testing.T) {
	series := func(names map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for n, v := range names {
			out[n+"/0/inference-0"] = v
			out[n+"/1/"] = v
		}
		return out
	}
	for _, c := range []struct {
		g    Generation
		want map[string]float64
	}{
		{Gen482, series(map[string]float64{"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.5, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.75,
			"DCGM_FI_PROF_DRAM_ACTIVE": 0.0625, "DCGM_FI_PROF_PCIE_TX_BYTES": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 4e9})},
		{Gen48, series(map[string]float64{"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.5, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.75,
			"DCGM_FI_PROF_DRAM_ACTIVE": 0.0625, "DCGM_FI_PROF_PCIE_TX_BYTES": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 4e9})},
		{Gen49, series(map[string]float64{"DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO": 0.5, "DCGM_FI_PROF_TENSOR_UTIL_RATIO": 0.75,
			"DCGM_FI_PROF_DRAM_UTIL_RATIO": 0.0625, "DCGM_FI_PROF_PCIE_TX_BYTES": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 4e9})},
		{Gen410, series(map[string]float64{"DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO": 0.5, "DCGM_FI_PROF_TENSOR_UTIL_RATIO": 0.75,
			"DCGM_FI_PROF_DRAM_UTIL_RATIO": 0.0625, "DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND": 4e9})},
	} {
		if got := profScrape(t, c.g, nil); !maps.Equal(got, c.want) {
			t.Errorf("%s: served %v\nwant %v", c.g, got, c.want)
		}
	}
	// SM_ACTIVE and SM_OCCUPANCY are in no default list: -f serves them,
	// under either name.
	fields := []dcgmcsv.Field{{Name: "DCGM_FI_PROF_SM_ACTIVE", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_FI_PROF_SM_OCCUPANCY_RATIO", Type: dcgmcsv.TypeGauge}}
	want := series(map[string]float64{"DCGM_FI_PROF_SM_ACTIVE": 0.25, "DCGM_FI_PROF_SM_OCCUPANCY_RATIO": 0.125})
	if got := profScrape(t, Gen482, fields); !maps.Equal(got, want) {
		t.Errorf("-f: served %v\nwant %v", got, want)
	}
}

// Without DCGM (Options.Profiling false), the profiling fields a field
// list names are gpu_agent_field_supported 0 under their DCGM names, as
// the fields the agent cannot serve are; with it, they are the GPU's own
// prof_* fields there, never a DCGM name.
func TestProfilingFieldsWithoutDCGM(t *testing.T) {
	fields := []dcgmcsv.Field{{Name: "DCGM_FI_PROF_GR_ENGINE_ACTIVE", Type: dcgmcsv.TypeGauge},
		{Name: "DCGM_FI_PROF_TENSOR_UTIL_RATIO", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_FI_DEV_GPU_UTIL", Type: dcgmcsv.TypeGauge}}
	if got := ProfilingNames(fields); !slices.Equal(got, []string{"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_TENSOR_UTIL_RATIO"}) {
		t.Errorf("ProfilingNames = %v", got)
	}
	if u := Unsupported(fields); len(u) != 0 {
		t.Errorf("Unsupported = %v, want none", u)
	}
	for _, profiling := range []bool{false, true} {
		c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, nil, nil),
			Options{Interval: time.Second, Counters: fields, Profiling: profiling})
		supported := grep(scrape(t, c), `gpu_agent_field_supported{`)
		for _, n := range ProfilingNames(fields) {
			line := `gpu_agent_field_supported{UUID="` + uuid0 + `",field="` + n + `",gpu="0"} 0`
			if strings.Contains(supported, line) == profiling {
				t.Errorf("profiling %v: %s present %v:\n%s", profiling, line, !profiling, supported)
			}
		}
		if !strings.Contains(supported, `field="prof_gr_engine_active"`) {
			t.Errorf("profiling %v: no prof_gr_engine_active:\n%s", profiling, supported)
		}
	}
}
