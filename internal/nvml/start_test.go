package nvml

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// countShutdowns makes lib count its Shutdown calls.
func countShutdowns(lib *mock.Interface) *atomic.Int32 {
	var n atomic.Int32
	lib.ShutdownFunc = func() nvml.Return { n.Add(1); return nvml.SUCCESS }
	return &n
}

// within fails the test unless f returns within d, and returns how long
// it took.
func within(t *testing.T, d time.Duration, what string, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
	return time.Since(start)
}

// nvmlInit that never returns is an error naming the call, within the
// init bound, and NVML is not shut down under it.
func TestOpenWithHungInitIsAnError(t *testing.T) {
	var g gate
	g.close()
	defer g.open()
	lib, _ := newLib(newFullGPU(0))
	lib.InitFunc = func() nvml.Return { g.pass(); return nvml.SUCCESS }
	shutdowns := countShutdowns(lib)
	var err error
	took := within(t, 3*time.Second, "Open with nvmlInit hung", func() {
		_, err = Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval, InitTimeout: 200 * time.Millisecond, ShutdownWait: 50 * time.Millisecond})
	})
	if !errors.Is(err, ErrNotReturning) || !strings.Contains(err.Error(), "nvmlInit") {
		t.Errorf("err = %v, want ErrNotReturning naming nvmlInit", err)
	}
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("NVML shut down %d times, want none: nvmlInit never returned", n)
	}
	t.Logf("Open gave up on nvmlInit after %s", took.Round(time.Millisecond))
}

// DeviceGetCount that never returns: the same, and the skipped shutdown
// is logged.
func TestOpenWithHungDeviceGetCountIsAnError(t *testing.T) {
	var g gate
	g.close()
	defer g.open()
	lib, _ := newLib(newFullGPU(0))
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { g.pass(); return 1, nvml.SUCCESS }
	shutdowns := countShutdowns(lib)
	var logs logBuffer
	var err error
	within(t, 3*time.Second, "Open with DeviceGetCount hung", func() {
		_, err = Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval, InitTimeout: 200 * time.Millisecond,
			ShutdownWait: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	})
	if !errors.Is(err, ErrNotReturning) || !strings.Contains(err.Error(), "DeviceGetCount") {
		t.Errorf("err = %v, want ErrNotReturning naming DeviceGetCount", err)
	}
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("NVML shut down %d times under a call in flight", n)
	}
	if !strings.Contains(logs.String(), "skipping NVML shutdown") {
		t.Errorf("skipped shutdown not logged:\n%s", logs.String())
	}
}

