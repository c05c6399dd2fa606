package stream

import (
	"math"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// deviceWideReading is a whole GPU's figures in the snapshot's units:
// °C, W, MHz, mJ, KB/s, B/s, counts, seconds.
var deviceWideReading = map[telemetry.Field]float64{
	telemetry.Temperature:          61,
	telemetry.MemoryTemp:           72,
	telemetry.Power:                64.25,
	telemetry.SMClock:              1590,
	telemetry.MemClock:             5001,
	telemetry.Energy:               123_456_789, // mJ
	telemetry.PCIeTX:               2000,        // KB/s
	telemetry.PCIeRX:               3500,
	telemetry.PCIeReplay:           7,
	telemetry.RemappedRowsCorr:     3,
	telemetry.RemappedRowsUnc:      1,
	telemetry.RowRemapFailure:      1,
	telemetry.NVLinkBandwidth:      2.5e9, // B/s
	telemetry.ECCSBEVolatile:       4,
	telemetry.ECCDBEVolatile:       1,
	telemetry.ECCSBEAggregate:      17,
	telemetry.ECCDBEAggregate:      2,
	telemetry.RetiredPagesSBE:      3,
	telemetry.RetiredPagesDBE:      1,
	telemetry.RetiredPagesPending:  1,
	telemetry.ClocksEventReasons:   0x24,
	telemetry.PowerViolation:       2.5,
	telemetry.ThermalViolation:     0.75,
	telemetry.SyncBoostViolation:   1e-6,
	telemetry.BoardLimitViolation:  0,
	telemetry.LowUtilViolation:     60,
	telemetry.ReliabilityViolation: 3e-9,
	telemetry.PowerMgmtLimit:       70,
	telemetry.EnforcedPowerLimit:   65.5,
	telemetry.PState:               8,
	telemetry.FanSpeed:             35,
	telemetry.ProfGrEngineActive:   0.5,
	telemetry.ProfSMActive:         0.25,
	telemetry.ProfSMOccupancy:      0.125,
	telemetry.ProfTensorActive:     0.75,
	telemetry.ProfDRAMActive:       0.0625,
	telemetry.ProfPCIeTX:           3e9, // B/s
	telemetry.ProfPCIeRX:           4e9,
}

// The device-wide fields reach a subscriber in the proto's base units:
// hertz, joules, bytes per second; counts as integers, flags as bools. A
// MIG instance carries none of them (they are its GPU's, which has them)
// but its own profiling values, and a GPU that lacks one has it absent,
// not zero.
func TestDeviceWideFieldsInBaseUnits(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	snap := snapshot(1)
	for f, v := range deviceWideReading {
		snap.States[0].Set(f, v)
		snap.States[3].Set(f, v) // the MIG instance's GPU
	}
	// The MIG instance's own profiling values (DCGM's GPU instance entity).
	snap.States[3].MIG[0].Set(telemetry.ProfGrEngineActive, 0.3)
	snap.States[3].MIG[0].Set(telemetry.ProfTensorActive, 0.2)
	h.store.Publish(snap)
	m := recv(t, h.watch(t, &telemetryv1.WatchRequest{IncludeUnattributed: true}))

	d := device(m, uuid0)
	for name, c := range map[string]struct {
		got  any
		want any
	}{
		"temperature_celsius":           {d.TemperatureCelsius, 61.0},
		"memory_temperature_celsius":    {d.MemoryTemperatureCelsius, 72.0},
		"power_watts":                   {d.PowerWatts, 64.25},
		"sm_clock_hertz":                {d.SmClockHertz, 1.59e9},
		"mem_clock_hertz":               {d.MemClockHertz, 5.001e9},
		"energy_joules":                 {d.EnergyJoules, 123_456.789},
		"pcie_tx_bytes_per_second":      {d.PcieTxBytesPerSecond, 2000.0 * 1024},
		"pcie_rx_bytes_per_second":      {d.PcieRxBytesPerSecond, 3500.0 * 1024},
		"nvlink_bytes_per_second":       {d.NvlinkBytesPerSecond, 2.5e9},
		"pcie_replays":                  {d.PcieReplays, uint64(7)},
		"remapped_rows_correctable":     {d.RemappedRowsCorrectable, uint64(3)},
		"remapped_rows_uncorrectable":   {d.RemappedRowsUncorrectable, uint64(1)},
		"row_remap_failure":             {d.RowRemapFailure, true},
		"ecc_sbe_volatile":              {d.EccSbeVolatile, uint64(4)},
		"ecc_dbe_volatile":              {d.EccDbeVolatile, uint64(1)},
		"ecc_sbe_aggregate":             {d.EccSbeAggregate, uint64(17)},
		"ecc_dbe_aggregate":             {d.EccDbeAggregate, uint64(2)},
		"retired_pages_sbe":             {d.RetiredPagesSbe, uint32(3)},
		"retired_pages_dbe":             {d.RetiredPagesDbe, uint32(1)},
		"retired_pages_pending":         {d.RetiredPagesPending, true},
		"clocks_event_reasons":          {d.ClocksEventReasons, uint64(0x24)},
		"power_violation_seconds":       {d.PowerViolationSeconds, 2.5},
		"thermal_violation_seconds":     {d.ThermalViolationSeconds, 0.75},
		"sync_boost_violation_seconds":  {d.SyncBoostViolationSeconds, 1e-6},
		"board_limit_violation_seconds": {d.BoardLimitViolationSeconds, 0.0},
		"low_util_violation_seconds":    {d.LowUtilViolationSeconds, 60.0},
		"reliability_violation_seconds": {d.ReliabilityViolationSeconds, 3e-9},
		"power_management_limit_watts":  {d.PowerManagementLimitWatts, 70.0},
		"enforced_power_limit_watts":    {d.EnforcedPowerLimitWatts, 65.5},
		"pstate":                        {d.Pstate, uint32(8)},
		"fan_speed_percent":             {d.FanSpeedPercent, 35.0},
		"gr_engine_active_ratio":        {d.GrEngineActiveRatio, 0.5},
		"sm_active_ratio":               {d.SmActiveRatio, 0.25},
		"sm_occupancy_ratio":            {d.SmOccupancyRatio, 0.125},
		"tensor_active_ratio":           {d.TensorActiveRatio, 0.75},
		"dram_active_ratio":             {d.DramActiveRatio, 0.0625},
		"prof_pcie_tx_bytes_per_second": {d.ProfPcieTxBytesPerSecond, 3e9},
		"prof_pcie_rx_bytes_per_second": {d.ProfPcieRxBytesPerSecond, 4e9},
	} {
		if !sameValue(c.got, c.want) {
			t.Errorf("%s = %v, want %v", name, deref(c.got), c.want)
		}
	}
	// Every device-wide field of the proto is checked above: a field
	// added to the proto and not to this test fails here.
	if n := countSet(d, deviceWideFirst); n != 38 {
		t.Errorf("%d device-wide fields set, want the 38 checked", n)
	}

	// A MIG instance carries its own profiling values, and nothing else.
	if mig := device(m, migA); countSet(mig, deviceWideFirst) != 2 || !sameValue(mig.GrEngineActiveRatio, 0.3) ||
		!sameValue(mig.TensorActiveRatio, 0.2) {
		t.Errorf("MIG instance: want its own GR engine and tensor activity only: %v", mig)
	}
	if parent := device(m, uuid3); parent.GetTemperatureCelsius() != 61 || parent.GetEccSbeAggregate() != 17 {
		t.Errorf("the MIG instance's GPU lacks its figures: %v", parent)
	}
	// GPU 2 has none of these in its reading: absent, not 0.
	if n := countSet(device(m, uuid2), deviceWideFirst); n != 0 {
		t.Errorf("GPU 2 has %d device-wide fields its reading lacks", n)
	}
	if lost := device(m, uuid4); countSet(lost, deviceWideFirst) != 0 {
		t.Errorf("lost GPU carries values: %v", lost)
	}
}

// deviceWideFirst is the number of the first device-wide field of Device.
const deviceWideFirst = 27

// countSet counts the fields of d numbered from first on that are set.
func countSet(d *telemetryv1.Device, first protoreflect.FieldNumber) int {
	n := 0
	d.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd.Number() >= first {
			n++
		}
		return true
	})
	return n
}

// sameValue compares an optional proto field (a pointer, nil if absent)
// with a value, floats within a relative 1e-12.
func sameValue(got, want any) bool {
	switch g := got.(type) {
	case *float64:
		w := want.(float64)
		return g != nil && math.Abs(*g-w) <= 1e-12*math.Max(1, math.Abs(w))
	case *uint64:
		return g != nil && *g == want.(uint64)
	case *uint32:
		return g != nil && *g == want.(uint32)
	case *bool:
		return g != nil && *g == want.(bool)
	}
	return false
}

func deref(p any) any {
	switch v := p.(type) {
	case *float64:
		if v != nil {
			return *v
		}
	case *uint64:
		if v != nil {
			return *v
		}
	case *uint32:
		if v != nil {
			return *v
		}
	case *bool:
		if v != nil {
			return *v
		}
	}
	return "absent"
}
