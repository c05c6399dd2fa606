// Package calls names the NVML calls the agent's sampler makes: the
// narrow interfaces the real library (through internal/nvml's adapter), go-nvml's
// mocks and the simulated node (internal/nvml/sim) implement. It is its own leaf
// package so that the simulator implements exactly these, and nothing of
// go-nvml's 300-method interfaces, without importing the sampler.
package calls

import "github.com/NVIDIA/go-nvml/pkg/nvml"

// Library is the part of NVML the sampler uses.
type Library interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(int) (Device, nvml.Return)
	// DeviceGetHandleByUUID finds a GPU again after NVML was
	// re-initialised or the GPU came back (unbind, bind): NVML's indexes
	// may then differ, its UUID does not.
	DeviceGetHandleByUUID(string) (Device, nvml.Return)
	EventSetCreate() (EventSet, nvml.Return)
	SystemGetDriverVersion() (string, nvml.Return)
}

// Device is the part of nvml.Device the sampler calls on a GPU or a MIG
// instance; every nvml.Device is one.
type Device interface {
	GetUUID() (string, nvml.Return)
	GetName() (string, nvml.Return)
	GetPciInfo() (nvml.PciInfo, nvml.Return)
	GetMinorNumber() (int, nvml.Return)
	GetAttributes() (nvml.DeviceAttributes, nvml.Return)
	GetMemoryInfo() (nvml.Memory, nvml.Return)
	GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return)
	GetMigMode() (int, int, nvml.Return)
	GetMaxMigDeviceCount() (int, nvml.Return)
	GetMigDeviceHandleByIndex(int) (nvml.Device, nvml.Return)
	GetGpuInstanceId() (int, nvml.Return)
	GetComputeInstanceId() (int, nvml.Return)
	GetUtilizationRates() (nvml.Utilization, nvml.Return)
	GetEncoderUtilization() (uint32, uint32, nvml.Return)
	GetDecoderUtilization() (uint32, uint32, nvml.Return)
	GetEncoderCapacity(nvml.EncoderType) (int, nvml.Return)
	GetEncoderStats() (int, uint32, uint32, nvml.Return)
	GetEncoderSessions() ([]nvml.EncoderSessionInfo, nvml.Return)
	GetFBCSessions() ([]nvml.FBCSessionInfo, nvml.Return)
	GetSamples(nvml.SamplingType, uint64) (nvml.ValueType, []nvml.Sample, nvml.Return)
	GetProcessUtilization(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return)
	GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return)
	GetGraphicsRunningProcesses() ([]nvml.ProcessInfo, nvml.Return)
	GetFieldValues([]nvml.FieldValue) nvml.Return
	GetTemperature(nvml.TemperatureSensors) (uint32, nvml.Return)
	GetPowerUsage() (uint32, nvml.Return)
	GetTotalEnergyConsumption() (uint64, nvml.Return)
	GetClockInfo(nvml.ClockType) (uint32, nvml.Return)
	GetPcieThroughput(nvml.PcieUtilCounter) (uint32, nvml.Return)
	GetPcieReplayCounter() (int, nvml.Return)
	GetRemappedRows() (int, int, bool, bool, nvml.Return)
	GetGridLicensableFeatures() (nvml.GridLicensableFeatures, nvml.Return)
	GetTotalEccErrors(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return)
	GetRetiredPages(nvml.PageRetirementCause) ([]uint64, nvml.Return)
	GetRetiredPagesPendingStatus() (nvml.EnableState, nvml.Return)
	GetCurrentClocksEventReasons() (uint64, nvml.Return)
	GetViolationStatus(nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return)
	GetPowerManagementLimit() (uint32, nvml.Return)
	GetEnforcedPowerLimit() (uint32, nvml.Return)
	GetPerformanceState() (nvml.Pstates, nvml.Return)
	GetFanSpeed() (uint32, nvml.Return)
}

// EventSet is the part of an NVML event set the XID watcher uses.
type EventSet interface {
	Wait(timeoutMs uint32) (nvml.EventData, nvml.Return)
	Free() nvml.Return
	// Register asks for d's events of types (nvmlDeviceRegisterEvents).
	Register(d Device, types uint64) nvml.Return
}
