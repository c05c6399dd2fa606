package exporter

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// dcgmMetric maps a snapshot field to a dcgm-exporter metric name that
// means the same thing, in that name's unit, so dashboards and KEDA
// triggers written for dcgm-exporter work unchanged. A field that DCGM
// renamed has a row for each name, each in its own unit (a name means one
// unit): DCGM_FI_DEV_GPU_UTIL in percent, DCGM_FI_DEV_GPU_UTIL_RATIO 0 to
// 1. This table is the one place those names live: the exporter, the
// docs/metrics.md and docs/dcgm-exporter.md checks and the lint exemptions
// all read it.
type dcgmMetric struct {
	Name  string
	Help  string
	Field telemetry.Field
	Scale float64 // multiplies the snapshot value into the name's unit
	Type  prometheus.ValueType
	Unit  string // the name's unit, for the docs
	// Default is the generations whose default field list holds the
	// name (without -f); -f serves any row it names.
	Default genSet
	// Source is what the name (and unit) of a generation-specific row
	// rests on: a line of go-dcgm v1.4611.2's pkg/dcgm/dcgm_fields.h (DCGM
	// 4.7's header) or a release note; empty for the 4.8 names, which are
	// default-counters.csv's.
	Source string
}

const bytesPerMiB = 1 << 20

// header cites a line of go-dcgm v1.4611.2's pkg/dcgm/dcgm_fields.h.
func header(line int, what string) string {
	return "go-dcgm v1.4611.2 `dcgm_fields.h:" + strconv.Itoa(line) + "`: " + what
}

