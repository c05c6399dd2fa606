package sim

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The nvml.Device methods the agent calls. Everything derives from three
// curves (GPU, encoder, decoder utilization) so the values agree with one
// another the way a real card's do.

func (d *Device) GetUUID() (string, nvml.Return) { return d.uuid, d.ret() }

func (d *Device) GetName() (string, nvml.Return) { return ModelName, d.ret() }

func (d *Device) GetMinorNumber() (int, nvml.Return) { return d.index, d.ret() }

func (d *Device) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	var p nvml.PciInfo
	for i, c := range fmt.Sprintf("00000000:%02X:00.0", 0x3B+d.index) {
		p.BusId[i] = int8(c) // #nosec G115 -- a small simulated value
	}
	p.Bus = uint32(0x3B + d.index) // #nosec G115 -- a small simulated value
	return p, d.ret()
}

// GetMigMode: a T4 has no MIG.
func (d *Device) GetMigMode() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }

func (d *Device) GetEncoderCapacity(nvml.EncoderType) (int, nvml.Return) { return 100, d.ret() }

// The MIG calls: a T4 has no MIG, and the sampler asks them only of a GPU
// whose MIG mode is on.
func (d *Device) GetMaxMigDeviceCount() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
func (d *Device) GetMigDeviceHandleByIndex(int) (nvml.Device, nvml.Return) {
	return nil, nvml.ERROR_NOT_SUPPORTED
}
func (d *Device) GetGpuInstanceId() (int, nvml.Return)     { return 0, nvml.ERROR_NOT_SUPPORTED }
func (d *Device) GetComputeInstanceId() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
func (d *Device) GetAttributes() (nvml.DeviceAttributes, nvml.Return) {
	return nvml.DeviceAttributes{}, nvml.ERROR_NOT_SUPPORTED
}

func (d *Device) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	d.cost(callGetUtilizationRates)
	u := d.gpu.at(d.t())
	return nvml.Utilization{Gpu: uint32(u), Memory: uint32(math.Round(u * 0.6))}, d.ret()
}

func (d *Device) GetEncoderUtilization() (uint32, uint32, nvml.Return) {
	d.cost(callGetEncoderUtilization)
	return uint32(d.enc.at(d.t())), samplePeriodUs, d.ret()
}

func (d *Device) GetDecoderUtilization() (uint32, uint32, nvml.Return) {
	d.cost(callGetDecoderUtilization)
	return uint32(d.dec.at(d.t())), samplePeriodUs, d.ret()
}

// used is framebuffer use: a resident model plus working memory that grows
// with load, rounded to MiB as the driver allocates.
func (d *Device) used() uint64 {
	b := d.mem + d.gpu.smooth(d.t())/100*float64(4<<30)
	return uint64(b) &^ (1<<20 - 1)
}

func (d *Device) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	d.cost(callGetMemoryInfov2)
	used := d.used()
	return nvml.Memory_v2{
		Version:  nvml.STRUCT_VERSION(nvml.Memory_v2{}, 2),
		Total:    memoryTotal,
		Reserved: memoryReserved,
		Used:     used,
		Free:     memoryTotal - memoryReserved - used,
	}, d.ret()
}

func (d *Device) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	d.cost(callGetMemoryInfo)
	used := d.used() + memoryReserved
	return nvml.Memory{Total: memoryTotal, Used: used, Free: memoryTotal - used}, d.ret()
}

func (d *Device) GetTemperature(nvml.TemperatureSensors) (uint32, nvml.Return) {
	d.cost(callGetTemperature)
	return uint32(math.Round(38 + d.gpu.smooth(d.t())*0.4)), d.ret()
}

// Power follows the smooth GPU curve: 20 W idle, 70 W (the T4's limit) at
// full load. Energy is its exact integral, so the counter never goes back.
const idleWatts, wattsPerPercent = 20.0, 0.5

