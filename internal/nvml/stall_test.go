package nvml

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// gate blocks the calls that pass through it while closed, as a GPU that
// fell off the bus can block NVML calls.
type gate struct {
	mu      sync.Mutex
	blocked chan struct{} // nil while open
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.blocked == nil {
		g.blocked = make(chan struct{})
	}
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.blocked != nil {
		close(g.blocked)
		g.blocked = nil
	}
}

func (g *gate) pass() {
	g.mu.Lock()
	ch := g.blocked
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Where the byte counters are unsupported, GetPcieThroughput (20 ms per
// call on real hardware) runs on its own goroutine at a slow cadence: the
// tick never makes the call.
func TestSlowPcieThroughputIsNotOnTheTick(t *testing.T) {
	devs := make([]*mock.Device, 4)
	var mu sync.Mutex
	inTick := false
	var onTick int
	for i := range devs {
		devs[i] = newFullGPU(i)
		devs[i].GetFieldValuesFunc = func([]nvml.FieldValue) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
		devs[i].GetPcieThroughputFunc = func(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
			mu.Lock()
			if inTick {
				onTick++
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			return 1500, nvml.SUCCESS
		}
	}
	lib, _ := newLib(devs...)
	s := open(t, lib, Config{})
	for range 20 {
		mu.Lock()
		inTick = true
		mu.Unlock()
		snap := tick(s)
		mu.Lock()
		inTick = false
		mu.Unlock()
		for i, st := range snap.States {
			if v, ok := st.Get(telemetry.PCIeTX); !ok || v != 1500 {
				t.Fatalf("GPU %d PCIe TX = %v, %v; want the fallback's last answer", i, v, ok)
			}
		}
	}
	if onTick != 0 {
		t.Errorf("GetPcieThroughput called %d times during ticks, want 0", onTick)
	}
}

// hungLib is 4 GPUs, of which GPU 2's temperature reads pass through g.
func hungLib(g *gate) (*mock.Interface, []*mock.Device) {
	devs := make([]*mock.Device, 4)
	for i := range devs {
		devs[i] = newFullGPU(i)
	}
	devs[2].GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		g.pass()
		return 55, nvml.SUCCESS
	}
	lib, _ := newLib(devs...)
	return lib, devs
}

// readOnTick ticks s once and waits until GPU i has been read for that
// tick (reads counts its reads so far) and its worker is idle again, so
// that the next tick asks it again: each call drives exactly one read of
// the GPU, however loaded the machine.
func readOnTick(t *testing.T, s *Sampler, i int, reads func() int) *telemetry.Snapshot {
	t.Helper()
	before := reads()
	snap := tick(s)
	testutil.Eventually(t, 2*time.Second, fmt.Sprintf("GPU %d to be read for tick %d", i, snap.Seq), func() bool {
		return reads() > before && !s.workers[i].busy()
	})
	return snap
}

func TestHungGPUStallsOnlyItself(t *testing.T) {
	var g gate
	defer g.open()
	lib, devs := hungLib(&g)
	shutdowns := 0
	var smu sync.Mutex
	lib.ShutdownFunc = func() nvml.Return { smu.Lock(); shutdowns++; smu.Unlock(); return nvml.SUCCESS }
	var logs logBuffer
	const interval = 100 * time.Millisecond
	s, err := Open(t.Context(), asLibrary(lib), Config{Interval: interval, ShutdownWait: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	reads := func() int { return len(devs[0].GetUtilizationRatesCalls()) }

	readOnTick(t, s, 0, reads)
	g.close()
	testutil.Eventually(t, 2*time.Second, "GPU 2 to be reported stalled", func() bool { return tick(s).States[2].Stalled })

	// The other GPUs keep being read, tick after tick, while GPU 2 hangs:
	// ten ticks driven here, ten reads of GPU 0. (That the ticks keep
	// their cadence meanwhile is the bench harness's to measure.)
	const ticks = 10
	calls := reads()
	var last *telemetry.Snapshot
	for range ticks {
		last = readOnTick(t, s, 0, reads)
	}
	for i, st := range last.States {
		switch {
		case i == 2 && (!st.Stalled || st.Has != 0):
			t.Errorf("GPU 2: stalled %v, fields %b; want stalled with no reading", st.Stalled, st.Has)
		case i != 2 && (st.Stalled || !st.Has.Has(telemetry.GPUUtil)):
			t.Errorf("GPU %d: stalled %v, fields %b; want it sampled", i, st.Stalled, st.Has)
		}
	}
	if n := reads() - calls; n != ticks {
		t.Errorf("GPU 0 read %d times over %d ticks while GPU 2 hung, want one read per tick", n, ticks)
	}

	// The call returns: GPU 2 resumes.
	g.open()
	testutil.Eventually(t, 2*time.Second, "GPU 2 to resume", func() bool {
		st := tick(s).States[2]
		return !st.Stalled && st.Has.Has(telemetry.Temperature)
	})
	if n := strings.Count(logs.String(), "reported stalled"); n != 1 {
		t.Errorf("logged the stall %d times, want once", n)
	}

	// Hung again at shutdown: Run and Close return, and NVML is not shut
	// down under a call in flight. (The waits below only keep a broken
	// shutdown from hanging the test; they are ten times ShutdownWait.)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	g.close()
	testutil.Eventually(t, 2*time.Second, "GPU 2 stalled again", func() bool { return s.Latest().States[2].Stalled })
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return within 2s of cancel with a call in flight")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not return within 2s with a call in flight")
	}
	smu.Lock()
	defer smu.Unlock()
	if shutdowns != 0 {
		t.Error("NVML shut down while a call was in flight")
	}
	if !strings.Contains(logs.String(), "skipping NVML shutdown") {
		t.Errorf("skipped shutdown not logged:\n%s", logs.String())
	}
}

// Without calls in flight, Close shuts NVML down.
func TestCloseShutsDownWhenIdle(t *testing.T) {
	lib, _ := newLib(newFullGPU(0))
	shutdowns := 0
	lib.ShutdownFunc = func() nvml.Return { shutdowns++; return nvml.SUCCESS }
	s, err := Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval})
	if err != nil {
		t.Fatal(err)
	}
	s.Tick()
	if err := s.Close(); err != nil || shutdowns != 1 {
		t.Errorf("Close: %v, %d shutdowns; want NVML shut down once", err, shutdowns)
	}
}

