package nvml

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// asLibrary takes a Library (the simulated node) or an nvml.Interface
// (go-nvml's mocks, which the tests inspect) and gives the sampler's view.
func asLibrary(lib any) Library {
	switch l := lib.(type) {
	case Library:
		return l
	case nvml.Interface:
		return FromInterface(l)
	}
	panic(fmt.Sprintf("not an NVML library: %T", lib))
}

func open(t *testing.T, lib any, cfg Config) *Sampler {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = MinInterval
	}
	s, err := Open(t.Context(), asLibrary(lib), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tick(s *Sampler) *telemetry.Snapshot {
	s.Tick()
	return s.Latest()
}

func TestOpenReadsInventory(t *testing.T) {
	lib, _ := newLib(newFullGPU(0), newFullGPU(1))
	s := open(t, lib, Config{})
	devs := s.Devices()
	if len(devs) != 2 {
		t.Fatalf("got %d devices, want 2", len(devs))
	}
	d := devs[1]
	want := telemetry.Device{Index: 1, UUID: "GPU-00000000-0000-0000-0000-000000000001", Name: "Tesla T4",
		PCIBusID: "00000000:02:00.0", Minor: 1, MemoryTotal: 16 << 30}
	if d.Index != want.Index || d.UUID != want.UUID || d.Name != want.Name || d.PCIBusID != want.PCIBusID ||
		d.Minor != want.Minor || d.MemoryTotal != want.MemoryTotal || d.MIGEnabled {
		t.Errorf("device 1 = %+v, want %+v", d, want)
	}
}

func TestTickConvertsUnits(t *testing.T) {
	lib, _ := newLib(newFullGPU(0))
	s := open(t, lib, Config{})
	st := tick(s).States[0]
	want := map[telemetry.Field]float64{
		telemetry.GPUUtil:           40,
		telemetry.MemCopyUtil:       20,
		telemetry.EncUtil:           20,
		telemetry.DecUtil:           10,
		telemetry.EncSamplingPeriod: 0.167,
		telemetry.DecSamplingPeriod: 0.167,
		telemetry.FBUsed:            4 << 30,
		telemetry.FBReserved:        1 << 30,
		telemetry.FBFree:            11 << 30,
		telemetry.FBTotal:           16 << 30,
		telemetry.Temperature:       55,
		telemetry.Power:             42.5,
		telemetry.Energy:            123456,
		telemetry.SMClock:           1590,
		telemetry.MemClock:          5001,
		telemetry.PCIeTX:            1000,
		telemetry.PCIeRX:            2000,
		telemetry.EncSessions:       3,
		telemetry.EncFPS:            30,
		telemetry.EncLatency:        0.0025,
		telemetry.MemoryTemp:        memoryTempC,
		telemetry.PCIeReplay:        replays,
		telemetry.RemappedRowsCorr:  remappedCorr,
		telemetry.RemappedRowsUnc:   remappedUnc,
		telemetry.RowRemapFailure:   0,
		// The health fields, in their units: counts, 0/1, the bitmask,
		// seconds, watts, the P-state, percent.
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
		telemetry.PState:               2,
		telemetry.FanSpeed:             35,
	}
	for f, w := range want {
		got, ok := st.Get(f)
		if !ok || math.Abs(got-w) > 1e-12*max(1, math.Abs(w)) {
			t.Errorf("%s = %v (present %v), want %v", f, got, ok, w)
		}
	}
	// And nothing present that the table does not check.
	for f := range telemetry.NumFields {
		if _, listed := want[f]; !listed && st.Has.Has(f) {
			t.Errorf("%s present but not checked", f)
		}
	}
	// newFullGPU has no NVLink and no vGPU licensing.
	if want := nvmlFields.Without(telemetry.NVLinkBandwidth).Without(telemetry.VGPULicense); st.Supported != want {
		t.Errorf("supported = %v, want %v", fieldNames(st.Supported), fieldNames(want))
	}
}

func TestUnsupportedFieldIsProbedOnceAndLeftOut(t *testing.T) {
	dev := newFullGPU(0)
	dev.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	dev.GetFieldValuesFunc = func([]nvml.FieldValue) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	dev.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	var st telemetry.DeviceState
	for range 5 {
		st = tick(s).States[0]
	}
	if n := len(dev.GetTotalEnergyConsumptionCalls()); n != 1 {
		t.Errorf("GetTotalEnergyConsumption called %d times, want 1 (the probe)", n)
	}
	if n := len(dev.GetPcieThroughputCalls()); n != 1 { // the fallback, probed once
		t.Errorf("GetPcieThroughput called %d times, want 1", n)
	}
	for _, f := range []telemetry.Field{telemetry.Energy, telemetry.PCIeTX, telemetry.PCIeRX} {
		if st.Has.Has(f) || st.Supported.Has(f) {
			t.Errorf("%s present or supported after NOT_SUPPORTED", f)
		}
		if st.Errors[f] != 0 {
			t.Errorf("%s counted %d errors; NOT_SUPPORTED is not an error", f, st.Errors[f])
		}
	}
	if !st.Has.Has(telemetry.GPUUtil) {
		t.Error("supported fields must still be read")
	}
}

// An H100 has no NVENC: a zero encoder capacity means the encoder fields
// are never asked for, not asked and failed every tick.
func TestNoEncoderIsDetectedOnce(t *testing.T) {
	for name, capacity := range map[string]func(nvml.EncoderType) (int, nvml.Return){
		"zero capacity":            func(nvml.EncoderType) (int, nvml.Return) { return 0, nvml.SUCCESS },
		"capacity NOT_SUPPORTED":   func(nvml.EncoderType) (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
		"capacity missing in lib.": func(nvml.EncoderType) (int, nvml.Return) { return 0, nvml.ERROR_FUNCTION_NOT_FOUND },
	} {
		t.Run(name, func(t *testing.T) {
			dev := newFullGPU(0)
			dev.GetEncoderCapacityFunc = capacity
			lib, _ := newLib(dev)
			var logs bytes.Buffer
			s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			var st telemetry.DeviceState
			for range 3 {
				st = tick(s).States[0]
			}
			if n := len(dev.GetEncoderUtilizationCalls()) + len(dev.GetEncoderStatsCalls()) + len(dev.GetEncoderSessionsCalls()); n != 0 {
				t.Errorf("encoder queried %d times on a GPU without NVENC", n)
			}
			for _, c := range dev.GetSamplesCalls() {
				if c.SamplingType == nvml.ENC_UTILIZATION_SAMPLES {
					t.Fatal("encoder samples asked for on a GPU without NVENC")
				}
			}
			for _, f := range []telemetry.Field{telemetry.EncUtil, telemetry.EncSessions, telemetry.EncFPS, telemetry.EncLatency} {
				if st.Supported.Has(f) || st.Has.Has(f) {
					t.Errorf("%s reported on a GPU without NVENC", f)
				}
			}
			if !st.Has.Has(telemetry.DecUtil) {
				t.Error("decoder must still be read")
			}
			if st.ProcessSupport.Has(telemetry.ProcEncSessions) || !st.ProcessSupport.Has(telemetry.ProcUtil) {
				t.Errorf("process support %b: want utilization without encoder sessions", st.ProcessSupport)
			}
			if got := strings.Count(logs.String(), "not supported"); got != 1 {
				t.Errorf("logged %d 'not supported' lines, want 1:\n%s", got, logs.String())
			}
		})
	}
}

func TestMemoryFallsBackToV1(t *testing.T) {
	dev := newFullGPU(0)
	dev.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND }
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	var st telemetry.DeviceState
	for range 3 {
		st = tick(s).States[0]
	}
	if v, _ := st.Get(telemetry.FBUsed); v != 5<<30 {
		t.Errorf("FB used = %v, want v1's %v", v, 5<<30)
	}
	if st.Has.Has(telemetry.FBReserved) || st.Supported.Has(telemetry.FBReserved) {
		t.Error("reserved memory reported although only v1 answers")
	}
	if n := len(dev.GetMemoryInfo_v2Calls()); n != 1 {
		t.Errorf("GetMemoryInfo_v2 called %d times, want 1", n)
	}
}

func TestBufferedSamplesAreAllKept(t *testing.T) {
	now := time.Now()
	dev := newGPU(gpuSpec{index: 0, uuid: "GPU-a", util: 40, samples: map[nvml.SamplingType][]nvml.Sample{
		nvml.GPU_UTILIZATION_SAMPLES: utilSamples(now.Add(-2*time.Second), 10, 90, 20, 30, 40, 50),
	}})
	lib, _ := newLib(dev)
	s := open(t, lib, Config{Window: 10 * time.Second, Now: func() time.Time { return now }})
	st := tick(s).States[0]
	got := st.NewSamples[telemetry.EngineGPU]
	if len(got) != 6 {
		t.Fatalf("kept %d samples, want all 6 the driver buffered", len(got))
	}
	if got[1].Value != 90 || !got[1].At.Equal(time.UnixMicro(now.Add(-2*time.Second+time.Second/6).UnixMicro())) {
		t.Errorf("sample 1 = %+v, want 90 at its own timestamp", got[1])
	}
	w := st.Windows[telemetry.EngineGPU]
	if w.Count != 6 || w.Max != 90 || w.Mean != 40 {
		t.Errorf("window = %+v, want 6 samples, max 90, mean 40", w)
	}
	// The next read passes the newest timestamp as lastSeen, gets
	// NOT_FOUND, and the window still holds the samples.
	st = tick(s).States[0]
	if st.NewSamples[telemetry.EngineGPU] != nil {
		t.Errorf("samples returned twice: %v", st.NewSamples[telemetry.EngineGPU])
	}
	calls := dev.GetSamplesCalls()
	var lastSeen []uint64
	for _, c := range calls {
		if c.SamplingType == nvml.GPU_UTILIZATION_SAMPLES {
			lastSeen = append(lastSeen, c.V)
		}
	}
	wantLast := got[5].At.UnixMicro()
	if len(lastSeen) != 2 || lastSeen[0] != 0 || lastSeen[1] != uint64(wantLast) {
		t.Errorf("lastSeen passed = %v, want 0, then the newest sample's timestamp %d", lastSeen, wantLast)
	}
	if w := st.Windows[telemetry.EngineGPU]; w.Count != 6 || w.Max != 90 {
		t.Errorf("window after NOT_FOUND = %+v, want the 6 samples kept", w)
	}
	if st.Errors != ([telemetry.NumFields]uint64{}) {
		t.Errorf("NOT_FOUND counted as an error: %v", st.Errors)
	}
}

func TestSamplesLeaveTheWindow(t *testing.T) {
	now := time.Now()
	clock := now
	dev := newGPU(gpuSpec{index: 0, uuid: "GPU-a", samples: map[nvml.SamplingType][]nvml.Sample{
		nvml.GPU_UTILIZATION_SAMPLES: utilSamples(now, 100),
	}})
	lib, _ := newLib(dev)
	s := open(t, lib, Config{Window: 5 * time.Second, Now: func() time.Time { return clock }})
	if w := tick(s).States[0].Windows[telemetry.EngineGPU]; w.Count != 1 || w.Max != 100 {
		t.Fatalf("window = %+v, want the spike", w)
	}
	clock = now.Add(4 * time.Second)
	if w := tick(s).States[0].Windows[telemetry.EngineGPU]; w.Max != 100 {
		t.Errorf("spike lost within the window: %+v", w)
	}
	clock = now.Add(6 * time.Second)
	if w := tick(s).States[0].Windows[telemetry.EngineGPU]; w.Count != 0 {
		t.Errorf("window = %+v, want empty once the spike is older than the window", w)
	}
}

func TestNoBufferedSamplesIsNotAnError(t *testing.T) {
	lib, _ := newLib(newFullGPU(0)) // no samples: GetSamples answers NOT_FOUND
	var logs bytes.Buffer
	s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	st := tick(s).States[0]
	for e := range telemetry.NumEngines {
		if st.Windows[e].Count != 0 || st.NewSamples[e] != nil {
			t.Errorf("engine %s has data from an empty buffer", e)
		}
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("NOT_FOUND logged as a problem:\n%s", logs.String())
	}
}

// A lost GPU is not asked again before its backoff (an hour here: see
// driver_test.go for what happens after it), and the others go on.
func TestLostGPUDoesNotStopTheOthers(t *testing.T) {
	devs := []*mock.Device{newFullGPU(0), newFullGPU(1), newFullGPU(2)}
	lib, _ := newLib(devs...)
	var logs bytes.Buffer
	s := open(t, lib, Config{ReinitBackoff: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if snap := tick(s); snap.States[1].Lost {
		t.Fatal("GPU 1 lost before it was")
	}
	lost := func() (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	devs[1].GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return lost() }
	devs[1].GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST }

	snap := tick(s)
	if !snap.States[1].Lost {
		t.Fatal("GPU 1 not marked lost")
	}
	callsAfterLoss := len(devs[1].GetUtilizationRatesCalls())
	for range 3 {
		snap = tick(s)
	}
	for _, i := range []int{0, 2} {
		if st := snap.States[i]; st.Lost || !st.Has.Has(telemetry.GPUUtil) || !st.Has.Has(telemetry.Temperature) {
			t.Errorf("GPU %d stopped reporting after GPU 1 was lost: %+v", i, st.Reading)
		}
	}
	if n := len(devs[1].GetUtilizationRatesCalls()); n != callsAfterLoss {
		t.Errorf("lost GPU asked %d more times", n-callsAfterLoss)
	}
	if got := strings.Count(logs.String(), "GPU lost"); got != 1 {
		t.Errorf("logged the loss %d times, want once", got)
	}
}

func TestTransientErrorIsCountedAndLoggedOnce(t *testing.T) {
	dev := newFullGPU(0)
	fail := true
	dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		if fail {
			return 0, nvml.ERROR_UNKNOWN
		}
		return 60, nvml.SUCCESS
	}
	lib, _ := newLib(dev)
	var logs bytes.Buffer
	s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	var st telemetry.DeviceState
	for range 4 {
		st = tick(s).States[0]
	}
	if st.Has.Has(telemetry.Temperature) {
		t.Error("failed field reported with a value")
	}
	if !st.Supported.Has(telemetry.Temperature) {
		t.Error("a transient error must not mark the field unsupported")
	}
	if st.Errors[telemetry.Temperature] != 4 {
		t.Errorf("errors = %d, want 4", st.Errors[telemetry.Temperature])
	}
	fail = false
	st = tick(s).States[0]
	if v, ok := st.Get(telemetry.Temperature); !ok || v != 60 {
		t.Errorf("temperature after recovery = %v, %v", v, ok)
	}
	if n := strings.Count(logs.String(), "read failed"); n != 1 {
		t.Errorf("logged %d failures, want 1 (once per state change):\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "read recovered"); n != 1 {
		t.Errorf("logged %d recoveries, want 1", n)
	}
}

func TestMIGDevicesAreInventoried(t *testing.T) {
	parent := newFullGPU(0)
	parent.GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
	parent.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	parent.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	mig := func(uuid string, gi, ci int, used uint64) *mock.Device {
		return &mock.Device{
			GetUUIDFunc:              func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return gi, nvml.SUCCESS },
			GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ci, nvml.SUCCESS },
			GetNameFunc:              func() (string, nvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 1g.5gb", nvml.SUCCESS },
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				return nvml.Memory_v2{Total: 5 << 30, Used: used, Free: 5<<30 - used}, nvml.SUCCESS
			},
		}
	}
	migs := map[int]*mock.Device{0: mig("MIG-aaa", 7, 0, 1<<30), 3: mig("MIG-bbb", 8, 0, 2<<30)}
	parent.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if m, ok := migs[i]; ok {
			return m, nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	lib, _ := newLib(parent)
	s := open(t, lib, Config{})
	d := s.Devices()[0]
	if !d.MIGEnabled || len(d.MIG) != 2 {
		t.Fatalf("MIG inventory = %+v", d)
	}
	if m := d.MIG[1]; m.UUID != "MIG-bbb" || m.GI != 8 || m.CI != 0 || m.Profile != "1g.5gb" {
		t.Errorf("MIG 1 = %+v", m)
	}
	st := tick(s).States[0]
	if st.Supported.Has(telemetry.GPUUtil) {
		t.Error("MIG-enabled GPU reports utilization as supported")
	}
	if len(st.MIG) != 2 {
		t.Fatalf("%d MIG readings, want 2", len(st.MIG))
	}
	if v, _ := st.MIG[1].Get(telemetry.FBUsed); v != 2<<30 {
		t.Errorf("MIG 1 FB used = %v", v)
	}
}

func TestXIDErrorsAreCounted(t *testing.T) {
	devs := []*mock.Device{newFullGPU(0), newFullGPU(1)}
	lib, events := newLib(devs...)
	s := open(t, lib, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	events <- nvml.EventData{Device: devs[1], EventType: nvml.EventTypeXidCriticalError, EventData: 31}
	events <- nvml.EventData{Device: devs[1], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	events <- nvml.EventData{Device: devs[1], EventType: nvml.EventTypeXidCriticalError, EventData: 31}

	var x *telemetry.XIDCounts
	_ = testutil.Poll(t.Context(), 5*time.Second, func() (bool, error) {
		if snap := s.Latest(); snap != nil {
			x = snap.States[1].XID
		}
		return x != nil && x.Counts[31] == 2 && x.Counts[79] == 1, nil
	}) // what x holds then is checked below
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if x == nil || x.Counts[31] != 2 || x.Counts[79] != 1 || x.Last != 31 {
		t.Fatalf("XID record = %+v, want 31 twice, 79 once, last 31", x)
	}
	if s.Latest().States[0].XID != nil {
		t.Error("XID attributed to the wrong GPU")
	}
}

func TestOpenErrors(t *testing.T) {
	lib, _ := newLib(newFullGPU(0))
	lib.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	if _, err := Open(t.Context(), asLibrary(lib), Config{Interval: time.Second}); !errors.Is(err, ErrLibraryNotFound) {
		t.Errorf("no library: err = %v, want ErrLibraryNotFound", err)
	}
	lib, _ = newLib(newFullGPU(0))
	if _, err := Open(t.Context(), asLibrary(lib), Config{Interval: 50 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "minimum") {
		t.Errorf("50ms interval: err = %v, want a minimum-interval error", err)
	}
	lib, _ = newLib()
	shutdown := 0
	lib.ShutdownFunc = func() nvml.Return { shutdown++; return nvml.SUCCESS }
	if _, err := Open(t.Context(), asLibrary(lib), Config{Interval: time.Second}); !errors.Is(err, ErrNoDevices) || shutdown != 1 {
		t.Errorf("no GPUs: err = %v, shutdown %d times; want ErrNoDevices and NVML shut down", err, shutdown)
	}
}

func TestUnopenableGPUIsSkipped(t *testing.T) {
	bad := newFullGPU(1)
	bad.GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	lib, _ := newLib(newFullGPU(0), bad, newFullGPU(2))
	started := time.Now()
	s := open(t, lib, Config{ProbeTimeout: 10 * time.Second})
	if d := time.Since(started); d > 5*time.Second {
		t.Errorf("Open took %s: it waited for the GPU that failed to open", d)
	}
	if got := len(s.Devices()); got != 2 {
		t.Fatalf("%d devices, want the 2 that open", got)
	}
	if s.Devices()[1].Index != 2 {
		t.Errorf("second device has index %d, want NVML's index 2", s.Devices()[1].Index)
	}
}

// Readers load snapshots while the sampler ticks: each snapshot they see
// is whole (run with -race).
func TestReadersSeeWholeSnapshots(t *testing.T) {
	lib, _ := newLib(newFullGPU(0), newFullGPU(1))
	s := open(t, lib, Config{})
	s.Tick()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				snap := s.Latest()
				if len(snap.States) != len(snap.Devices) || snap.Seq < last {
					t.Errorf("torn or out-of-order snapshot: seq %d after %d", snap.Seq, last)
					return
				}
				last = snap.Seq
				for _, st := range snap.States {
					if !st.Has.Has(telemetry.GPUUtil) {
						t.Error("half-filled snapshot published")
						return
					}
				}
			}
		})
	}
	for range 200 {
		s.Tick()
	}
	close(stop)
	wg.Wait()
}