// A cancelled Open returns at once, whatever it waits on: here a GPU's
// identity that never comes back, with a probe bound far away.
func TestOpenCancelledWhileAGPUHangs(t *testing.T) {
	var g gate
	g.close()
	defer g.open()
	devs := []*mock.Device{newFullGPU(0), newFullGPU(1)}
	devs[1].GetUUIDFunc = func() (string, nvml.Return) { g.pass(); return "GPU-late", nvml.SUCCESS }
	lib, _ := newLib(devs...)
	shutdowns := countShutdowns(lib)
	var logs logBuffer
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	var err error
	took := within(t, 2*time.Second, "a cancelled Open", func() {
		_, err = Open(ctx, asLibrary(lib), Config{Interval: MinInterval, ProbeTimeout: time.Minute, ShutdownWait: 50 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	})
	if !errors.Is(err, ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want ErrInterrupted wrapping context.Canceled", err)
	}
	if took > time.Second {
		t.Errorf("Open returned %s after start, cancelled at 100ms", took)
	}
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("NVML shut down %d times with GPU 1's GetUUID in flight", n)
	}
	if !strings.Contains(logs.String(), "skipping NVML shutdown") {
		t.Errorf("skipped shutdown not logged:\n%s", logs.String())
	}
	// The call returns after all: the abandoned worker does not go on to
	// probe the GPU.
	g.open()
	time.Sleep(50 * time.Millisecond)
	if n := len(devs[1].GetEncoderCapacityCalls()); n != 0 {
		t.Errorf("GPU 1 probed after Open gave up on it (%d probe calls)", n)
	}
}

// Open with a context already done makes no NVML call.
func TestOpenCancelledBeforeStart(t *testing.T) {
	lib, _ := newLib(newFullGPU(0))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Open(ctx, asLibrary(lib), Config{Interval: MinInterval}); !errors.Is(err, ErrInterrupted) {
		t.Errorf("err = %v, want ErrInterrupted", err)
	}
	if n := len(lib.InitCalls()); n != 0 {
		t.Errorf("nvmlInit called %d times with the context done", n)
	}
}

// A GPU whose RegisterEvents never returns holds up that GPU only: the
// others report their XID errors, and Run and Close return within their
// bounds, NVML left initialised under the call.
func TestHungXIDRegistrationStallsOnlyItsGPU(t *testing.T) {
	var g gate
	g.close()
	defer g.open()
	devs := []*mock.Device{newFullGPU(0), newFullGPU(1), newFullGPU(2)}
	devs[1].RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { g.pass(); return nvml.SUCCESS }
	lib, events := newLib(devs...)
	shutdowns := countShutdowns(lib)
	var logs logBuffer
	const probe = 300 * time.Millisecond
	var s *Sampler
	var err error
	within(t, 3*time.Second, "Open with a registration hung", func() {
		s, err = Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval, ProbeTimeout: probe, ShutdownWait: 100 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "XID errors unreported") {
		t.Errorf("the GPU left unregistered is not logged:\n%s", logs.String())
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()

	events <- nvml.EventData{Device: devs[0], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	events <- nvml.EventData{Device: devs[2], EventType: nvml.EventTypeXidCriticalError, EventData: 48}
	testutil.Eventually(t, 3*time.Second, "XIDs of GPUs 0 and 2", func() bool {
		snap := s.Latest()
		if snap == nil {
			return false
		}
		x0, x2 := snap.States[0].XID, snap.States[2].XID
		return x0 != nil && x0.Counts[79] == 1 && x2 != nil && x2.Counts[48] == 1
	})
	testutil.Eventually(t, 3*time.Second, "GPU 1 reported stalled", func() bool { return s.Latest().States[1].Stalled })
	if st := s.Latest().States[0]; st.Stalled || !st.Has.Has(telemetry.GPUUtil) {
		t.Errorf("GPU 0 not sampled while GPU 1's registration hangs")
	}

	cancel()
	within(t, time.Second, "Run after cancel", func() {
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	within(t, time.Second, "Close with a registration in flight", func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("NVML shut down %d times under a registration in flight", n)
	}
}

// An EventSet.Wait that never returns holds up neither Run nor Close.
func TestHungXIDWaitHoldsUpNothing(t *testing.T) {
	var g gate
	g.close()
	defer g.open()
	lib, _ := newLib(newFullGPU(0), newFullGPU(1))
	waiting := make(chan struct{}, 1)
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
				select {
				case waiting <- struct{}{}:
				default:
				}
				g.pass()
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	shutdowns := countShutdowns(lib)
	s, err := Open(t.Context(), asLibrary(lib), Config{Interval: MinInterval, ShutdownWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	select {
	case <-waiting:
	case <-time.After(3 * time.Second):
		t.Fatal("the XID loop never waited")
	}
	testutil.Eventually(t, 2*time.Second, "ticks while Wait hangs", func() bool { snap := s.Latest(); return snap != nil && snap.Seq >= 3 })
	cancel()
	within(t, 500*time.Millisecond, "Run with EventSet.Wait hung", func() { <-ran })
	within(t, time.Second, "Close with EventSet.Wait hung", func() { _ = s.Close() })
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("NVML shut down %d times under a Wait in flight", n)
	}
}