func (d *Device) GetPowerUsage() (uint32, nvml.Return) {
	d.cost(callGetPowerUsage)
	return uint32(math.Round((idleWatts + wattsPerPercent*d.gpu.smooth(d.t())) * 1000)), d.ret()
}

func (d *Device) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	d.cost(callGetTotalEnergyConsumption)
	return d.energyAt(d.t()), d.ret()
}

// energyAt is the energy counter in mJ, t seconds after start.
func (d *Device) energyAt(t float64) uint64 {
	joules := idleWatts*t + wattsPerPercent*d.gpu.integral(t)
	return uint64(joules * 1000)
}

func (d *Device) GetClockInfo(c nvml.ClockType) (uint32, nvml.Return) {
	d.cost(callGetClockInfo)
	switch c {
	case nvml.CLOCK_SM, nvml.CLOCK_GRAPHICS:
		return uint32(585 + math.Round(d.gpu.smooth(d.t())*10)), d.ret()
	case nvml.CLOCK_MEM:
		return 5000, d.ret()
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}

// PCIe throughput in KB/s per percent of GPU load.
const pcieTXPerPercent, pcieRXPerPercent = 400, 1200

func (d *Device) GetPcieThroughput(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
	d.cost(callGetPcieThroughput)
	u := d.gpu.smooth(d.t())
	if c == nvml.PCIE_UTIL_TX_BYTES {
		return uint32(math.Round(u * pcieTXPerPercent)), d.ret()
	}
	return uint32(math.Round(u * pcieRXPerPercent)), d.ret()
}

// GetFieldValues answers the PCIe byte counters (FI_DEV_PCIE_COUNT_TX/RX_
// BYTES), cumulative since start: the integral of the throughput curve
// GetPcieThroughput samples; and the energy counter, as
// GetTotalEnergyConsumption. Other fields are NOT_SUPPORTED.
func (d *Device) GetFieldValues(values []nvml.FieldValue) nvml.Return {
	d.cost(callGetFieldValues)
	if r := d.ret(); r != nvml.SUCCESS {
		return r
	}
	// One reading of the clock for both the stamp and the counter, as
	// the driver stamps the value it read.
	ts := d.lib.now().UnixMicro()
	t := float64(ts-d.lib.epoch.UnixMicro()) / 1e6
	for i := range values {
		v := &values[i]
		v.Timestamp = ts
		v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
		var kbps float64
		switch v.FieldId {
		case nvml.FI_DEV_TOTAL_ENERGY_CONSUMPTION:
			v.NvmlReturn = uint32(nvml.SUCCESS)
			binary.LittleEndian.PutUint64(v.Value[:], d.energyAt(t))
			continue
		case nvml.FI_DEV_PCIE_COUNT_TX_BYTES:
			kbps = pcieTXPerPercent
		case nvml.FI_DEV_PCIE_COUNT_RX_BYTES:
			kbps = pcieRXPerPercent
		default:
			v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
			continue
		}
		v.NvmlReturn = uint32(nvml.SUCCESS)
		kb := kbps * d.gpu.integral(t)
		if d.gpu.amp == 0 {
			// A static load moves its counters at the whole KB/s that
			// GetPcieThroughput reports, so the derived rate is exact.
			kb = math.Round(kbps*d.gpu.mean) * t
		}
		binary.LittleEndian.PutUint64(v.Value[:], uint64(kb*1024))
	}
	return nvml.SUCCESS
}

// GetEncoderStats: a WebRTC-like encoder, 16 sessions at full load, frame
// rate dropping and latency growing with load.
func (d *Device) GetEncoderStats() (int, uint32, uint32, nvml.Return) {
	d.cost(callGetEncoderStats)
	sessions, fps, latencyUs := encoderStats(d.enc.smooth(d.t()))
	return sessions, fps, latencyUs, d.ret()
}

// GetSamples returns the samples the simulated driver took every 1/6 s
// after lastSeen, up to its buffer's length, with CPU timestamps in µs
// as the real driver gives them; NOT_FOUND when none is newer.
func (d *Device) GetSamples(t nvml.SamplingType, lastSeen uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
	d.cost(callGetSamples)
	if r := d.ret(); r != nvml.SUCCESS {
		return 0, nil, r
	}
	var c curve
	scale := 1.0
	switch t {
	case nvml.GPU_UTILIZATION_SAMPLES:
		c = d.gpu
	case nvml.MEMORY_UTILIZATION_SAMPLES:
		c, scale = d.gpu, 0.6
	case nvml.ENC_UTILIZATION_SAMPLES:
		c = d.enc
	case nvml.DEC_UTILIZATION_SAMPLES:
		c = d.dec
	default:
		return 0, nil, nvml.ERROR_NOT_SUPPORTED
	}
	epochUs := uint64(d.lib.epoch.UnixMicro())
	nowUs := uint64(d.lib.now().UnixMicro())
	// Samples sit on slots counted from the epoch; the first is the slot
	// after lastSeen, and no more than the buffer holds.
	last := (nowUs - epochUs) / samplePeriodUs
	first := uint64(0)
	if lastSeen >= epochUs {
		first = (lastSeen-epochUs)/samplePeriodUs + 1
	}
	if last >= driverBufferLen && first < last-driverBufferLen+1 {
		first = last - driverBufferLen + 1
	}
	if first > last {
		return nvml.VALUE_TYPE_UNSIGNED_INT, nil, nvml.ERROR_NOT_FOUND
	}
	out := make([]nvml.Sample, 0, last-first+1)
	for k := first; k <= last; k++ {
		ts := epochUs + k*samplePeriodUs
		var s nvml.Sample
		s.TimeStamp = ts
		v := math.Round(c.at(float64(k*samplePeriodUs)/1e6) * scale)
		binary.LittleEndian.PutUint32(s.SampleValue[:], uint32(v))
		out = append(out, s)
	}
	return nvml.VALUE_TYPE_UNSIGNED_INT, out, nvml.SUCCESS
}

// The slow fields, as a T4 answers them: a PCIe replay counter (a few
// replays since the driver loaded, seeded per GPU); no memory temperature
// (GDDR6: NVML reports it for HBM only), no row remapping (Ampere and
// later), no NVLink, no vGPU licensing (bare metal).

func (d *Device) GetPcieReplayCounter() (int, nvml.Return) {
	d.cost(callGetPcieReplayCounter)
	return int(mix(uint64(d.index)+7) % 4), d.ret() // #nosec G115 -- bits of a hash, truncated on purpose
}

func (d *Device) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	d.cost(callGetRemappedRows)
	return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED
}

