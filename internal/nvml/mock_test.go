package nvml

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// Builders for go-nvml mocks, after k8s-device-plugin's NewFullGPU():
// a device that answers every field the sampler reads, which a test then
// breaks in the one way it is about.

type gpuSpec struct {
	index     int
	uuid      string
	util, enc uint32
	samples   map[nvml.SamplingType][]nvml.Sample // GetSamples' buffer
}

func newFullGPU(index int) *mock.Device {
	return newGPU(gpuSpec{index: index, uuid: gpuUUID(index), util: 40, enc: 20})
}

// gpuUUID is the UUID of newFullGPU(index).
func gpuUUID(index int) string { return fmt.Sprintf("GPU-00000000-0000-0000-0000-%012d", index) }

// The PCIe byte counters of newGPU advance by 100 ms of traffic per read:
// 1000 KB/s transmitted, 2000 KB/s received.
const (
	pcieTXKBps, pcieRXKBps = 1000, 2000
	pcieStepUs             = 100_000
)

// The slow fields of newGPU.
const (
	memoryTempC               = 47
	replays                   = 3
	remappedCorr, remappedUnc = 2, 1
)

// The health fields of newGPU: ECC counts by (type, counter), pages
// retired by cause, a retirement pending, the reasons bitmask (software
// power cap and software thermal slowdown), violation times (ns) by
// policy, power limits (mW), P2 and a fan at 35%.
var (
	eccCounts = map[[2]int]uint64{
		{int(nvml.MEMORY_ERROR_TYPE_CORRECTED), int(nvml.VOLATILE_ECC)}:    4,
		{int(nvml.MEMORY_ERROR_TYPE_UNCORRECTED), int(nvml.VOLATILE_ECC)}:  1,
		{int(nvml.MEMORY_ERROR_TYPE_CORRECTED), int(nvml.AGGREGATE_ECC)}:   17,
		{int(nvml.MEMORY_ERROR_TYPE_UNCORRECTED), int(nvml.AGGREGATE_ECC)}: 2,
	}
	retiredPages = map[nvml.PageRetirementCause][]uint64{
		nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: {0x1000, 0x2000, 0x3000},
		nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:           {0x9000},
	}
	violationNs = map[nvml.PerfPolicyType]uint64{
		nvml.PERF_POLICY_POWER:           2_500_000_000,
		nvml.PERF_POLICY_THERMAL:         750_000_000,
		nvml.PERF_POLICY_SYNC_BOOST:      1_000,
		nvml.PERF_POLICY_BOARD_LIMIT:     0,
		nvml.PERF_POLICY_LOW_UTILIZATION: 60_000_000_000,
		nvml.PERF_POLICY_RELIABILITY:     3,
	}
)

const (
	clocksEventReasons           = nvml.ClocksEventReasonSwPowerCap | nvml.ClocksEventReasonSwThermalSlowdown
	powerMgmtLimitMW, enforcedMW = 70000, 65500
	pstate                       = nvml.PSTATE_2
	fanPercent                   = 35
)

