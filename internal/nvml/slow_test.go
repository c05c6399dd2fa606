package nvml

import (
	"encoding/binary"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// nvlinkCounters are a mock GPU's NVLink data counters (KiB), the same on
// every link, and the driver timestamp (µs) GetFieldValues stamps them
// with.
type nvlinkCounters struct {
	mu     sync.Mutex
	tx, rx uint64
	us     int64
	reads  int
	step   func(c *nvlinkCounters) // if set, run before each read
}

func (c *nvlinkCounters) set(tx, rx uint64, us int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tx, c.rx, c.us = tx, rx, us
}

// withNVLink gives a mock GPU links NVLink links whose data counters read
// c, and memory temperature reported NOT_SUPPORTED entry by entry, as a
// GDDR GPU with NVLink would.
func withNVLink(fast func([]nvml.FieldValue) nvml.Return, links uint32, c *nvlinkCounters) func([]nvml.FieldValue) nvml.Return {
	return func(values []nvml.FieldValue) nvml.Return {
		if ret := fast(values); ret != nvml.SUCCESS {
			return ret
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if slices.ContainsFunc(values, func(v nvml.FieldValue) bool { return v.FieldId == nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX }) {
			if c.step != nil {
				c.step(c)
			}
			c.reads++
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
				put(c.tx)
				v.Timestamp = c.us
			case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
				put(c.rx)
				v.Timestamp = c.us
			case nvml.FI_DEV_MEMORY_TEMP:
				v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
			}
		}
		return nvml.SUCCESS
	}
}

// NVLink's bandwidth is a rate, as DCGM's field 449: the data counters
// summed over every link, TX and RX, differenced between two slow reads
// over the driver's timestamps, in bytes per second. The probe's read
// only primes it. A batch entry that answers NOT_SUPPORTED (memory
// temperature) leaves that field out and no other.
func TestSlowFieldsNVLinkRateAndPartialBatch(t *testing.T) {
	dev := newFullGPU(0)
	c := &nvlinkCounters{tx: 1000, rx: 500, us: 1_000_000}
	// Each read after the probe's: 1.5 s later, 600 KiB more TX and 300
	// more RX on each link.
	c.step = func(c *nvlinkCounters) {
		if c.reads > 0 {
			c.tx, c.rx, c.us = c.tx+600, c.rx+300, c.us+1_500_000
		}
	}
	dev.GetFieldValuesFunc = withNVLink(dev.GetFieldValuesFunc, 4, c)
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	st := tick(s).States[0]
	if !st.Supported.Has(telemetry.NVLinkBandwidth) {
		t.Fatal("NVLink answered but is not supported")
	}
	if v, ok := st.Get(telemetry.NVLinkBandwidth); ok {
		t.Errorf("NVLink bandwidth %v from the probe's read alone; the first read only primes the rate", v)
	}
	if st.Supported.Has(telemetry.MemoryTemp) || st.Has.Has(telemetry.MemoryTemp) {
		t.Error("memory temperature answered NOT_SUPPORTED but is served")
	}
	// 4 links × (600 + 300) KiB × 1024 over 1.5 s.
	const want = 4 * 900 * 1024 / 1.5
	testutil.Eventually(t, 5*time.Second, "the NVLink rate from the slow goroutine's read", func() bool {
		v, ok := tick(s).States[0].Get(telemetry.NVLinkBandwidth)
		return ok && v == want
	})
	st = tick(s).States[0]
	if st.Errors[telemetry.MemoryTemp] != 0 || st.Errors[telemetry.NVLinkBandwidth] != 0 {
		t.Errorf("errors: %v", st.Errors)
	}
}

// The rate's arithmetic, read by read on one device's slow state: no
// rate from the first read, nor from one whose counters went back (a
// driver reload), nor from one no later than the previous; the rate again
// from the read after; an entry that fails leaves the rate out and is
// reported, without losing the previous read.
func TestNVLinkRateReadByRead(t *testing.T) {
	dev := newFullGPU(0)
	c := &nvlinkCounters{}
	var failTX bool
	inner := withNVLink(dev.GetFieldValuesFunc, 2, c)
	dev.GetFieldValuesFunc = func(v []nvml.FieldValue) nvml.Return {
		ret := inner(v)
		for i := range v {
			if failTX && v[i].FieldId == nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX {
				v[i].NvmlReturn = uint32(nvml.ERROR_UNKNOWN)
			}
		}
		return ret
	}
	d := &device{handle: dev}
	d.slow.links = 2
	d.slow.req = make([]nvml.FieldValue, 1+2*d.slow.links)
	d.slow.active = fields(telemetry.NVLinkBandwidth)
	read := func() (float64, bool, nvml.Return) {
		r := &slowReading{}
		ret := readSlowFieldValues(d, r)
		v, ok := r.vals.Get(telemetry.NVLinkBandwidth)
		return v, ok, ret
	}
	const s = 1_000_000 // µs
	for i, step := range []struct {
		tx, rx uint64
		us     int64
		fail   bool
		want   float64 // bytes/s; -1: none
		ret    nvml.Return
	}{
		{tx: 10_000, rx: 20_000, us: 100 * s, want: -1},                   // primes
		{tx: 10_500, rx: 20_250, us: 102 * s, want: 2 * 750 * 1024 / 2.0}, // 2 links, 750 KiB each in 2 s
		{tx: 11_500, rx: 20_250, us: 103 * s, want: 2 * 1000 * 1024},
		{tx: 11_500, rx: 20_250, us: 103 * s, want: -1}, // the same stamp: no time passed
		{tx: 12_000, rx: 21_000, us: 104 * s, want: 2 * 1250 * 1024},
		{tx: 40, rx: 60, us: 105 * s, want: -1}, // driver reloaded: counters back near 0
		{tx: 1064, rx: 60, us: 107 * s, want: 2 * 1024 * 1024 / 2.0},
		{tx: 2088, rx: 60, us: 108 * s, fail: true, want: -1, ret: nvml.ERROR_UNKNOWN},
		{tx: 3112, rx: 60, us: 109 * s, want: 2 * 2048 * 1024 / 2.0}, // since the last good read
		{tx: 3112, rx: 60, us: 111 * s, want: 0},                     // idle links: 0, not absent
	} {
		c.set(step.tx, step.rx, step.us)
		failTX = step.fail
		v, ok, ret := read()
		if ret != step.ret {
			t.Errorf("read %d: returned %v, want %v", i, ret, step.ret)
		}
		if step.want < 0 {
			if ok {
				t.Errorf("read %d: rate %v, want none", i, v)
			}
			continue
		}
		if !ok || v != step.want {
			t.Errorf("read %d: rate %v (present %v), want %v B/s", i, v, ok, step.want)
		}
	}
}

// A read without driver timestamps is stamped with the time of the read,
// as DCGM does: the rate is still there, whatever its exact value.
func TestNVLinkRateWithoutTimestamps(t *testing.T) {
	dev := newFullGPU(0)
	c := &nvlinkCounters{tx: 1000}
	dev.GetFieldValuesFunc = withNVLink(dev.GetFieldValuesFunc, 1, c)
	d := &device{handle: dev}
	d.slow.links = 1
	d.slow.req = make([]nvml.FieldValue, 3)
	d.slow.active = fields(telemetry.NVLinkBandwidth)
	r := &slowReading{}
	if readSlowFieldValues(d, r); r.vals.Has.Has(telemetry.NVLinkBandwidth) {
		t.Error("first read gave a rate")
	}
	c.set(3000, 0, 0)
	time.Sleep(time.Millisecond) // a later microsecond for the second stamp
	r = &slowReading{}
	if ret := readSlowFieldValues(d, r); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	if v, ok := r.vals.Get(telemetry.NVLinkBandwidth); !ok || v <= 0 {
		t.Errorf("rate %v (present %v) without timestamps, want one above 0", v, ok)
	}
}

// The slow calls are made every SlowPeriod on their own goroutine, asked
// for by the worker's readings: a call that does not return holds up no
// tick nor the GPU's fast reads,
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
	testutil.Eventually(t, 5*time.Second, "the slow goroutine's call", func() bool { tick(s); return calls.Load() == 2 })

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
	for f := range telemetry.NumFields {
		if telemetry.HealthFields.Has(f) {
			breakHealth(dev, f, nvml.ERROR_NOT_SUPPORTED)
		}
	}
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
	for call, n := range map[string]int{
		"GetPcieReplayCounter":         len(dev.GetPcieReplayCounterCalls()),
		"GetRemappedRows":              len(dev.GetRemappedRowsCalls()),
		"GetGridLicensableFeatures":    len(dev.GetGridLicensableFeaturesCalls()),
		"GetTotalEccErrors":            len(dev.GetTotalEccErrorsCalls()) / 4,
		"GetRetiredPages":              len(dev.GetRetiredPagesCalls()) / 2,
		"GetRetiredPagesPendingStatus": len(dev.GetRetiredPagesPendingStatusCalls()),
		"GetCurrentClocksEventReasons": len(dev.GetCurrentClocksEventReasonsCalls()),
		"GetViolationStatus":           len(dev.GetViolationStatusCalls()) / 6,
		"GetPowerManagementLimit":      len(dev.GetPowerManagementLimitCalls()),
		"GetEnforcedPowerLimit":        len(dev.GetEnforcedPowerLimitCalls()),
		"GetPerformanceState":          len(dev.GetPerformanceStateCalls()),
		"GetFanSpeed":                  len(dev.GetFanSpeedCalls()),
	} {
		if n != 1 {
			t.Errorf("%s called %d times (per variant), want 1 (the probe's)", call, n)
		}
	}
}

