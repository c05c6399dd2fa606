package sim

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestSameSeedSameNode(t *testing.T) {
	a, b := New(Options{Devices: 4, Seed: 42}), New(Options{Devices: 4, Seed: 42})
	c := New(Options{Devices: 4, Seed: 43})
	seen := map[string]bool{}
	for i := range 4 {
		ua, ub, uc := a.Devices()[i].UUID(), b.Devices()[i].UUID(), c.Devices()[i].UUID()
		if ua != ub {
			t.Errorf("GPU %d: same seed gave %s and %s", i, ua, ub)
		}
		if ua == uc {
			t.Errorf("GPU %d: seeds 42 and 43 gave the same UUID", i)
		}
		if seen[ua] {
			t.Errorf("UUID %s repeated", ua)
		}
		seen[ua] = true
		if len(ua) != len("GPU-8145ea8c-a8bb-46f4-769a-e218cd958039") {
			t.Errorf("UUID %q is not GPU-<uuid> shaped", ua)
		}
	}
}

func TestStaticLoadIsConstant(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 2, Seed: 1, Static: true, Now: func() time.Time { return clock }})
	d := l.Devices()[0]
	u0, _ := d.GetUtilizationRates()
	for _, step := range []time.Duration{time.Second, time.Minute, time.Hour} {
		clock = clock.Add(step)
		u, _ := d.GetUtilizationRates()
		if u != u0 {
			t.Errorf("static utilization moved from %+v to %+v after %s", u0, u, step)
		}
		if got := d.GPUUtil(clock); got != float64(u.Gpu) {
			t.Errorf("GPUUtil = %v, GetUtilizationRates = %d", got, u.Gpu)
		}
	}
}

func TestCurvesMoveAndStayInRange(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 1, Seed: 9, Now: func() time.Time { return clock }})
	d := l.Devices()[0]
	distinct := map[uint32]bool{}
	var lastEnergy uint64
	for range 600 {
		clock = clock.Add(500 * time.Millisecond)
		u, ret := d.GetUtilizationRates()
		if ret != nvml.SUCCESS || u.Gpu > 100 {
			t.Fatalf("utilization %+v, %v", u, ret)
		}
		distinct[u.Gpu] = true
		m, _ := d.GetMemoryInfo_v2()
		if m.Used+m.Free+m.Reserved != m.Total {
			t.Fatalf("memory does not add up: %+v", m)
		}
		e, _ := d.GetTotalEnergyConsumption()
		if e < lastEnergy {
			t.Fatalf("energy counter went back: %d after %d", e, lastEnergy)
		}
		lastEnergy = e
	}
	if len(distinct) < 10 {
		t.Errorf("utilization took only %d values over 5 minutes; the curve should move", len(distinct))
	}
}

func TestGetSamplesFollowsLastSeen(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 1, Seed: 3, Now: func() time.Time { return clock }})
	d := l.Devices()[0]
	clock = clock.Add(time.Second)
	vt, s, ret := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, 0)
	if ret != nvml.SUCCESS || vt != nvml.VALUE_TYPE_UNSIGNED_INT || len(s) != 6 { // slots 0..5: the sixth slot ends just after 1 s
		t.Fatalf("first read: %d samples, %v", len(s), ret)
	}
	last := s[len(s)-1].TimeStamp
	if _, _, ret := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, last); ret != nvml.ERROR_NOT_FOUND {
		t.Errorf("no newer sample: ret = %v, want NOT_FOUND", ret)
	}
	clock = clock.Add(500 * time.Millisecond)
	_, s2, _ := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, last)
	if len(s2) != 3 || s2[0].TimeStamp <= last {
		t.Errorf("after 0.5 s: %d samples starting at %d, want 3 newer than %d", len(s2), s2[0].TimeStamp, last)
	}
	if v := binary.LittleEndian.Uint32(s2[0].SampleValue[:]); v > 100 {
		t.Errorf("sample value %d out of range", v)
	}
	clock = clock.Add(time.Hour)
	if _, s3, _ := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, last); len(s3) != driverBufferLen {
		t.Errorf("after an hour: %d samples, want the driver's buffer of %d", len(s3), driverBufferLen)
	}
}

func TestLostDevice(t *testing.T) {
	l := New(Options{Devices: 2, Seed: 1})
	l.Devices()[0].Lose()
	if _, ret := l.Devices()[0].GetUtilizationRates(); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("lost GPU answered %v", ret)
	}
	if _, ret := l.Devices()[1].GetUtilizationRates(); ret != nvml.SUCCESS {
		t.Errorf("other GPU answered %v", ret)
	}
	// Bound again: found by its UUID, and answering.
	l.Devices()[0].Restore()
	h, ret := l.DeviceGetHandleByUUID(l.Devices()[0].UUID())
	if ret != nvml.SUCCESS || h != l.Devices()[0] {
		t.Fatalf("DeviceGetHandleByUUID: %v, %v", h, ret)
	}
	if _, ret := h.GetUtilizationRates(); ret != nvml.SUCCESS {
		t.Errorf("restored GPU answered %v", ret)
	}
	if _, ret := l.DeviceGetHandleByUUID("GPU-nope"); ret != nvml.ERROR_NOT_FOUND {
		t.Errorf("an unknown UUID answered %v, want NOT_FOUND", ret)
	}
}