func TestMissedTicksAreCounted(t *testing.T) {
	now := time.Now()
	clock := now
	lib, _ := newLib(newFullGPU(0))
	s := open(t, lib, Config{Interval: 100 * time.Millisecond, Now: func() time.Time { return clock }})
	s.Tick()
	clock = clock.Add(100 * time.Millisecond)
	s.Tick()
	clock = clock.Add(450 * time.Millisecond) // 3 intervals skipped
	snap := tick(s)
	if snap.Ticks != 3 || snap.MissedTicks != 3 {
		t.Errorf("ticks %d missed %d, want 3 and 3", snap.Ticks, snap.MissedTicks)
	}
}

// The driver's samples enter the window in time order, each once, however
// the buffer hands them over.
func TestOutOfOrderAndDuplicateSamples(t *testing.T) {
	now := time.Now()
	s6 := utilSamples(now.Add(-2*time.Second), 10, 20, 30, 40)
	shuffled := []nvml.Sample{s6[2], s6[0], s6[3], s6[1], s6[2], s6[0]}
	dev := newGPU(gpuSpec{index: 0, uuid: "GPU-a", samples: map[nvml.SamplingType][]nvml.Sample{
		nvml.GPU_UTILIZATION_SAMPLES: shuffled,
	}})
	lib, _ := newLib(dev)
	s := open(t, lib, Config{Window: 10 * time.Second, Now: func() time.Time { return now }})
	got := tick(s).States[0].NewSamples[telemetry.EngineGPU]
	if len(got) != 4 {
		t.Fatalf("kept %d samples, want the 4 distinct ones", len(got))
	}
	for i, v := range []float64{10, 20, 30, 40} {
		if got[i].Value != v || (i > 0 && !got[i].At.After(got[i-1].At)) {
			t.Errorf("sample %d = %+v, want %v in time order", i, got[i], v)
		}
	}
	if w := tick(s).States[0].Windows[telemetry.EngineGPU]; w.Count != 4 || w.Mean != 25 {
		t.Errorf("window %+v, want the 4 samples once each", w)
	}
}