// A GPU that hangs from the first call does not hold up the start: one
// whose identity never comes back is skipped, one whose probe hangs is
// served as stalled and joins when the probe returns.
func TestOpenIsBoundedByHungGPUs(t *testing.T) {
	var identity, probe gate
	defer identity.open()
	defer probe.open()
	devs := []*mock.Device{newFullGPU(0), newFullGPU(1), newFullGPU(2)}
	devs[1].GetUUIDFunc = func() (string, nvml.Return) { identity.pass(); return "GPU-late", nvml.SUCCESS }
	devs[2].GetEncoderCapacityFunc = func(nvml.EncoderType) (int, nvml.Return) { probe.pass(); return 100, nvml.SUCCESS }
	identity.close()
	probe.close()
	lib, _ := newLib(devs...)
	var logs logBuffer
	started := time.Now()
	s, err := Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval, ProbeTimeout: 300 * time.Millisecond, ShutdownWait: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := time.Since(started); d > 3*time.Second {
		t.Errorf("Open took %s with a 300ms probe timeout", d)
	}
	inv := s.Devices()
	if len(inv) != 2 || inv[0].Index != 0 || inv[1].Index != 2 {
		t.Fatalf("inventory %+v, want GPUs 0 and 2 (1 never told its identity)", inv)
	}
	if !strings.Contains(logs.String(), "inventory calls did not return") {
		t.Errorf("skipped GPU not logged:\n%s", logs.String())
	}
	time.Sleep(2*MinInterval + 10*time.Millisecond)
	snap := tick(s)
	if st := snap.States[1]; !st.Stalled || st.Has != 0 {
		t.Errorf("GPU 2 probing: stalled %v, fields %b; want stalled, no reading", st.Stalled, st.Has)
	}
	if st := snap.States[0]; st.Stalled || !st.Has.Has(telemetry.GPUUtil) {
		t.Errorf("GPU 0 not served while GPU 2 probes: %+v", st.Reading)
	}
	probe.open()
	testutil.Eventually(t, 2*time.Second, "GPU 2 to join once its probe returns", func() bool {
		st := tick(s).States[1]
		return !st.Stalled && st.Has.Has(telemetry.GPUUtil)
	})
}

// A tick that takes longer than the interval shows: every interval that
// produced no snapshot is missed, and the rate drops below 1/interval.
func TestSlowTicksShowInCadence(t *testing.T) {
	now := time.Now()
	clock := now
	lib, _ := newLib(newFullGPU(0))
	s := open(t, lib, Config{Interval: 100 * time.Millisecond, Now: func() time.Time { return clock }})
	var snap *telemetry.Snapshot
	for range 11 { // 11 ticks 160 ms apart: 1.6 s, 17 intervals
		snap = tick(s)
		clock = clock.Add(160 * time.Millisecond)
	}
	if snap.Ticks != 11 || snap.MissedTicks != 6 {
		t.Errorf("ticks %d missed %d, want 11 and 6 (17 intervals, 11 snapshots)", snap.Ticks, snap.MissedTicks)
	}
	if snap.Rate < 6.2 || snap.Rate > 6.3 {
		t.Errorf("rate %v Hz, want 6.25 (one tick per 160 ms)", snap.Rate)
	}
}
