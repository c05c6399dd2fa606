package sim

import "time"

// What each NVML call costs on a real GPU, so that the simulated node costs
// what a real one would (Options.CallLatency). Real NVML calls are ioctls
// into the kernel driver; most return in tens of microseconds, a few wait
// on the hardware. Each figure names its source.
type call uint8

const (
	callGetUtilizationRates call = iota
	callGetEncoderUtilization
	callGetDecoderUtilization
	callGetMemoryInfov2
	callGetMemoryInfo
	callGetTemperature
	callGetPowerUsage
	callGetTotalEnergyConsumption
	callGetClockInfo
	callGetPcieThroughput
	callGetEncoderStats
	callGetSamples
	callGetFieldValues
	callGetProcessUtilization
	callGetComputeRunningProcesses
	callGetGraphicsRunningProcesses
	callGetEncoderSessions
	callGetFBCSessions
	callGetPcieReplayCounter
	callGetRemappedRows
	callGetGridLicensableFeatures
	callGetTotalEccErrors
	callGetRetiredPages
	callGetRetiredPagesPendingStatus
	callGetCurrentClocksEventReasons
	callGetViolationStatus
	callGetPowerManagementLimit
	callGetEnforcedPowerLimit
	callGetPerformanceState
	callGetFanSpeed
	numCalls
)

var callCosts = [numCalls]time.Duration{
	// nvml.h, nvmlDeviceGetPcieThroughput: "This method is not
	// instantaneous; it is querying a byte counter over a 20ms interval".
	callGetPcieThroughput: 20 * time.Millisecond,
	// The rest are NOT measured figures: no GPU was available to this
	// work, and NVIDIA publishes no per-call latencies. They are estimates
	// of one kernel-driver ioctl each (tens of µs), with the power sensor
	// (read over SMBus by the driver) taken as the slowest getter. Replace
	// them with numbers measured on a real node: TestRealNVML (-tags gpu)
	// logs the tick duration, the sum of these over one GPU.
	callGetUtilizationRates:       50 * time.Microsecond,
	callGetEncoderUtilization:     50 * time.Microsecond,
	callGetDecoderUtilization:     50 * time.Microsecond,
	callGetMemoryInfov2:           30 * time.Microsecond,
	callGetMemoryInfo:             30 * time.Microsecond,
	callGetTemperature:            30 * time.Microsecond,
	callGetPowerUsage:             250 * time.Microsecond,
	callGetTotalEnergyConsumption: 250 * time.Microsecond,
	callGetClockInfo:              30 * time.Microsecond,
	callGetEncoderStats:           50 * time.Microsecond,
	callGetSamples:                50 * time.Microsecond,
	// One ioctl for the batch, whatever the number of fields (estimate).
	callGetFieldValues: 60 * time.Microsecond,
	// The per-process calls, estimates too. GetProcessUtilization makes
	// two ioctls (count, then fill) and the driver walks its sample
	// buffer for every process; the process and session lists are one
	// ioctl per try of go-nvml's doubling buffer (starting at 1, so about
	// log2(n)+1 tries for n entries: 3 or 4 on a shared GPU).
	callGetProcessUtilization:       200 * time.Microsecond,
	callGetComputeRunningProcesses:  120 * time.Microsecond,
	callGetGraphicsRunningProcesses: 120 * time.Microsecond,
	callGetEncoderSessions:          120 * time.Microsecond,
	callGetFBCSessions:              60 * time.Microsecond,
	// The slow fields' getters, one ioctl each (estimates).
	callGetPcieReplayCounter:      30 * time.Microsecond,
	callGetRemappedRows:           30 * time.Microsecond,
	callGetGridLicensableFeatures: 30 * time.Microsecond,
	// The health fields' getters, one ioctl each (estimates too).
	// GetRetiredPages is go-nvml's loop, one ioctl while the pages fit
	// its buffer (none retired: one).
	callGetTotalEccErrors:            30 * time.Microsecond,
	callGetRetiredPages:              30 * time.Microsecond,
	callGetRetiredPagesPendingStatus: 30 * time.Microsecond,
	callGetCurrentClocksEventReasons: 30 * time.Microsecond,
	callGetViolationStatus:           30 * time.Microsecond,
	callGetPowerManagementLimit:      30 * time.Microsecond,
	callGetEnforcedPowerLimit:        30 * time.Microsecond,
	callGetPerformanceState:          30 * time.Microsecond,
	callGetFanSpeed:                  30 * time.Microsecond,
}

// minSleep is the shortest wait cost makes: a Go sleep of tens of µs
// lasts much longer (timer granularity, scheduling), so shorter costs are
// owed and paid together once they add up to it.
const minSleep = 500 * time.Microsecond

// cost waits as long as the call takes on real hardware, when asked to.
// The wait is a sleep, not a spin: it models the call's latency, not the
// CPU the driver spends on it.
func (d *Device) cost(c call) {
	if h := d.lib.hang; h != nil && d.index == h.GPU && d.lib.now().Sub(d.lib.epoch) >= h.After {
		select {} // never returns, as a call to a GPU off the bus may not
	}
	if !d.lib.latency {
		return
	}
	d.debtMu.Lock()
	d.debt += callCosts[c]
	wait := d.debt
	if wait >= minSleep {
		d.debt = 0
	}
	d.debtMu.Unlock()
	if wait >= minSleep {
		time.Sleep(wait)
	}
}