// A step of the wall clock (NTP correcting a badly set clock) neither
// empties the windows nor stops new samples; it is logged once.
func TestWallClockStep(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	wall, mono := start, time.Duration(0)
	var mu sync.Mutex
	var samples []nvml.Sample
	dev := newGPU(gpuSpec{index: 0, uuid: "GPU-a"})
	dev.GetSamplesFunc = func(typ nvml.SamplingType, lastSeen uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		var out []nvml.Sample
		for _, smp := range samples {
			if typ == nvml.GPU_UTILIZATION_SAMPLES && smp.TimeStamp > lastSeen {
				out = append(out, smp)
			}
		}
		if len(out) == 0 {
			return 0, nil, nvml.ERROR_NOT_FOUND
		}
		return nvml.VALUE_TYPE_UNSIGNED_INT, out, nvml.SUCCESS
	}
	lib, _ := newLib(dev)
	var logs logBuffer
	s := open(t, lib, Config{Window: 10 * time.Second,
		Now:       func() time.Time { mu.Lock(); defer mu.Unlock(); return wall },
		Monotonic: func() time.Duration { mu.Lock(); defer mu.Unlock(); return mono },
		Logger:    slog.New(slog.NewTextHandler(&logs, nil))})
	mu.Lock()
	samples = utilSamples(start.Add(-time.Second), 50, 60, 70)
	mu.Unlock()
	if w := tick(s).States[0].Windows[telemetry.EngineGPU]; w.Count != 3 {
		t.Fatalf("window before the step: %+v", w)
	}
	for k, step := range []time.Duration{-time.Hour, 2 * time.Hour} {
		mu.Lock()
		wall, mono = wall.Add(step+200*time.Millisecond), mono+200*time.Millisecond
		samples = append(samples, utilSamples(wall, 80)...) // stamped by the stepped clock
		mu.Unlock()
		st := tick(s).States[0]
		if w := st.Windows[telemetry.EngineGPU]; w.Count != 4+k || w.Max != 80 {
			t.Errorf("after a %s step: window %+v, want the %d earlier samples and the new one", step, w, 3+k)
		}
		mu.Lock()
		samples = samples[len(samples)-1:]
		mu.Unlock()
		tick(s)
		mu.Lock()
		samples = nil
		mu.Unlock()
	}
	if n := strings.Count(logs.String(), "wall clock stepped"); n != 2 {
		t.Errorf("logged %d steps, want 2 (once each):\n%s", n, logs.String())
	}
}