// breakHealth makes the one call of dev that answers the health field f
// return ret; the others answer as before.
func breakHealth(dev *mock.Device, f telemetry.Field, ret nvml.Return) {
	if t, c, ok := eccKind(f); ok {
		inner := dev.GetTotalEccErrorsFunc
		dev.GetTotalEccErrorsFunc = func(tt nvml.MemoryErrorType, cc nvml.EccCounterType) (uint64, nvml.Return) {
			if tt == t && cc == c {
				return 0, ret
			}
			return inner(tt, cc)
		}
		return
	}
	if p, ok := violationPolicy[f]; ok {
		inner := dev.GetViolationStatusFunc
		dev.GetViolationStatusFunc = func(pp nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
			if pp == p {
				return nvml.ViolationTime{}, ret
			}
			return inner(pp)
		}
		return
	}
	switch f {
	case telemetry.RetiredPagesSBE, telemetry.RetiredPagesDBE:
		cause := nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
		if f == telemetry.RetiredPagesDBE {
			cause = nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
		}
		inner := dev.GetRetiredPagesFunc
		dev.GetRetiredPagesFunc = func(c nvml.PageRetirementCause) ([]uint64, nvml.Return) {
			if c == cause {
				return nil, ret
			}
			return inner(c)
		}
	case telemetry.RetiredPagesPending:
		dev.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, ret }
	case telemetry.ClocksEventReasons:
		dev.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, ret }
	case telemetry.PowerMgmtLimit:
		dev.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return 0, ret }
	case telemetry.EnforcedPowerLimit:
		dev.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 0, ret }
	case telemetry.PState:
		dev.GetPerformanceStateFunc = func() (nvml.Pstates, nvml.Return) { return 0, ret }
	case telemetry.FanSpeed:
		dev.GetFanSpeedFunc = func() (uint32, nvml.Return) { return 0, ret }
	default:
		panic("not a health field: " + f.String())
	}
}

