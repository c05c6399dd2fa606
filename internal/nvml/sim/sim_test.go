package sim

import (
	"encoding/binary"
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
}