// The health fields answer as a T4's: ECC on with a few corrected errors
// and none uncorrected, volatile within aggregate; nothing retired or
// pending; a 70 W limit; P0 under load; no fan.
func TestHealthFieldsOfAT4(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 8, Seed: 5, Static: true, Now: func() time.Time { return clock }})
	clock = clock.Add(time.Minute)
	someErrors := false
	for i, d := range l.Devices() {
		vol, r1 := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC)
		agg, r2 := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC)
		dbeV, r3 := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
		dbeA, r4 := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC)
		if r1 != nvml.SUCCESS || r2 != nvml.SUCCESS || r3 != nvml.SUCCESS || r4 != nvml.SUCCESS {
			t.Fatalf("GPU %d: ECC answered %v %v %v %v", i, r1, r2, r3, r4)
		}
		if vol > agg || agg > 10 || dbeV != 0 || dbeA != 0 {
			t.Errorf("GPU %d: ECC corrected %d volatile / %d aggregate, uncorrected %d / %d", i, vol, agg, dbeV, dbeA)
		}
		someErrors = someErrors || agg > 0
		for _, c := range []nvml.PageRetirementCause{nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS, nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR} {
			if pages, ret := d.GetRetiredPages(c); ret != nvml.SUCCESS || len(pages) != 0 {
				t.Errorf("GPU %d: retired pages %v, %v", i, pages, ret)
			}
		}
		if p, ret := d.GetRetiredPagesPendingStatus(); ret != nvml.SUCCESS || p != nvml.FEATURE_DISABLED {
			t.Errorf("GPU %d: pending %v, %v", i, p, ret)
		}
		lim, r1 := d.GetPowerManagementLimit()
		enf, r2 := d.GetEnforcedPowerLimit()
		if lim != 70000 || enf != 70000 || r1 != nvml.SUCCESS || r2 != nvml.SUCCESS {
			t.Errorf("GPU %d: power limits %d, %d mW (%v, %v)", i, lim, enf, r1, r2)
		}
		if p, ret := d.GetPerformanceState(); ret != nvml.SUCCESS || p != nvml.PSTATE_0 {
			t.Errorf("GPU %d at %v%%: P%d (%v), want P0", i, d.GPUUtil(clock), p, ret)
		}
		if _, ret := d.GetFanSpeed(); ret != nvml.ERROR_NOT_SUPPORTED {
			t.Errorf("GPU %d: fan answered %v; a T4 has none", i, ret)
		}
	}
	if !someErrors {
		t.Error("no GPU of 8 has a corrected ECC error: the counts prove nothing")
	}
}

// Time throttled grows under load, never goes back, and the reasons and
// P-state follow the load: idle is P8 with reason GpuIdle, and a load
// near the power limit shows SwPowerCap.
func TestThrottlingFollowsLoad(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 1, Seed: 9, Now: func() time.Time { return clock }})
	d := l.Devices()[0]
	var last [2]uint64
	for range 600 {
		clock = clock.Add(time.Second)
		for i, p := range []nvml.PerfPolicyType{nvml.PERF_POLICY_POWER, nvml.PERF_POLICY_THERMAL} {
			v, ret := d.GetViolationStatus(p)
			if ret != nvml.SUCCESS || v.ViolationTime < last[i] {
				t.Fatalf("policy %d: %d ns after %d (%v)", p, v.ViolationTime, last[i], ret)
			}
			last[i] = v.ViolationTime
		}
	}
	// 10 minutes at 5-95% load: some seconds of power capping, at most
	// 50 ms a second; thermal a fifth of it.
	if s := float64(last[0]) / 1e9; s < 0.1 || s > 30 {
		t.Errorf("power violation %v s after 10 minutes under load", s)
	}
	if ratio := float64(last[1]) / float64(last[0]); math.Abs(ratio-0.2) > 1e-6 {
		t.Errorf("thermal/power violation = %v, want 0.2", ratio)
	}
	for _, p := range []nvml.PerfPolicyType{nvml.PERF_POLICY_SYNC_BOOST, nvml.PERF_POLICY_BOARD_LIMIT, nvml.PERF_POLICY_LOW_UTILIZATION, nvml.PERF_POLICY_RELIABILITY} {
		if v, ret := d.GetViolationStatus(p); ret != nvml.SUCCESS || v.ViolationTime != 0 {
			t.Errorf("policy %d: %d ns (%v), want 0", p, v.ViolationTime, ret)
		}
	}

	// Loads pinned through the curve: idle, busy, capped.
	for _, c := range []struct {
		load    float64
		pstate  nvml.Pstates
		reasons uint64
	}{
		{2, nvml.PSTATE_8, nvml.ClocksEventReasonGpuIdle},
		{50, nvml.PSTATE_0, 0},
		{95, nvml.PSTATE_0, nvml.ClocksEventReasonSwPowerCap},
	} {
		d.gpu = curve{mean: c.load, period: 60}
		p, _ := d.GetPerformanceState()
		r, _ := d.GetCurrentClocksEventReasons()
		if p != c.pstate || r != c.reasons {
			t.Errorf("load %v%%: P%d reasons %#x, want P%d %#x", c.load, p, r, c.pstate, c.reasons)
		}
	}
}

// integralSq against a numerical integration of smooth².
func TestIntegralSq(t *testing.T) {
	c := curve{mean: 40, amp: 17, period: 73, phase: 1.3}
	const n, dt = 500_000, 1e-3
	var sum float64
	for i := range n {
		v := c.smooth((float64(i) + 0.5) * dt)
		sum += v * v * dt
	}
	if got := c.integralSq(500); math.Abs(got-sum)/sum > 1e-9 {
		t.Errorf("integralSq(500) = %v, numerically %v", got, sum)
	}
}