func eccKind(f telemetry.Field) (nvml.MemoryErrorType, nvml.EccCounterType, bool) {
	switch f {
	case telemetry.ECCSBEVolatile:
		return nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC, true
	case telemetry.ECCDBEVolatile:
		return nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC, true
	case telemetry.ECCSBEAggregate:
		return nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC, true
	case telemetry.ECCDBEAggregate:
		return nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC, true
	}
	return 0, 0, false
}

var violationPolicy = map[telemetry.Field]nvml.PerfPolicyType{
	telemetry.PowerViolation:       nvml.PERF_POLICY_POWER,
	telemetry.ThermalViolation:     nvml.PERF_POLICY_THERMAL,
	telemetry.SyncBoostViolation:   nvml.PERF_POLICY_SYNC_BOOST,
	telemetry.BoardLimitViolation:  nvml.PERF_POLICY_BOARD_LIMIT,
	telemetry.LowUtilViolation:     nvml.PERF_POLICY_LOW_UTILIZATION,
	telemetry.ReliabilityViolation: nvml.PERF_POLICY_RELIABILITY,
}

// healthFields lists telemetry.HealthFields.
func healthFields() []telemetry.Field {
	var out []telemetry.Field
	for f := range telemetry.NumFields {
		if telemetry.HealthFields.Has(f) {
			out = append(out, f)
		}
	}
	return out
}

// Each health field comes from its own call: a GPU that answers one
// NOT_SUPPORTED (no ECC, no page retirement on Ampere, no fan on a T4, a
// limiter it does not have) loses that field only, and it is no error.
func TestHealthFieldNotSupportedLeavesOnlyItOut(t *testing.T) {
	for _, f := range healthFields() {
		t.Run(f.String(), func(t *testing.T) {
			t.Parallel()
			dev := newFullGPU(0)
			breakHealth(dev, f, nvml.ERROR_NOT_SUPPORTED)
			lib, _ := newLib(dev)
			st := tick(open(t, lib, Config{})).States[0]
			if st.Supported.Has(f) || st.Has.Has(f) || st.Errors[f] != 0 {
				t.Errorf("%s: supported %v, present %v, errors %d after NOT_SUPPORTED", f, st.Supported.Has(f), st.Has.Has(f), st.Errors[f])
			}
			for _, g := range healthFields() {
				if g != f && (!st.Supported.Has(g) || !st.Has.Has(g)) {
					t.Errorf("%s lost with %s: supported %v, present %v", g, f, st.Supported.Has(g), st.Has.Has(g))
				}
			}
		})
	}
}

