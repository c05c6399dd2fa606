package sim

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func ptr(v float64) *float64 { return &v }

func TestControlStepsTheLoad(t *testing.T) {
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { return now }
	c := NewControl(New(Options{Devices: 2, Seed: 1, Static: true, Now: clock}))
	h, _ := c.DeviceGetHandleByIndex(0)
	other, _ := c.DeviceGetHandleByIndex(1)
	before, _ := other.GetUtilizationRates()

	now = now.Add(2 * time.Second)
	if err := c.SetLoad(0, Load{GPU: ptr(93), Encoder: ptr(80)}); err != nil {
		t.Fatal(err)
	}
	if u, ret := h.GetUtilizationRates(); ret != nvml.SUCCESS || u.Gpu != 93 {
		t.Errorf("GPU utilization after the step = %d (%v), want 93", u.Gpu, ret)
	}
	if u, _, _ := h.GetEncoderUtilization(); u != 80 {
		t.Errorf("encoder utilization = %d, want 80", u)
	}
	if sessions, fps, lat, _ := h.GetEncoderStats(); sessions != 13 || fps != 36 || lat != 6300 {
		t.Errorf("encoder stats = %d sessions, %d fps, %d µs; want 13, 36, 6300", sessions, fps, lat)
	}
	if u, _ := other.GetUtilizationRates(); u != before {
		t.Errorf("GPU 1 changed with GPU 0's step: %+v, was %+v", u, before)
	}

	// Samples before the step keep the curve; those after carry it.
	now = now.Add(time.Second)
	_, samples, ret := h.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, 0)
	if ret != nvml.SUCCESS || len(samples) == 0 {
		t.Fatalf("GetSamples: %v", ret)
	}
	stepUs := uint64(now.Add(-time.Second).UnixMicro())
	var afterStep, beforeStep int
	for _, s := range samples {
		v := binary.LittleEndian.Uint32(s.SampleValue[:])
		switch {
		case s.TimeStamp >= stepUs && v != 93:
			t.Errorf("sample at %d after the step = %d, want 93", s.TimeStamp, v)
		case s.TimeStamp >= stepUs:
			afterStep++
		case v == 93:
			t.Errorf("sample at %d before the step = 93", s.TimeStamp)
		default:
			beforeStep++
		}
	}
	if afterStep < 5 || beforeStep < 5 {
		t.Errorf("%d samples after the step, %d before; want both", afterStep, beforeStep)
	}

	if err := c.SetLoad(0, Load{}); err != nil {
		t.Fatal(err)
	}
	if u, _ := h.GetUtilizationRates(); u.Gpu == 93 {
		t.Error("a zero Load did not return the GPU to its curve")
	}
	if err := c.SetLoad(2, Load{GPU: ptr(1)}); err == nil {
		t.Error("a step on a GPU that does not exist")
	}
	if err := c.SetLoad(0, Load{GPU: ptr(101)}); err == nil {
		t.Error("a load over 100% accepted")
	}
	c.Devices()[0].Lose()
	if _, ret := h.GetUtilizationRates(); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("a lost GPU under control answers %v", ret)
	}
}