func (d *Device) GetGridLicensableFeatures() (nvml.GridLicensableFeatures, nvml.Return) {
	d.cost(callGetGridLicensableFeatures)
	return nvml.GridLicensableFeatures{}, nvml.ERROR_NOT_SUPPORTED
}

// The health fields, as a T4 answers them: ECC on (a data-center T4 ships
// with it), a few corrected errors and no uncorrected ones, seeded per
// GPU; page retirement (Turing retires pages; row remapping is Ampere's)
// with nothing retired or pending; the clock event reasons, P-state and
// time throttled following the load; a 70 W power limit; no fan (a T4 is
// passively cooled: NVML answers NOT_SUPPORTED).

// eccErrors is the GPU's ECC count of a kind: 0-2 corrected errors since
// the driver loaded, a few more over its life, no uncorrected ones.
func (d *Device) eccErrors(t nvml.MemoryErrorType, c nvml.EccCounterType) uint64 {
	if t != nvml.MEMORY_ERROR_TYPE_CORRECTED {
		return 0
	}
	vol := mix(d.seed^0xecc) % 3
	if c == nvml.AGGREGATE_ECC {
		return vol + mix(d.seed^0xecca)%6
	}
	return vol
}

func (d *Device) GetTotalEccErrors(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	d.cost(callGetTotalEccErrors)
	return d.eccErrors(t, c), d.ret()
}