// Where the device answers the energy counter through GetFieldValues, one
// call per reading serves the PCIe counters and energy; where it lacks the
// PCIe counters (and GetPcieThroughput), energy still comes from it.
func TestFieldValuesBatchPCIeAndEnergy(t *testing.T) {
	for _, pcie := range []bool{true, false} {
		dev := newFullGPU(0)
		counters := dev.GetFieldValuesFunc
		dev.GetFieldValuesFunc = func(values []nvml.FieldValue) nvml.Return {
			counters(values)
			for i := range values {
				v := &values[i]
				switch {
				case v.FieldId == nvml.FI_DEV_TOTAL_ENERGY_CONSUMPTION:
					v.NvmlReturn = uint32(nvml.SUCCESS)
					binary.LittleEndian.PutUint64(v.Value[:], 777)
				case !pcie:
					v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				}
			}
			return nvml.SUCCESS
		}
		dev.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		lib, _ := newLib(dev)
		s := open(t, lib, Config{})
		before := len(dev.GetFieldValuesCalls())
		var st telemetry.DeviceState
		for range 3 {
			st = tick(s).States[0]
		}
		if n := len(dev.GetFieldValuesCalls()) - before; n != 3 {
			t.Errorf("PCIe counters %v: %d GetFieldValues calls in 3 ticks, want 3", pcie, n)
		}
		if n := len(dev.GetTotalEnergyConsumptionCalls()); n != 0 {
			t.Errorf("PCIe counters %v: GetTotalEnergyConsumption called %d times; energy comes with the batch", pcie, n)
		}
		if v, ok := st.Get(telemetry.Energy); !ok || v != 777 {
			t.Errorf("PCIe counters %v: energy %v, %v; want 777 mJ from the batch", pcie, v, ok)
		}
		if v, ok := st.Get(telemetry.PCIeTX); ok != pcie || (pcie && v != pcieTXKBps) {
			t.Errorf("PCIe counters %v: PCIe TX %v, present %v", pcie, v, ok)
		}
	}
}

