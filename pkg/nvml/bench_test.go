package nvml

import (
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
)

// BenchmarkTick8GPUs is one sampling tick over a simulated 8-GPU node,
// every field supported. It allocates the snapshot and its per-device
// states each tick (readers may hold old snapshots for as long as a
// scrape lasts, so they cannot be reused), plus the slices of new
// buffered samples; the simulated driver allocates its sample buffers as
// the real go-nvml does.
func BenchmarkTick8GPUs(b *testing.B) {
	s, err := Open(sim.New(sim.Options{Devices: 8, Seed: 1}), Config{Interval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		s.Tick()
	}
}
