package nvml

import (
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// withNVLink gives a mock GPU links NVLink links whose data counters (KiB)
// read tx and rx per link, and memory temperature reported NOT_SUPPORTED
// entry by entry, as a GDDR GPU with NVLink would.
// reads counts the calls that read the data counters.
func withNVLink(fast func([]nvml.FieldValue) nvml.Return, links uint32, tx, rx, reads *atomic.Uint64) func([]nvml.FieldValue) nvml.Return {
	return func(values []nvml.FieldValue) nvml.Return {
		if ret := fast(values); ret != nvml.SUCCESS {
			return ret
		}
		if slices.ContainsFunc(values, func(v nvml.FieldValue) bool { return v.FieldId == nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX }) {
			reads.Add(1)
		}
		for i := range values {
			v := &values[i]
			put := func(x uint64) {
				v.NvmlReturn = uint32(nvml.SUCCESS)
				v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
				binary.LittleEndian.PutUint64(v.Value[:], x)
			}
			switch v.FieldId {
			case nvml.FI_DEV_NVLINK_LINK_COUNT:
				put(uint64(links))
			case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX:
				put(tx.Load() + uint64(v.ScopeId))
			case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
				put(rx.Load())
			case nvml.FI_DEV_MEMORY_TEMP:
				v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
			}
		}
		return nvml.SUCCESS
	}
}

// NVLink's total is the data counters summed over every link, TX and RX;
// a batch entry that answers NOT_SUPPORTED (memory temperature) leaves
// that field out and no other.
func TestSlowFieldsNVLinkAndPartialBatch(t *testing.T) {
	dev := newFullGPU(0)
	var tx, rx, reads atomic.Uint64
	tx.Store(1000)
	rx.Store(500)
	dev.GetFieldValuesFunc = withNVLink(dev.GetFieldValuesFunc, 4, &tx, &rx, &reads)
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	st := tick(s).States[0]
	// 4 links: TX 1000+0, 1000+1, 1000+2, 1000+3; RX 500 each.
	if got, ok := st.Get(telemetry.NVLinkBandwidth); !ok || got != 4006+2000 {
		t.Errorf("nvlink = %v (%v), want 6006", got, ok)
	}
	if st.Supported.Has(telemetry.MemoryTemp) || st.Has.Has(telemetry.MemoryTemp) {
		t.Error("memory temperature answered NOT_SUPPORTED but is served")
	}
	if st.Errors[telemetry.MemoryTemp] != 0 || st.Errors[telemetry.NVLinkBandwidth] != 0 {
		t.Errorf("errors: %v", st.Errors)
	}
	// The counter moves on the slow cadence, not the tick's: far fewer
	// NVLink reads than ticks.
	tx.Add(1 << 20)
	deadline := time.Now().Add(5 * time.Second)
	ticks := 0
	for {
		ticks++
		if got, _ := tick(s).States[0].Get(telemetry.NVLinkBandwidth); got == 6006+4<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nvlink counter never moved on the slow cadence")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := int(reads.Load()); n < 2 || n*3 > ticks+3 {
		t.Errorf("%d NVLink reads over %d ticks (the probe's and one per second)", n, ticks)
	}
}

// The slow calls are made every SlowPeriod on their own goroutine: a
// call that does not return holds up no tick nor the GPU's fast reads,
// the tick keeps serving the last answer meanwhile, and never makes the
// call itself.
func TestSlowFieldsNeverDelayTheTick(t *testing.T) {
	dev := newFullGPU(0)
	var g gate
	defer g.open()
	var calls atomic.Int32
	dev.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
		calls.Add(1)
		g.pass()
		return remappedCorr, remappedUnc, false, true, nvml.SUCCESS
	}
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	if n := calls.Load(); n != 1 {
		t.Fatalf("GetRemappedRows called %d times by the probe, want 1", n)
	}
	g.close()
	testutil.Eventually(t, 5*time.Second, "the slow goroutine's call", func() bool { return calls.Load() == 2 })

	// Ticks driven while that call hangs: each reads the fast fields,
	// and serves the probe's answer for the slow ones. (Few enough that
	// the answer is not yet too old to serve: slowStaleAfter periods.)
	reads := func() int { return len(dev.GetUtilizationRatesCalls()) }
	const ticks = 3
	for n := 1; n <= ticks; n++ {
		st := readOnTick(t, s, 0, reads).States[0]
		if st.Stalled {
			t.Fatalf("tick %d: GPU stalled by a slow call", n)
		}
		if v, ok := st.Get(telemetry.RemappedRowsCorr); !ok || v != remappedCorr {
			t.Fatalf("tick %d: correctable remapped rows %v (%v)", n, v, ok)
		}
		if v, _ := st.Get(telemetry.RowRemapFailure); v != 1 {
			t.Fatalf("tick %d: row remap failure %v, want 1", n, v)
		}
	}
	if c := calls.Load(); c != 2 {
		t.Errorf("GetRemappedRows called %d times over %d ticks, want 2 (the probe's and the slow goroutine's)", c, ticks)
	}
}

