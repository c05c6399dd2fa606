//go:build gpu

package nvml

import (
	"errors"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// TestRealNVML runs the sampler over the machine's driver:
// go test -tags gpu -run RealNVML -v ./internal/nvml/
// It skips where no driver is installed.
func TestRealNVML(t *testing.T) {
	s, err := Open(t.Context(), NewLibrary(""), Config{Interval: MinInterval})
	if errors.Is(err, ErrLibraryNotFound) {
		t.Skip("no NVIDIA driver on this machine")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var snap *telemetry.Snapshot
	for range 5 {
		s.Tick()
		snap = s.Latest()
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("tick: %s for %d GPUs (compare internal/nvml/sim's callCosts)", snap.Duration, len(snap.Devices))
	for i, d := range snap.Devices {
		st := snap.States[i]
		t.Logf("GPU %d %s %s %s MIG=%v", d.Index, d.UUID, d.Name, d.PCIBusID, d.MIGEnabled)
		for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
			v, ok := st.Get(f)
			t.Logf("  %-20s supported=%-5v present=%-5v %v errors=%d", f, st.Supported.Has(f), ok, v, st.Errors[f])
			if ok && !st.Supported.Has(f) {
				t.Errorf("%s present but not supported", f)
			}
		}
		if st.Lost {
			t.Errorf("GPU %d lost", i)
		}
		if !st.Has.Has(telemetry.FBTotal) || !st.Has.Has(telemetry.Temperature) {
			t.Errorf("GPU %d: memory or temperature missing", i)
		}
	}
}
