package nvml

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/pkg/telemetry"

	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
)

// BenchmarkTick8GPUs is one sampling tick over a simulated 8-GPU node,
// every field supported, that is: reading every field, draining the
// buffered samples, building the snapshot and publishing it. The two
// allocations per tick are the snapshot and its per-device states:
// readers may hold an old snapshot for as long as a scrape lasts, so
// neither can be reused without reference counting, which would cost more
// than it saves. (The simulated driver advances with the wall clock, so
// most ticks find no new buffered sample, as at 10 Hz on real hardware.)
func BenchmarkTick8GPUs(b *testing.B) {
	benchTicks(b, sim.New(sim.Options{Devices: 8, Seed: 1}))
}

// BenchmarkTick8MockGPUs is the same tick over go-nvml's moq mocks. Its
// extra allocations are the mocks', which record every call they get.
func BenchmarkTick8MockGPUs(b *testing.B) {
	devs := make([]*mock.Device, 8)
	for i := range devs {
		devs[i] = newFullGPU(i)
	}
	lib, _ := newLib(devs...)
	benchTicks(b, lib)
}

// benchTicks times Tick over lib at 10 Hz settings.
func benchTicks(b *testing.B, lib Library) {
	s, err := Open(b.Context(), lib, Config{Interval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		s.Tick()
	}
}

// BenchmarkDrainSamples8GPUs drains the driver's buffered samples of four
// engines on 8 GPUs when each holds 1.5 new samples (a 250 ms tick over a
// 1/6 s driver period). Allocations: the driver's sample slice (go-nvml
// allocates it per call) and the slice of new samples the snapshot keeps.
func BenchmarkDrainSamples8GPUs(b *testing.B) {
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	s, err := Open(b.Context(), sim.New(sim.Options{Devices: 8, Seed: 1, Now: now}), Config{Interval: 250 * time.Millisecond, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var st [8]telemetry.DeviceState
	b.ReportAllocs()
	for b.Loop() {
		clock = clock.Add(250 * time.Millisecond)
		for i, w := range s.workers {
			st[i] = telemetry.DeviceState{}
			w.d.drainSamples(clock, clock.Sub(time.Unix(1_800_000_000, 0)), s.cfg.Window, &st[i])
		}
	}
}

// BenchmarkTick8GPUsCallLatency is the tick over a simulated 8-GPU node
// whose calls take as long as on real hardware (sim's callCosts): what a
// tick costs in wall time on a node. The GPUs are read in parallel, one
// worker each, so it is about one GPU's calls, not eight.
func BenchmarkTick8GPUsCallLatency(b *testing.B) {
	benchTicks(b, sim.New(sim.Options{Devices: 8, Seed: 1, CallLatency: true}))
}