// A slow field that fails is counted once per slow answer, not once per
// tick that serves it, and comes back when the call does.
func TestSlowFieldErrorsCountedPerAnswer(t *testing.T) {
	dev := newFullGPU(0)
	var fail atomic.Bool
	var calls atomic.Int32
	dev.GetPcieReplayCounterFunc = func() (int, nvml.Return) {
		calls.Add(1)
		if fail.Load() {
			return 0, nvml.ERROR_UNKNOWN
		}
		return replays, nvml.SUCCESS
	}
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	fail.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	ticks := 0
	for calls.Load() < 3 && time.Now().Before(deadline) {
		tick(s)
		ticks++
		time.Sleep(MinInterval)
	}
	st := tick(s).States[0]
	// The probe succeeded; a failed answer may still be on its way to
	// the tick, so at most every failed call, at least one, and far fewer
	// than the ticks that served them.
	failed := uint64(calls.Load() - 1)
	if got := st.Errors[telemetry.PCIeReplay]; got < 1 || got > failed || int(got) >= ticks {
		t.Errorf("errors = %d after %d failed calls and %d ticks", got, failed, ticks)
	}
	if st.Has.Has(telemetry.PCIeReplay) && st.Errors[telemetry.PCIeReplay] == 0 {
		t.Error("failed field served")
	}
	if !st.Supported.Has(telemetry.PCIeReplay) {
		t.Error("a failing field is not an unsupported one")
	}
	fail.Store(false)
	for {
		if v, ok := tick(s).States[0].Get(telemetry.PCIeReplay); ok && v == replays {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replay counter never came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The vGPU license is read where NVML reports vGPU licensing (a vGPU
// guest); bare metal answers isGridLicenseSupported 0 and leaves it out.
func TestVGPULicense(t *testing.T) {
	for name, c := range map[string]struct {
		f    nvml.GridLicensableFeatures
		want float64
		ok   bool
	}{
		"licensed": {nvml.GridLicensableFeatures{IsGridLicenseSupported: 1, LicensableFeaturesCount: 1,
			GridLicensableFeatures: [3]nvml.GridLicensableFeature{{FeatureState: 1}}}, 1, true},
		"unlicensed":  {nvml.GridLicensableFeatures{IsGridLicenseSupported: 1, LicensableFeaturesCount: 1}, 0, true},
		"bare metal":  {nvml.GridLicensableFeatures{}, 0, false},
		"count lying": {nvml.GridLicensableFeatures{IsGridLicenseSupported: 1, LicensableFeaturesCount: 99}, 0, true},
	} {
		t.Run(name, func(t *testing.T) {
			dev := newFullGPU(0)
			dev.GetGridLicensableFeaturesFunc = func() (nvml.GridLicensableFeatures, nvml.Return) { return c.f, nvml.SUCCESS }
			lib, _ := newLib(dev)
			st := tick(open(t, lib, Config{})).States[0]
			v, ok := st.Get(telemetry.VGPULicense)
			if ok != c.ok || v != c.want || st.Supported.Has(telemetry.VGPULicense) != c.ok {
				t.Errorf("license = %v (present %v, supported %v), want %v (%v)", v, ok, st.Supported.Has(telemetry.VGPULicense), c.want, c.ok)
			}
		})
	}
}

// A GPU that answers none of the slow calls starts no slow goroutine and
// is never asked again.
func TestSlowFieldsUnsupportedProbedOnce(t *testing.T) {
	dev := newFullGPU(0)
	dev.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	dev.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED }
	fast := dev.GetFieldValuesFunc
	dev.GetFieldValuesFunc = func(v []nvml.FieldValue) nvml.Return {
		ret := fast(v)
		for i := range v {
			if v[i].FieldId == nvml.FI_DEV_MEMORY_TEMP {
				v[i].NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
			}
		}
		return ret
	}
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	for range 3 {
		tick(s)
	}
	time.Sleep(SlowPeriod(MinInterval) + 200*time.Millisecond)
	st := tick(s).States[0]
	if st.Supported&telemetry.SlowFields != 0 || st.Has&telemetry.SlowFields != 0 {
		t.Errorf("slow fields supported %v, present %v", fieldNames(st.Supported&telemetry.SlowFields), fieldNames(st.Has&telemetry.SlowFields))
	}
	if n := len(dev.GetPcieReplayCounterCalls()) + len(dev.GetRemappedRowsCalls()) + len(dev.GetGridLicensableFeaturesCalls()); n != 3 {
		t.Errorf("%d slow calls, want 3 (the probe's)", n)
	}
}

func TestSlowPeriod(t *testing.T) {
	for _, c := range []struct{ interval, want time.Duration }{
		{100 * time.Millisecond, time.Second},
		{250 * time.Millisecond, 1250 * time.Millisecond},
		{time.Second, 5 * time.Second},
	} {
		if got := SlowPeriod(c.interval); got != c.want {
			t.Errorf("SlowPeriod(%v) = %v, want %v", c.interval, got, c.want)
		}
	}
}