func (d *Device) GetRetiredPages(nvml.PageRetirementCause) ([]uint64, nvml.Return) {
	d.cost(callGetRetiredPages)
	return []uint64{}, d.ret()
}

func (d *Device) GetRetiredPagesPendingStatus() (nvml.EnableState, nvml.Return) {
	d.cost(callGetRetiredPagesPendingStatus)
	return nvml.FEATURE_DISABLED, d.ret()
}

// The load below which the simulated GPU idles (P8, reason GpuIdle), and
// above which it draws enough to be held at its power cap (reason
// SwPowerCap): 20 W + 0.5 W per percent reaches 90% of 70 W at 86%.
const idleBelow, powerCapAbove = 10.0, 86.0

// powerLimitMilliwatts is a T4's board power limit, its default and the
// most it can be set to.
const powerLimitMilliwatts = 70000

func (d *Device) GetCurrentClocksEventReasons() (uint64, nvml.Return) {
	d.cost(callGetCurrentClocksEventReasons)
	var reasons uint64
	switch u := d.gpu.smooth(d.t()); {
	case u < idleBelow:
		reasons = nvml.ClocksEventReasonGpuIdle
	case u > powerCapAbove:
		reasons = nvml.ClocksEventReasonSwPowerCap
	}
	return reasons, d.ret()
}

// Time held below the application clocks grows with the square of the
// load, so it accumulates slowly under load and hardly when idle: at full
// load 50 ms per second for power, 10 ms for temperature (a T4 relies on
// the server's airflow). The other limiters never engage: 0.
const powerViolationPerSec, thermalViolationPerSec = 0.05, 0.01

func (d *Device) GetViolationStatus(p nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
	d.cost(callGetViolationStatus)
	now := d.lib.now()
	var perSec float64
	switch p {
	case nvml.PERF_POLICY_POWER:
		perSec = powerViolationPerSec
	case nvml.PERF_POLICY_THERMAL:
		perSec = thermalViolationPerSec
	case nvml.PERF_POLICY_SYNC_BOOST, nvml.PERF_POLICY_BOARD_LIMIT,
		nvml.PERF_POLICY_LOW_UTILIZATION, nvml.PERF_POLICY_RELIABILITY:
	default:
		return nvml.ViolationTime{}, nvml.ERROR_INVALID_ARGUMENT
	}
	// ∫ perSec·(u/100)² dt, in seconds.
	seconds := perSec * d.gpu.integralSq(d.lib.elapsed(now)) / (100 * 100)
	return nvml.ViolationTime{
		ReferenceTime: uint64(now.UnixMicro()),
		ViolationTime: uint64(seconds * 1e9),
	}, d.ret()
}

func (d *Device) GetPowerManagementLimit() (uint32, nvml.Return) {
	d.cost(callGetPowerManagementLimit)
	return powerLimitMilliwatts, d.ret()
}

func (d *Device) GetEnforcedPowerLimit() (uint32, nvml.Return) {
	d.cost(callGetEnforcedPowerLimit)
	return powerLimitMilliwatts, d.ret()
}

// GetPerformanceState: P0 under load, P8 (the T4's idle state) when idle.
func (d *Device) GetPerformanceState() (nvml.Pstates, nvml.Return) {
	d.cost(callGetPerformanceState)
	if d.gpu.smooth(d.t()) < idleBelow {
		return nvml.PSTATE_8, d.ret()
	}
	return nvml.PSTATE_0, d.ret()
}

// GetFanSpeed: a T4 has no fan of its own.
func (d *Device) GetFanSpeed() (uint32, nvml.Return) {
	d.cost(callGetFanSpeed)
	return 0, nvml.ERROR_NOT_SUPPORTED
}