// dcgmMetrics are dcgm-exporter's names, help texts, units and types: the
// 4.8 names of its default-counters.csv, in that file's order, then the
// DCGM 4.7 names that 4.9 serves in their place (see docs/dcgm-exporter.md,
// "Generations"). The 4.9 and 4.10 default lists are not available
// offline: their names are derived from the 4.8 list through DCGM 4.7's
// header, where each deprecated name is defined as an alias of its new
// one, or has a base-unit field of its own. A field whose new name that
// header does not give (MEM_COPY_UTIL, ENC_UTIL, DEC_UTIL and the
// framebuffer fields, which 4.9 renames to ratios and bytes) keeps its
// 4.8 name and unit in every generation.
//
// One deliberate type difference: dcgm-exporter declares the PCIe
// throughputs and the NVLink bandwidth counters, but they are rates that
// go up and down (DCGM computes field 449 from NVML's KiB counters, per
// second, divided by 1000), so they are gauges here. The counters keep their names under OpenMetrics:
// expfmt (and the text writer, see appendHeader) types a counter whose
// name lacks _total "unknown" there rather than renaming its samples.
var dcgmMetrics = []dcgmMetric{
	{"DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", telemetry.SMClock, 1, prometheus.GaugeValue, "MHz", oldNames, ""},
	{"DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", telemetry.MemClock, 1, prometheus.GaugeValue, "MHz", oldNames, ""},
	{"DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", telemetry.MemoryTemp, 1, prometheus.GaugeValue, "°C", oldNames, ""},
	{"DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", telemetry.Temperature, 1, prometheus.GaugeValue, "°C", oldNames, ""},
	{"DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", telemetry.Power, 1, prometheus.GaugeValue, "W", oldNames, ""},
	{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", telemetry.Energy, 1, prometheus.CounterValue, "mJ", oldNames, ""},
	{"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", telemetry.PCIeReplay, 1, prometheus.CounterValue, "", oldNames, ""},
	{"DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "PCIe TX throughput (in KB/s) via NVML.", telemetry.PCIeTX, 1, prometheus.GaugeValue, "KB/s", allGens, ""},
	{"DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "PCIe RX throughput (in KB/s) via NVML.", telemetry.PCIeRX, 1, prometheus.GaugeValue, "KB/s", allGens, ""},
	{"DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", telemetry.GPUUtil, 1, prometheus.GaugeValue, "%", oldNames, ""},
	{"DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", telemetry.MemCopyUtil, 1, prometheus.GaugeValue, "%", allGens, ""},
	{"DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %).", telemetry.EncUtil, 1, prometheus.GaugeValue, "%", allGens, ""},
	{"DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %).", telemetry.DecUtil, 1, prometheus.GaugeValue, "%", allGens, ""},
	{"DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", telemetry.FBFree, 1.0 / bytesPerMiB, prometheus.GaugeValue, "MiB", allGens, ""},
	{"DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", telemetry.FBUsed, 1.0 / bytesPerMiB, prometheus.GaugeValue, "MiB", allGens, ""},
	{"DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", telemetry.FBReserved, 1.0 / bytesPerMiB, prometheus.GaugeValue, "MiB", allGens, ""},
	{"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "Total number of NVLink bandwidth counters for all lanes.", telemetry.NVLinkBandwidth, 1.0 / 1024 / 1000, prometheus.GaugeValue, "MB/s", oldNames, ""},
	{"DCGM_FI_DEV_VGPU_LICENSE_STATUS", "vGPU License status", telemetry.VGPULicense, 1, prometheus.GaugeValue, "0/1", allGens, ""},
	{"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", telemetry.RemappedRowsUnc, 1, prometheus.CounterValue, "", oldNames, ""},
	{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", telemetry.RemappedRowsCorr, 1, prometheus.CounterValue, "", oldNames, ""},
	{"DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", telemetry.RowRemapFailure, 1, prometheus.GaugeValue, "0/1", oldNames, ""},

	// 4.9's names for the rows above (DCGM 4.7), in the same order.
	{"DCGM_FI_DEV_SM_CLOCK_HERTZ", "SM clock for the device (in Hz).", telemetry.SMClock, 1e6, prometheus.GaugeValue, "Hz", newNames,
		header(3559, "`DCGM_FI_DEV_SM_CLOCK_HERTZ 1603`, \"in hertz\"; `base_unit_fields_test.go` pairs it with `DCGM_FI_DEV_SM_CLOCK` (100)")},
	{"DCGM_FI_DEV_MEMORY_CLOCK_HERTZ", "Memory clock for the device (in Hz).", telemetry.MemClock, 1e6, prometheus.GaugeValue, "Hz", newNames,
		header(3564, "`DCGM_FI_DEV_MEMORY_CLOCK_HERTZ 1604`, \"in hertz\"; `base_unit_fields_test.go` pairs it with `DCGM_FI_DEV_MEM_CLOCK` (101)")},
	{"DCGM_FI_DEV_MEMORY_TEMP_CELSIUS", "Memory temperature for the device (in C).", telemetry.MemoryTemp, 1, prometheus.GaugeValue, "°C", newNames,
		header(3726, "`DCGM_FI_DEV_MEMORY_TEMP` is an alias of `DCGM_FI_DEV_MEMORY_TEMP_CELSIUS` (140)")},
	{"DCGM_FI_DEV_GPU_TEMP_CELSIUS", "GPU temperature (in C).", telemetry.Temperature, 1, prometheus.GaugeValue, "°C", newNames,
		header(3727, "`DCGM_FI_DEV_GPU_TEMP` is an alias of `DCGM_FI_DEV_GPU_TEMP_CELSIUS` (150)")},
	{"DCGM_FI_DEV_BOARD_POWER_WATTS", "Power usage for the device (in W).", telemetry.Power, 1, prometheus.GaugeValue, "W", newNames,
		header(3731, "`DCGM_FI_DEV_POWER_USAGE` is an alias of `DCGM_FI_DEV_BOARD_POWER_WATTS` (155)")},
	{"DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL", "Total GPU energy consumption since the driver was last reloaded (in J).", telemetry.Energy, 1e-3, prometheus.CounterValue, "J", newNames,
		header(3599, "`DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL 1611`, \"in joules\"; `base_unit_fields_test.go` pairs it with `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (156)")},
	{"DCGM_FI_DEV_PCIE_REPLAY_TOTAL", "Total number of PCIe retries.", telemetry.PCIeReplay, 1, prometheus.CounterValue, "", newNames,
		header(3745, "`DCGM_FI_DEV_PCIE_REPLAY_COUNTER` is an alias of `DCGM_FI_DEV_PCIE_REPLAY_TOTAL` (202)")},
	{"DCGM_FI_DEV_GPU_UTIL_RATIO", "GPU utilization (ratio, 0 to 1).", telemetry.GPUUtil, 0.01, prometheus.GaugeValue, "0-1", newNames,
		header(3746, "`DCGM_FI_DEV_GPU_UTIL` is an alias of `DCGM_FI_DEV_GPU_UTIL_RATIO` (203); the ratio is 4.9's release note (\"utilization from a percentage to a 0 to 1 ratio\")")},
	{"DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL", "NVLink throughput total for all lanes (in B/s).", telemetry.NVLinkBandwidth, 1, prometheus.GaugeValue, "B/s", newNames,
		header(3658, "`DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL` is an alias of `DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL` (449); bytes per second is 4.9's release note (\"NVLink throughput from MB/s to bytes per second\")")},
	{"DCGM_FI_DEV_ROW_REMAP_UNCORRECTABLE_TOTAL", "Number of remapped rows for uncorrectable errors", telemetry.RemappedRowsUnc, 1, prometheus.CounterValue, "", newNames,
		header(3761, "`DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS` is an alias of `DCGM_FI_DEV_ROW_REMAP_UNCORRECTABLE_TOTAL` (393)")},
	{"DCGM_FI_DEV_ROW_REMAP_CORRECTABLE_TOTAL", "Number of remapped rows for correctable errors", telemetry.RemappedRowsCorr, 1, prometheus.CounterValue, "", newNames,
		header(3762, "`DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS` is an alias of `DCGM_FI_DEV_ROW_REMAP_CORRECTABLE_TOTAL` (394)")},
	{"DCGM_FI_DEV_ROW_REMAP_FAILED", "Whether remapping of rows has failed", telemetry.RowRemapFailure, 1, prometheus.GaugeValue, "0/1", newNames,
		header(3763, "`DCGM_FI_DEV_ROW_REMAP_FAILURE` is an alias of `DCGM_FI_DEV_ROW_REMAP_FAILED` (395)")},

	// The health fields: in no default list (commented out in
	// default-counters.csv, whose names, types and help texts these are),
	// served when -f names them, under either generation's name.
	{"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.", telemetry.ECCSBEVolatile, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", telemetry.ECCDBEVolatile, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors.", telemetry.ECCSBEAggregate, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors.", telemetry.ECCDBEAggregate, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_RETIRED_SBE", "Total number of retired pages due to single-bit errors.", telemetry.RetiredPagesSBE, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_RETIRED_DBE", "Total number of retired pages due to double-bit errors.", telemetry.RetiredPagesDBE, 1, prometheus.CounterValue, "", 0, ""},
	{"DCGM_FI_DEV_RETIRED_PENDING", "Total number of pages pending retirement.", telemetry.RetiredPagesPending, 1, prometheus.CounterValue, "0/1", 0, ""},
	{"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons (bitmask of NVML's clocks event reasons).", telemetry.ClocksEventReasons, 1, prometheus.GaugeValue, "bitmask", 0, ""},
	{"DCGM_FI_DEV_POWER_VIOLATION", "Throttling duration due to power constraints (in ns).", telemetry.PowerViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_THERMAL_VIOLATION", "Throttling duration due to thermal constraints (in ns).", telemetry.ThermalViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "Throttling duration due to sync-boost constraints (in ns).", telemetry.SyncBoostViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", "Throttling duration due to board limit constraints (in ns).", telemetry.BoardLimitViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_LOW_UTIL_VIOLATION", "Throttling duration due to low utilization (in ns).", telemetry.LowUtilViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_RELIABILITY_VIOLATION", "Throttling duration due to reliability constraints (in ns).", telemetry.ReliabilityViolation, 1e9, prometheus.CounterValue, "ns", 0, ""},
	{"DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power management limit (in W).", telemetry.PowerMgmtLimit, 1, prometheus.GaugeValue, "W", 0, ""},
	{"DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Effective power limit that the driver enforces after taking into account all limiters (in W).", telemetry.EnforcedPowerLimit, 1, prometheus.GaugeValue, "W", 0, ""},
	{"DCGM_FI_DEV_PSTATE", "Performance state (P-state) 0-15. 0=highest.", telemetry.PState, 1, prometheus.GaugeValue, "P-state", 0, ""},
	{"DCGM_FI_DEV_FAN_SPEED", "Fan speed for the device in percent 0-100.", telemetry.FanSpeed, 1, prometheus.GaugeValue, "%", 0, ""},

	// Their DCGM 4.7 names, where the header renames them; the ECC totals
	// and violation counters keep their names (dcgm_fields.h:937-954,
	// 844-869, defined by number, no alias).
	{"DCGM_FI_DEV_PAGE_RETIRED_SBE_TOTAL", "Total number of retired pages due to single-bit errors.", telemetry.RetiredPagesSBE, 1, prometheus.CounterValue, "", 0,
		header(3758, "`DCGM_FI_DEV_RETIRED_SBE` is an alias of `DCGM_FI_DEV_PAGE_RETIRED_SBE_TOTAL` (390)")},
	{"DCGM_FI_DEV_PAGE_RETIRED_DBE_TOTAL", "Total number of retired pages due to double-bit errors.", telemetry.RetiredPagesDBE, 1, prometheus.CounterValue, "", 0,
		header(3759, "`DCGM_FI_DEV_RETIRED_DBE` is an alias of `DCGM_FI_DEV_PAGE_RETIRED_DBE_TOTAL` (391)")},
	{"DCGM_FI_DEV_PAGE_RETIRED_PENDING", "Total number of pages pending retirement.", telemetry.RetiredPagesPending, 1, prometheus.CounterValue, "0/1", 0,
		header(3760, "`DCGM_FI_DEV_RETIRED_PENDING` is an alias of `DCGM_FI_DEV_PAGE_RETIRED_PENDING` (392)")},
	{"DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "Current clock event reasons (bitmask).", telemetry.ClocksEventReasons, 1, prometheus.GaugeValue, "bitmask", 0,
		header(592, "`DCGM_FI_DEV_CLOCK_THROTTLE_REASONS` is an alias of `DCGM_FI_DEV_CLOCKS_EVENT_REASONS` (112)")},
	{"DCGM_FI_DEV_BOARD_POWER_LIMIT_REQUESTED_WATTS", "Power management limit (in W).", telemetry.PowerMgmtLimit, 1, prometheus.GaugeValue, "W", 0,
		header(3735, "`DCGM_FI_DEV_POWER_MGMT_LIMIT` is an alias of `DCGM_FI_DEV_BOARD_POWER_LIMIT_REQUESTED_WATTS` (160)")},
	{"DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS", "Effective power limit that the driver enforces (in W).", telemetry.EnforcedPowerLimit, 1, prometheus.GaugeValue, "W", 0,
		header(3739, "`DCGM_FI_DEV_ENFORCED_POWER_LIMIT` is an alias of `DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS` (164)")},
	{"DCGM_FI_DEV_GPU_PSTATE", "Performance state (P-state) 0-15. 0=highest.", telemetry.PState, 1, prometheus.GaugeValue, "P-state", 0,
		header(3744, "`DCGM_FI_DEV_PSTATE` is an alias of `DCGM_FI_DEV_GPU_PSTATE` (190)")},
	{"DCGM_FI_DEV_FAN_SPEED_RATIO", "Fan speed for the device as a ratio of the maximum noise-tolerance fan speed.", telemetry.FanSpeed, 0.01, prometheus.GaugeValue, "0-1", 0,
		header(3604, "`DCGM_FI_DEV_FAN_SPEED_RATIO 1612`, \"as a ratio\"; `base_unit_fields_test.go` pairs it with `DCGM_FI_DEV_FAN_SPEED` (191)")},

	// DCGM's profiling fields (--dcgm): 4.8's names, in the order of
	// default-counters.csv, then DCGM 4.7's (4.9) and 4.10's. SM_ACTIVE and
	// SM_OCCUPANCY are commented out of the default list: served when -f
	// names them. Device-wide, like the clocks: DCGM measures the GPU.
	{"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.", telemetry.ProfGrEngineActive, 1, prometheus.GaugeValue, "0-1", oldNames, ""},
	{"DCGM_FI_PROF_SM_ACTIVE", "The ratio of cycles an SM has at least 1 warp assigned.", telemetry.ProfSMActive, 1, prometheus.GaugeValue, "0-1", 0, ""},
	{"DCGM_FI_PROF_SM_OCCUPANCY", "The ratio of number of warps resident on an SM.", telemetry.ProfSMOccupancy, 1, prometheus.GaugeValue, "0-1", 0, ""},
	{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "Ratio of cycles the tensor (HMMA) pipe is active.", telemetry.ProfTensorActive, 1, prometheus.GaugeValue, "0-1", oldNames, ""},
	{"DCGM_FI_PROF_DRAM_ACTIVE", "Ratio of cycles the device memory interface is active sending or receiving data.", telemetry.ProfDRAMActive, 1, prometheus.GaugeValue, "0-1", oldNames, ""},
	{"DCGM_FI_PROF_PCIE_TX_BYTES", "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
		telemetry.ProfPCIeTX, 1, prometheus.GaugeValue, "B/s", gens(Gen482, Gen48, Gen49), ""},
	{"DCGM_FI_PROF_PCIE_RX_BYTES", "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
		telemetry.ProfPCIeRX, 1, prometheus.GaugeValue, "B/s", gens(Gen482, Gen48, Gen49), ""},

	{"DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", "Ratio of time the graphics engine is active.", telemetry.ProfGrEngineActive, 1, prometheus.GaugeValue, "0-1", newNames,
		header(3910, "`DCGM_FI_PROF_GR_ENGINE_ACTIVE` is an alias of `DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO` (1001)")},
	{"DCGM_FI_PROF_SM_UTIL_RATIO", "The ratio of cycles an SM has at least 1 warp assigned.", telemetry.ProfSMActive, 1, prometheus.GaugeValue, "0-1", 0,
		header(3911, "`DCGM_FI_PROF_SM_ACTIVE` is an alias of `DCGM_FI_PROF_SM_UTIL_RATIO` (1002)")},
	{"DCGM_FI_PROF_SM_OCCUPANCY_RATIO", "The ratio of number of warps resident on an SM.", telemetry.ProfSMOccupancy, 1, prometheus.GaugeValue, "0-1", 0,
		header(3912, "`DCGM_FI_PROF_SM_OCCUPANCY` is an alias of `DCGM_FI_PROF_SM_OCCUPANCY_RATIO` (1003)")},
	{"DCGM_FI_PROF_TENSOR_UTIL_RATIO", "The ratio of cycles any tensor pipe is active.", telemetry.ProfTensorActive, 1, prometheus.GaugeValue, "0-1", newNames,
		header(3913, "`DCGM_FI_PROF_PIPE_TENSOR_ACTIVE` is an alias of `DCGM_FI_PROF_TENSOR_UTIL_RATIO` (1004)")},
	{"DCGM_FI_PROF_DRAM_UTIL_RATIO", "Ratio of cycles the device memory interface is active sending or receiving data.", telemetry.ProfDRAMActive, 1, prometheus.GaugeValue, "0-1", newNames,
		header(3914, "`DCGM_FI_PROF_DRAM_ACTIVE` is an alias of `DCGM_FI_PROF_DRAM_UTIL_RATIO` (1005)")},
	{"DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND", "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
		telemetry.ProfPCIeTX, 1, prometheus.GaugeValue, "B/s", gens(Gen410),
		"4.10's release note: \"DCGM_FI_PROF_PCIE_TX_BYTES -> DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND\"; 4.9 keeps `DCGM_FI_PROF_PCIE_TX_BYTES` (1009, `dcgm_fields.h:2599`)"},
	{"DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND", "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
		telemetry.ProfPCIeRX, 1, prometheus.GaugeValue, "B/s", gens(Gen410),
		"4.10's release note: \"DCGM_FI_PROF_PCIE_RX_BYTES -> DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND\"; 4.9 keeps `DCGM_FI_PROF_PCIE_RX_BYTES` (1010, `dcgm_fields.h:2607`)"},

	// Not in any default list: served when -f names it. In 4.9 and 4.10
	// DCGM_FI_DEV_FB_TOTAL stands in for DCGM_FI_DEV_FB_CAPACITY_BYTES,
	// whose name only 4.9's release note gives (go-dcgm v1.4611.2 has no
	// bytes-named framebuffer field): the field under its old name and
	// unit, listed in docs/dcgm-exporter.md as not yet known.
	{"DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).", telemetry.FBTotal, 1.0 / bytesPerMiB, prometheus.GaugeValue, "MiB", newNames,
		"4.9's release note collects `DCGM_FI_DEV_FB_CAPACITY_BYTES` by default; go-dcgm v1.4611.2 has no bytes-named framebuffer field, so `dcgm_fields.h:884` `DCGM_FI_DEV_FB_TOTAL` (250) stands in, under its old name and unit"},
}

// podFields are the dcgm-exporter fields a pod's series carries on a GPU
// shared by several pods, and the device-level series on a GPU held by
// one pod with per-pod shares: those with a per-pod value (the pod's own
// share, attribution.Device.PodValue). The others (power, temperature,
// clocks, energy, ...) are device-wide figures, served once per GPU (on
// the device-level series of a shared GPU, on the pod's series of a GPU
// one pod holds), so that a sum over a node's series (NVIDIA's "GPU
// Power Total" panel) counts each GPU once.
var podFields = fields(telemetry.GPUUtil, telemetry.MemCopyUtil, telemetry.EncUtil, telemetry.DecUtil, telemetry.FBUsed)

func fields(fs ...telemetry.Field) telemetry.FieldSet {
	var s telemetry.FieldSet
	for _, f := range fs {
		s = s.With(f)
	}
	return s
}

// value is a snapshot value in the row's unit, as DCGM writes it: the
// violation times as whole nanoseconds (the snapshot keeps seconds), the
// power limits as whole watts (DCGM divides NVML's milliwatts as
// integers, DcgmCacheManager.cpp).
func (m *dcgmMetric) value(v float64) float64 {
	v *= m.Scale
	switch {
	case m.Unit == "ns":
		return math.Round(v)
	case m.Field == telemetry.PowerMgmtLimit || m.Field == telemetry.EnforcedPowerLimit:
		return math.Trunc(v)
	}
	return v
}

// xidMetrics are dcgm-exporter's last-XID gauge under its names. It is
// not a field of the reading but of the device's XID history, and carries
// err_code and err_msg.
var xidMetrics = []struct {
	Name    string
	Default genSet
	Source  string
}{
	{"DCGM_FI_DEV_XID_ERRORS", oldNames, ""},
	{"DCGM_FI_DEV_XID_ERROR", newNames, header(3748, "`DCGM_FI_DEV_XID_ERRORS` is an alias of `DCGM_FI_DEV_XID_ERROR` (230)")},
}

const xidHelp = "Value of the last XID error encountered."

// dcgm-exporter's own XID families (its DCGM_EXP_* fields, in no default
// list): the XIDs seen within the window of -x/--xid-count-window-size,
// and since the exporter started, labelled xid. dcgm-exporter takes a
// family's help text from the field list's row; these are the agent's.
const (
	xidCountName     = "DCGM_EXP_XID_ERRORS_COUNT"
	xidCountHelp     = "XID errors observed during the configured time window."
	xidTotalName     = "DCGM_EXP_XID_ERRORS_TOTAL"
	xidTotalHelp     = "Total XID errors observed since exporter start."
	DefaultXIDWindow = 5 * time.Minute // dcgm-exporter's -x default, 300000 ms
)

// DCGMNames lists every dcgm-exporter metric name the agent serves, in
// any generation. They break Prometheus naming conventions on purpose
// (compatibility), so lint checks exempt exactly these.
func DCGMNames() []string {
	names := make([]string, 0, len(dcgmMetrics)+len(xidMetrics))
	for _, m := range dcgmMetrics {
		names = append(names, m.Name)
	}
	for _, m := range xidMetrics {
		names = append(names, m.Name)
	}
	return append(names, xidCountName, xidTotalName)
}

// The labels dcgm-exporter puts on every device metric, in its order.
var (
	idLabels     = []string{"gpu", "UUID"}                                      // the agent's per-GPU health metrics
	deviceLabels = []string{"gpu", "UUID", "pci_bus_id", "device", "modelName"} // then the host label
	migLabels    = []string{"GPU_I_PROFILE", "GPU_I_ID"}
	podLabels    = []string{"namespace", "pod", "container"}

	// With -o/--use-old-namespace dcgm-exporter names the pod labels as
	// its 1.x did, and writes uuid for UUID (its
	// internal/pkg/transformation/const.go and collector.toMetric). In
	// podLabels' order.
	oldPodLabels = []string{"pod_namespace", "pod_name", "container_name"}
)

// The driver's version is a label field of dcgm-exporter's default field
// list, on every series: DCGM_FI_DRIVER_VERSION until 4.9, which names it
// DCGM_FI_SYSTEM_DRIVER_VERSION (go-dcgm v1.4611.2 dcgm_fields.h:3694:
// the old name is an alias of the new).
const (
	driverVersionLabel       = "DCGM_FI_DRIVER_VERSION"
	systemDriverVersionLabel = "DCGM_FI_SYSTEM_DRIVER_VERSION"
)

// labelFields are the label-type fields of dcgm-exporter's field lists
// the agent can fill: each becomes a label of every device series.
var labelFields = map[string]func(o *Options) string{
	driverVersionLabel:       func(o *Options) string { return o.DriverVersion },
	systemDriverVersionLabel: func(o *Options) string { return o.DriverVersion },
}

// ProfilingNames returns the names of the fields in a dcgm-exporter field
// list that only DCGM's profiling module produces (--dcgm), in the list's
// order: without DCGM they are absent, and the agent says so.
func ProfilingNames(fields []dcgmcsv.Field) []string {
	var out []string
	for _, f := range fields {
		if f.Type == dcgmcsv.TypeLabel {
			continue
		}
		for _, m := range dcgmMetrics {
			if m.Name == f.Name && telemetry.ProfilingFields.Has(m.Field) {
				out = append(out, f.Name)
			}
		}
	}
	return out
}

// Unsupported returns the names of the fields in a dcgm-exporter field
// list that the agent cannot serve, in the list's order: fields it does
// not read, and label rows it cannot fill. The profiling fields are not
// among them: they need DCGM (ProfilingNames).
func Unsupported(fields []dcgmcsv.Field) []string {
	var out []string
	for _, f := range fields {
		if _, ok := labelFields[f.Name]; ok && f.Type == dcgmcsv.TypeLabel {
			continue
		}
		if f.Type != dcgmcsv.TypeLabel && slices.Contains(DCGMNames(), f.Name) {
			continue
		}
		out = append(out, f.Name)
	}
	return out
}

// layout is the label names of one collector's series: a GPU's health
// (id), a whole GPU's device series (dcgm-exporter's, with the field
// list's label fields) and the pod labels.
type layout struct {
	id, device, pod []string
}

// newLayout is dcgm-exporter's labels as the options ask: uuid and the old
// pod labels with -o, the generation's host label, none without a host
// name (its template leaves an empty one out), then the label fields.
func newLayout(opts *Options, labelFields []string) layout {
	l := layout{id: idLabels, pod: podLabels}
	if opts.UseOldNamespace {
		l.id = []string{"gpu", "uuid"}
		l.pod = oldPodLabels
	}
	l.device = append(l.device, l.id...)
	l.device = append(l.device, deviceLabels[len(idLabels):]...)
	if opts.Hostname != "" {
		l.device = append(l.device, opts.Generation.HostLabel())
	}
	l.device = append(l.device, labelFields...)
	return l
}

// family is one metric in the four label sets it can carry: a whole GPU or
// a MIG instance, attributed to a pod or not. dcgm-exporter leaves the pod
// and MIG labels off when they do not apply; so do we, which makes this an
// unchecked collector (one name, several label sets).
type family struct {
	name, help               string
	gpu, gpuPod, mig, migPod *prometheus.Desc
	typ                      prometheus.ValueType
	idx                      int // position in Collector.families, the text writer's order
}

func (l layout) newFamily(name, help string, typ prometheus.ValueType, extra ...string) *family {
	desc := func(sets ...[]string) *prometheus.Desc {
		var labels []string
		for _, s := range sets {
			labels = append(labels, s...)
		}
		return prometheus.NewDesc(name, help, append(labels, extra...), nil)
	}
	return &family{
		name:   name,
		help:   help,
		gpu:    desc(l.device),
		gpuPod: desc(l.device, l.pod),
		mig:    desc(l.device, migLabels),
		migPod: desc(l.device, migLabels, l.pod),
		typ:    typ,
	}
}

// LintExempt reports whether a Prometheus lint problem (promlint, or
// `promtool check metrics`) is one this compatibility layer causes on
// purpose: dcgm-exporter's metric names, and its camelCase label names
// (UUID, modelName, Hostname, GPU_I_*) that the agent's own device metrics
// carry too, so they join with dcgm-exporter's series.
func LintExempt(metric, problem string) bool {
	for _, n := range DCGMNames() {
		if metric == n {
			return true
		}
	}
	return strings.HasPrefix(metric, Namespace+"_") &&
		strings.Contains(problem, "label names should be written in 'snake_case' not 'camelCase'")
}