func newGPU(s gpuSpec) *mock.Device {
	var mu sync.Mutex
	var pcieReads uint64
	return &mock.Device{
		GetUUIDFunc:        func() (string, nvml.Return) { return s.uuid, nvml.SUCCESS },
		GetNameFunc:        func() (string, nvml.Return) { return "Tesla T4", nvml.SUCCESS },
		GetMinorNumberFunc: func() (int, nvml.Return) { return s.index, nvml.SUCCESS },
		GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) {
			var p nvml.PciInfo
			for i, c := range fmt.Sprintf("00000000:%02X:00.0", s.index+1) {
				p.BusId[i] = int8(c)
			}
			return p, nvml.SUCCESS
		},
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: 16 << 30, Used: 5 << 30, Free: 11 << 30}, nvml.SUCCESS
		},
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 16 << 30, Reserved: 1 << 30, Used: 4 << 30, Free: 11 << 30}, nvml.SUCCESS
		},
		GetMigModeFunc:         func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED },
		GetEncoderCapacityFunc: func(nvml.EncoderType) (int, nvml.Return) { return 100, nvml.SUCCESS },
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: s.util, Memory: s.util / 2}, nvml.SUCCESS
		},
		GetEncoderUtilizationFunc: func() (uint32, uint32, nvml.Return) { return s.enc, 167000, nvml.SUCCESS },
		GetDecoderUtilizationFunc: func() (uint32, uint32, nvml.Return) { return 10, 167000, nvml.SUCCESS },
		GetTemperatureFunc:        func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 55, nvml.SUCCESS },
		GetPowerUsageFunc:         func() (uint32, nvml.Return) { return 42500, nvml.SUCCESS },
		GetTotalEnergyConsumptionFunc: func() (uint64, nvml.Return) {
			return 123456, nvml.SUCCESS
		},
		GetClockInfoFunc: func(c nvml.ClockType) (uint32, nvml.Return) {
			if c == nvml.CLOCK_SM {
				return 1590, nvml.SUCCESS
			}
			return 5001, nvml.SUCCESS
		},
		GetPcieThroughputFunc: func(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
			if c == nvml.PCIE_UTIL_TX_BYTES {
				return 1000, nvml.SUCCESS
			}
			return 2000, nvml.SUCCESS
		},
		GetFieldValuesFunc: func(values []nvml.FieldValue) nvml.Return {
			mu.Lock()
			pcieReads++
			n := pcieReads
			mu.Unlock()
			for i := range values {
				v := &values[i]
				v.Timestamp = int64(n * pcieStepUs)
				v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
				switch v.FieldId {
				case nvml.FI_DEV_PCIE_COUNT_TX_BYTES:
					binary.LittleEndian.PutUint64(v.Value[:], n*pcieTXKBps*1024*pcieStepUs/1e6)
				case nvml.FI_DEV_PCIE_COUNT_RX_BYTES:
					binary.LittleEndian.PutUint64(v.Value[:], n*pcieRXKBps*1024*pcieStepUs/1e6)
				case nvml.FI_DEV_MEMORY_TEMP:
					v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
					binary.LittleEndian.PutUint32(v.Value[:], memoryTempC)
				default:
					v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				}
			}
			return nvml.SUCCESS
		},
		GetEncoderStatsFunc: func() (int, uint32, uint32, nvml.Return) { return 3, 30, 2500, nvml.SUCCESS },
		// The slow fields: no NVLink (GetFieldValues answers its link
		// count NOT_SUPPORTED) and no vGPU licensing, as on bare metal.
		GetPcieReplayCounterFunc: func() (int, nvml.Return) { return replays, nvml.SUCCESS },
		GetRemappedRowsFunc: func() (int, int, bool, bool, nvml.Return) {
			return remappedCorr, remappedUnc, false, false, nvml.SUCCESS
		},
		GetGridLicensableFeaturesFunc: func() (nvml.GridLicensableFeatures, nvml.Return) {
			return nvml.GridLicensableFeatures{}, nvml.ERROR_NOT_SUPPORTED
		},
		// The health fields: every one answered.
		GetTotalEccErrorsFunc: func(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
			return eccCounts[[2]int{int(t), int(c)}], nvml.SUCCESS
		},
		GetRetiredPagesFunc: func(c nvml.PageRetirementCause) ([]uint64, nvml.Return) {
			return retiredPages[c], nvml.SUCCESS
		},
		GetRetiredPagesPendingStatusFunc: func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_ENABLED, nvml.SUCCESS },
		GetCurrentClocksEventReasonsFunc: func() (uint64, nvml.Return) { return clocksEventReasons, nvml.SUCCESS },
		GetViolationStatusFunc: func(p nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
			return nvml.ViolationTime{ReferenceTime: 1, ViolationTime: violationNs[p]}, nvml.SUCCESS
		},
		GetPowerManagementLimitFunc: func() (uint32, nvml.Return) { return powerMgmtLimitMW, nvml.SUCCESS },
		GetEnforcedPowerLimitFunc:   func() (uint32, nvml.Return) { return enforcedMW, nvml.SUCCESS },
		GetPerformanceStateFunc:     func() (nvml.Pstates, nvml.Return) { return pstate, nvml.SUCCESS },
		GetFanSpeedFunc:             func() (uint32, nvml.Return) { return fanPercent, nvml.SUCCESS },
		// No process runs: tests about processes set these.
		GetProcessUtilizationFunc: func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			return nil, nvml.ERROR_NOT_FOUND
		},
		GetComputeRunningProcessesFunc:  func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS },
		GetGraphicsRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS },
		GetEncoderSessionsFunc:          func() ([]nvml.EncoderSessionInfo, nvml.Return) { return nil, nvml.SUCCESS },
		GetFBCSessionsFunc:              func() ([]nvml.FBCSessionInfo, nvml.Return) { return nil, nvml.SUCCESS },
		GetSamplesFunc: func(t nvml.SamplingType, lastSeen uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
			mu.Lock()
			defer mu.Unlock()
			var out []nvml.Sample
			for _, smp := range s.samples[t] {
				if smp.TimeStamp > lastSeen {
					out = append(out, smp)
				}
			}
			if len(out) == 0 {
				return nvml.VALUE_TYPE_UNSIGNED_INT, nil, nvml.ERROR_NOT_FOUND
			}
			return nvml.VALUE_TYPE_UNSIGNED_INT, out, nvml.SUCCESS
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS },
	}
}

// utilSamples makes driver samples at the given microsecond timestamps.
func utilSamples(at time.Time, values ...uint32) []nvml.Sample {
	out := make([]nvml.Sample, len(values))
	for i, v := range values {
		out[i].TimeStamp = uint64(at.Add(time.Duration(i) * time.Second / 6).UnixMicro())
		binary.LittleEndian.PutUint32(out[i].SampleValue[:], v)
	}
	return out
}

// waitEvent is nvmlEventSetWait over a queue of events: the next one, or
// ERROR_TIMEOUT after ms; with ms 0, a poll that never blocks.
func waitEvent(events <-chan nvml.EventData, ms uint32) (nvml.EventData, nvml.Return) {
	if ms == 0 {
		select {
		case e := <-events:
			return e, nvml.SUCCESS
		default:
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
	}
	select {
	case e := <-events:
		return e, nvml.SUCCESS
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	}
}

// newLib is a mock NVML over devs, with an event set whose Wait returns
// the queued events, then times out.
func newLib(devs ...*mock.Device) (*mock.Interface, chan nvml.EventData) {
	events := make(chan nvml.EventData, 16)
	lib := &mock.Interface{
		InitFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:               func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
		DeviceGetHandleByUUIDFunc: func(uuid string) (nvml.Device, nvml.Return) {
			for _, d := range devs {
				if u, ret := d.GetUUID(); ret == nvml.SUCCESS && u == uuid {
					return d, nvml.SUCCESS
				}
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) {
			return &mock.EventSet{
				WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) { return waitEvent(events, ms) },
				FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			}, nvml.SUCCESS
		},
	}
	return lib, events
}