// A health call that fails is counted against its own field, which stays
// supported and absent while it fails; the others are served.
func TestHealthFieldErrorIsCounted(t *testing.T) {
	for _, f := range healthFields() {
		t.Run(f.String(), func(t *testing.T) {
			t.Parallel()
			dev := newFullGPU(0)
			breakHealth(dev, f, nvml.ERROR_UNKNOWN)
			lib, _ := newLib(dev)
			s := open(t, lib, Config{})
			var st telemetry.DeviceState
			// The probe's answer is served; its errors are counted from
			// the slow goroutine's first answer on.
			testutil.Eventually(t, 5*time.Second, "the failure counted", func() bool {
				st = tick(s).States[0]
				return st.Errors[f] > 0
			})
			if !st.Supported.Has(f) || st.Has.Has(f) {
				t.Errorf("%s: supported %v, present %v while failing", f, st.Supported.Has(f), st.Has.Has(f))
			}
			for _, g := range healthFields() {
				if g != f && (!st.Has.Has(g) || st.Errors[g] != 0) {
					t.Errorf("%s with %s failing: present %v, errors %d", g, f, st.Has.Has(g), st.Errors[g])
				}
			}
		})
	}
}

// NVML_PSTATE_UNKNOWN is an answer, not a P-state: the field is absent
// that read, still supported, no error; a known state comes back.
func TestPStateUnknownIsAbsent(t *testing.T) {
	dev := newFullGPU(0)
	var state atomic.Int32
	state.Store(int32(nvml.PSTATE_UNKNOWN))
	dev.GetPerformanceStateFunc = func() (nvml.Pstates, nvml.Return) { return nvml.Pstates(state.Load()), nvml.SUCCESS }
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	st := tick(s).States[0]
	if !st.Supported.Has(telemetry.PState) || st.Has.Has(telemetry.PState) || st.Errors[telemetry.PState] != 0 {
		t.Errorf("P-state unknown: supported %v, present %v, errors %d", st.Supported.Has(telemetry.PState), st.Has.Has(telemetry.PState), st.Errors[telemetry.PState])
	}
	state.Store(int32(nvml.PSTATE_8))
	testutil.Eventually(t, 5*time.Second, "P8 from the next slow read", func() bool {
		v, ok := tick(s).States[0].Get(telemetry.PState)
		return ok && v == 8
	})
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

// The worker asks for a slow pass once per SlowPeriod of its clock, not
// once per reading: 25 readings 100 ms apart (2.5 s) make the probe's
// pass and two more, at 1 s and 2 s; a pass asked for is made.
func TestSlowPassesFollowThePeriod(t *testing.T) {
	dev := newFullGPU(0)
	var calls atomic.Int32
	dev.GetPcieReplayCounterFunc = func() (int, nvml.Return) { calls.Add(1); return replays, nvml.SUCCESS }
	lib, _ := newLib(dev)
	c := newFakeClock()
	s := open(t, lib, Config{Interval: MinInterval, Now: c.now})
	reads := func() int { return len(dev.GetUtilizationRatesCalls()) }
	for range 25 {
		c.advance(MinInterval)
		readOnTick(t, s, 0, reads)
	}
	testutil.Eventually(t, 5*time.Second, "the passes asked for", func() bool { return calls.Load() >= 3 })
	if n := calls.Load(); n != 3 {
		t.Errorf("GetPcieReplayCounter called %d times over 2.5 s of readings, want 3 (the probe's, at 1 s and at 2 s)", n)
	}
}

// A lost GPU's slow goroutine ends: it waits for the worker's kicks, which
// a retired device gets no more, so the retirement wakes it.
func TestSlowGoroutineEndsWithItsDevice(t *testing.T) {
	slowLoops := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*device).slowLoop")
	}
	// Earlier tests' samplers are closed; their goroutines end shortly.
	testutil.Eventually(t, 5*time.Second, "no slow goroutine of an earlier test", func() bool { return slowLoops() == 0 })
	dev := newFullGPU(0)
	var lost atomic.Bool
	util := dev.GetUtilizationRatesFunc
	dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		if lost.Load() {
			return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
		}
		return util()
	}
	lib, _ := newLib(dev)
	s := open(t, lib, Config{})
	testutil.Eventually(t, 5*time.Second, "the GPU's slow goroutine", func() bool { return slowLoops() == 1 })
	lost.Store(true)
	if !tick(s).States[0].Lost {
		t.Fatal("GPU not reported lost")
	}
	testutil.Eventually(t, 5*time.Second, "the lost GPU's slow goroutine to end", func() bool { return slowLoops() == 0 })
}