// nvml.h: the PCIe byte counters "can be wrapped". A wrap between two
// reads is one step forward, for 32- and 64-bit counters alike.
func TestPCIeCounterWrap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vt    nvml.ValueType
		start uint64
	}{
		{"32-bit", nvml.VALUE_TYPE_UNSIGNED_INT, 1<<32 - 2500*1024},
		{"64-bit", nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, math.MaxUint64 - 2500*1024 + 1},
	} {
		dev := newFullGPU(0)
		var n uint64
		dev.GetFieldValuesFunc = func(values []nvml.FieldValue) nvml.Return {
			// 1000 KB per 100 ms read: 10,000 KB/s. The probe reads twice,
			// so the counter wraps between the first and second ticks.
			value := tc.start + n*1000*1024
			for i := range values {
				v := &values[i]
				v.Timestamp, v.ValueType = int64(n*100_000), uint32(tc.vt)
				v.NvmlReturn = uint32(nvml.SUCCESS)
				if tc.vt == nvml.VALUE_TYPE_UNSIGNED_INT {
					binary.LittleEndian.PutUint32(v.Value[:], uint32(value))
				} else {
					binary.LittleEndian.PutUint64(v.Value[:], value)
				}
			}
			n++
			return nvml.SUCCESS
		}
		lib, _ := newLib(dev)
		s := open(t, lib, Config{})
		for range 3 {
			st := tick(s).States[0]
			if v, ok := st.Get(telemetry.PCIeRX); !ok || v != 10_000 {
				t.Errorf("%s: PCIe RX %v (present %v) across the wrap, want 10000 KB/s", tc.name, v, ok)
			}
		}
	}
}
