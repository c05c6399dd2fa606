package nvml

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// A reader makes one NVML call and fills the fields it answers. The table
// below is the whole per-tick work for a device: adding a field is one
// entry here and one line in the exporter's mapping table.
type reader struct {
	call   string
	fields telemetry.FieldSet
	read   func(d *device, r *telemetry.Reading) nvml.Return
}

func fields(fs ...telemetry.Field) telemetry.FieldSet {
	var s telemetry.FieldSet
	for _, f := range fs {
		s = s.With(f)
	}
	return s
}

// NVML reports periods and latencies in microseconds.
const microsecond = 1e-6

var readers = []reader{
	{"GetUtilizationRates", fields(telemetry.GPUUtil, telemetry.MemCopyUtil), readUtilization},
	{"GetEncoderUtilization", fields(telemetry.EncUtil, telemetry.EncSamplingPeriod), readEncoderUtilization},
	{"GetDecoderUtilization", fields(telemetry.DecUtil, telemetry.DecSamplingPeriod), readDecoderUtilization},
	{"GetMemoryInfo", fields(telemetry.FBUsed, telemetry.FBFree, telemetry.FBReserved, telemetry.FBTotal), readMemory},
	{"GetTemperature", fields(telemetry.Temperature), readTemperature},
	{"GetPowerUsage", fields(telemetry.Power), readPower},
	{"GetClockInfo(SM)", fields(telemetry.SMClock), readSMClock},
	{"GetClockInfo(MEM)", fields(telemetry.MemClock), readMemClock},
	// One GetFieldValues call for the PCIe counters and energy, before
	// readEnergy, which may take energy from its answer (see pcie.go).
	{"GetFieldValues(PCIe, energy)", fields(telemetry.PCIeTX, telemetry.PCIeRX), readFieldValues},
	{"GetTotalEnergyConsumption", fields(telemetry.Energy), readEnergy},
	{"GetEncoderStats", fields(telemetry.EncSessions, telemetry.EncFPS, telemetry.EncLatency), readEncoderStats},
}

// encoderFields are the fields that need an NVENC engine.
var encoderFields = fields(telemetry.EncUtil, telemetry.EncSamplingPeriod,
	telemetry.EncSessions, telemetry.EncFPS, telemetry.EncLatency)

func readUtilization(d *device, r *telemetry.Reading) nvml.Return {
	u, ret := d.handle.GetUtilizationRates()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.GPUUtil, float64(u.Gpu))
		r.Set(telemetry.MemCopyUtil, float64(u.Memory))
	}
	return ret
}

func readEncoderUtilization(d *device, r *telemetry.Reading) nvml.Return {
	u, period, ret := d.handle.GetEncoderUtilization()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.EncUtil, float64(u))
		r.Set(telemetry.EncSamplingPeriod, float64(period)*microsecond)
	}
	return ret
}

func readDecoderUtilization(d *device, r *telemetry.Reading) nvml.Return {
	u, period, ret := d.handle.GetDecoderUtilization()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.DecUtil, float64(u))
		r.Set(telemetry.DecSamplingPeriod, float64(period)*microsecond)
	}
	return ret
}

// readMemory prefers GetMemoryInfo_v2, which reports reserved memory
// apart from used; v1's used includes the reserved part. A device (or
// driver) without v2 falls back to v1 for good.
func readMemory(d *device, r *telemetry.Reading) nvml.Return {
	return readMemoryOf(d.handle, &d.memV1, r)
}

func readMemoryOf(h Device, useV1 *bool, r *telemetry.Reading) nvml.Return {
	if !*useV1 {
		m, ret := h.GetMemoryInfo_v2()
		if ret == nvml.SUCCESS {
			r.Set(telemetry.FBUsed, float64(m.Used))
			r.Set(telemetry.FBFree, float64(m.Free))
			r.Set(telemetry.FBReserved, float64(m.Reserved))
			r.Set(telemetry.FBTotal, float64(m.Total))
			return ret
		}
		if !isNotSupported(ret) {
			return ret
		}
		*useV1 = true
	}
	m, ret := h.GetMemoryInfo()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.FBUsed, float64(m.Used))
		r.Set(telemetry.FBFree, float64(m.Free))
		r.Set(telemetry.FBTotal, float64(m.Total))
	}
	return ret
}

func readTemperature(d *device, r *telemetry.Reading) nvml.Return {
	t, ret := d.handle.GetTemperature(nvml.TEMPERATURE_GPU)
	if ret == nvml.SUCCESS {
		r.Set(telemetry.Temperature, float64(t))
	}
	return ret
}

func readPower(d *device, r *telemetry.Reading) nvml.Return {
	mw, ret := d.handle.GetPowerUsage()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.Power, float64(mw)/1000)
	}
	return ret
}

func readEnergy(d *device, r *telemetry.Reading) nvml.Return {
	if d.pcie.energy {
		return d.energyFromBatch(r)
	}
	mj, ret := d.handle.GetTotalEnergyConsumption()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.Energy, float64(mj))
	}
	return ret
}

func readSMClock(d *device, r *telemetry.Reading) nvml.Return {
	return readClock(d, r, nvml.CLOCK_SM, telemetry.SMClock)
}

func readMemClock(d *device, r *telemetry.Reading) nvml.Return {
	return readClock(d, r, nvml.CLOCK_MEM, telemetry.MemClock)
}

func readClock(d *device, r *telemetry.Reading, c nvml.ClockType, f telemetry.Field) nvml.Return {
	mhz, ret := d.handle.GetClockInfo(c)
	if ret == nvml.SUCCESS {
		r.Set(f, float64(mhz))
	}
	return ret
}

func readEncoderStats(d *device, r *telemetry.Reading) nvml.Return {
	sessions, fps, latencyUs, ret := d.handle.GetEncoderStats()
	if ret == nvml.SUCCESS {
		r.Set(telemetry.EncSessions, float64(sessions))
		r.Set(telemetry.EncFPS, float64(fps))
		r.Set(telemetry.EncLatency, float64(latencyUs)*microsecond)
	}
	return ret
}
