package nvml

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The driver comes back (recover.go), over node (node_test.go): a mock
// NVML whose driver is reloaded or unloaded and whose GPUs fall off the
// bus and come back. Time is a fake clock the tests move tick by tick;
// each step waits for what its tick started, so the attempts fall on known
// ticks however loaded the machine.

// driverConfig: a clock the test moves, backoff from 1 s doubling to 4 s,
// and an interval long enough that a tick never gives up on a worker that
// answers (its budget is 3/4 of it, in real time), however loaded the
// machine: what a tick sees is then what its workers answered.
func driverConfig(c *fakeClock, logs *logBuffer) Config {
	return Config{Interval: 10 * time.Second, Now: c.now, ReinitBackoff: time.Second, ReinitBackoffMax: 4 * time.Second,
		ShutdownWait: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))}
}

// step moves the clock by d, ticks, and waits until the work the tick
// started is over: each worker's answer and its look for a lost GPU (but
// those of except, whose call hangs), and the recovery step.
func step(t *testing.T, s *Sampler, c *fakeClock, d time.Duration, except ...int) *telemetry.Snapshot {
	t.Helper()
	c.advance(d)
	s.Tick()
	snap := s.Latest()
	testutil.Eventually(t, 5*time.Second, "the tick's work to be over", func() bool {
		if s.rec.busy.Load() {
			return false
		}
		for i, w := range s.workers {
			if slices.Contains(except, i) {
				continue
			}
			if w.busy() || (!snap.NVMLDown && w.answered.Load() < snap.Seq) {
				return false
			}
		}
		return true
	})
	return snap
}

// live reports whether GPU i is sampled: not lost, not stalled, with values.
func live(snap *telemetry.Snapshot, i int) bool {
	st := snap.States[i]
	return !st.Lost && !st.Stalled && st.Has.Has(telemetry.GPUUtil) && st.Has.Has(telemetry.Temperature)
}

func allLive(snap *telemetry.Snapshot) bool {
	for i := range snap.States {
		if !live(snap, i) {
			return false
		}
	}
	return true
}

// noStaleValues fails the test if a GPU reported lost carries values:
// while it is gone, its series are absent, never stale, never zeros.
func noStaleValues(t *testing.T, snap *telemetry.Snapshot) {
	t.Helper()
	for i, st := range snap.States {
		if st.Lost && (st.Has != 0 || len(st.MIG) != 0 || st.Processes != nil || st.Windows != [telemetry.NumEngines]telemetry.Window{}) {
			t.Errorf("tick %d: GPU %d lost, but with values (fields %v)", snap.Seq, i, fieldNames(st.Has))
		}
	}
}

// stepUntil steps until cond holds, at most n times; every snapshot on
// the way is checked for stale values.
func stepUntil(t *testing.T, s *Sampler, c *fakeClock, d time.Duration, n int, what string, cond func(*telemetry.Snapshot) bool) *telemetry.Snapshot {
	t.Helper()
	for range n {
		snap := step(t, s, c, d)
		noStaleValues(t, snap)
		if cond(snap) {
			return snap
		}
	}
	t.Fatalf("%s: not after %d ticks of %s", what, n, d)
	return nil
}

func uuids(snap *telemetry.Snapshot) []string {
	var out []string
	for _, d := range snap.Devices {
		out = append(out, d.UUID)
	}
	return out
}

// A driver reloaded under the agent: every GPU answers UNINITIALIZED, and
// the handles of before stay dead. NVML is shut down and initialised
// again, each GPU is opened again by UUID on its worker, probed and
// registered for XID errors with a new event set, and its series resume
// under the same UUIDs; no old handle is used after the new Init.
func TestDriverReloadIsRecovered(t *testing.T) {
	c := newFakeClock()
	nd := newNode(3)
	nd.clock = c.elapsed
	var logs logBuffer
	s := open(t, nd.lib, driverConfig(c, &logs))
	before := step(t, s, c, 0)
	if !allLive(before) {
		t.Fatal("not sampled before the reload")
	}

	nd.reload()
	snap := step(t, s, c, 250*time.Millisecond)
	for i, st := range snap.States {
		if !st.Lost {
			t.Errorf("GPU %d not reported lost on the tick the driver answered UNINITIALIZED", i)
		}
	}
	noStaleValues(t, snap)
	// Re-initialised within that tick's recovery step, each GPU is opened
	// again on the next tick, whatever its backoff, and read on the one
	// after.
	snap = stepUntil(t, s, c, 250*time.Millisecond, 2, "every GPU sampled again", allLive)

	if got, want := uuids(snap), uuids(before); !slices.Equal(got, want) {
		t.Errorf("GPUs %v after the reload, want the same UUIDs %v", got, want)
	}
	if snap.NVMLDown || snap.NVMLReinits != 1 {
		t.Errorf("NVML down %v, re-initialised %d times; want up, once", snap.NVMLDown, snap.NVMLReinits)
	}
	if n, sd := len(nd.lib.InitCalls()), len(nd.lib.ShutdownCalls()); n != 2 || sd != 1 {
		t.Errorf("nvmlInit %d times, nvmlShutdown %d; want 2 and 1 (start, then the re-initialisation)", n, sd)
	}
	if n := len(nd.lib.EventSetCreateCalls()); n != 2 {
		t.Errorf("%d event sets created, want a new one after the re-initialisation", n)
	}
	for i := range 3 {
		if n := len(nd.handle(i).RegisterEventsCalls()); n != 1 {
			t.Errorf("GPU %d's new handle registered for XID events %d times, want 1", i, n)
		}
	}
	if n := count(nd, func() int { return nd.stale }); n != 0 {
		t.Errorf("%d calls through a handle of before the reload after NVML was initialised again", n)
	}
	for msg, want := range map[string]int{"NVML driver unavailable": 1, "NVML re-initialised": 1, "GPU back": 3} {
		if n := strings.Count(logs.String(), msg); n != want {
			t.Errorf("%q logged %d times, want %d", msg, n, want)
		}
	}

	// XID errors come through the new event set, from the new handles.
	// The test ticks itself: Run's ticker (at this test's 10 s interval)
	// could publish its one tick before the XID arrives.
	ctx, cancel := context.WithCancel(t.Context())
	watched := make(chan struct{})
	go func() { s.watchXID(ctx); close(watched) }()
	nd.events <- nvml.EventData{Device: nd.handle(1), EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	testutil.Eventually(t, 5*time.Second, "GPU 1's XID through the new event set", func() bool {
		s.Tick()
		x := s.Latest().States[1].XID
		return x != nil && x.Counts[79] == 1
	})
	cancel()
	select {
	case <-watched:
	case <-time.After(10 * time.Second):
		t.Error("the XID loop did not end with its context")
	}
}

// The driver unloaded for a while: nvmlInit answers DRIVER_NOT_LOADED, and
// is tried again after 1, 2, 4 and 4 s (the backoff, capped); the driver
// loaded again, the next attempt brings every GPU back. nvmlShutdown is
// called once, by the first attempt: after it NVML is not initialised.
func TestDriverNotLoadedBacksOff(t *testing.T) {
	c := newFakeClock()
	nd := newNode(2)
	nd.clock = c.elapsed
	var logs logBuffer
	s := open(t, nd.lib, driverConfig(c, &logs))
	step(t, s, c, 0)

	nd.unload()
	const tick = 250 * time.Millisecond
	attempts := func() int { return count(nd, func() int { return len(nd.initAt) - 1 }) }
	snap := stepUntil(t, s, c, tick, 80, "every GPU back after the driver is loaded again", func(snap *telemetry.Snapshot) bool {
		for i, st := range snap.States {
			if !st.Lost && attempts() < 5 {
				t.Fatalf("tick %d: GPU %d not lost while the driver is unloaded", snap.Seq, i)
			}
		}
		if attempts() == 4 {
			nd.load()
		}
		return allLive(snap)
	})
	initAt := count(nd, func() []time.Duration { return slices.Clone(nd.initAt[1:]) })
	var gaps []time.Duration
	for i := 1; i < len(initAt); i++ {
		gaps = append(gaps, initAt[i]-initAt[i-1])
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}; !slices.Equal(gaps, want) {
		t.Errorf("nvmlInit tried again after %v, want %v", gaps, want)
	}
	if n := len(nd.lib.ShutdownCalls()); n != 1 {
		t.Errorf("nvmlShutdown called %d times, want once (NVML is not initialised after it)", n)
	}
	if snap.NVMLReinits != 1 || snap.NVMLDown {
		t.Errorf("re-initialised %d times, down %v; want once, up", snap.NVMLReinits, snap.NVMLDown)
	}
	if n := strings.Count(logs.String(), "re-initialising NVML failed"); n != 1 {
		t.Errorf("the failed attempts logged %d times, want once (the same error each time)", n)
	}
}

// One GPU falls off the bus (GPU_IS_LOST, then unbound: NVML no longer
// finds it), then is bound again under a new handle: it is reported lost,
// looked for with backoff, and sampled again under its UUID. NVML is not
// re-initialised, and the other GPUs are read on every tick throughout.
func TestLostGPUComesBackAlone(t *testing.T) {
	c := newFakeClock()
	nd := newNode(3)
	nd.clock = c.elapsed
	var logs logBuffer
	s := open(t, nd.lib, driverConfig(c, &logs))
	step(t, s, c, 0)
	reads := func(i int) int { return len(nd.handle(i).GetUtilizationRatesCalls()) }
	others := func(snap *telemetry.Snapshot) {
		for _, i := range []int{0, 2} {
			if !live(snap, i) {
				t.Fatalf("tick %d: GPU %d not sampled while GPU 1 is lost", snap.Seq, i)
			}
		}
	}

	nd.lose(1, true)
	read0 := reads(0)
	const ticks = 16 // 4 s: looks at 1 and 3 s
	for range ticks {
		snap := step(t, s, c, 250*time.Millisecond)
		noStaleValues(t, snap)
		others(snap)
		if st := snap.States[1]; !st.Lost {
			t.Fatalf("tick %d: GPU 1 not reported lost", snap.Seq)
		}
	}
	if n := reads(0) - read0; n != ticks {
		t.Errorf("GPU 0 read %d times over %d ticks while GPU 1 was lost, want once a tick", n, ticks)
	}
	if n := count(nd, func() int { return len(nd.lookups) }); n != 2 {
		t.Errorf("GPU 1 looked for %d times in 4 s, want 2 (after 1 s, then 2 s more)", n)
	}

	nd.bind(1)
	snap := stepUntil(t, s, c, 250*time.Millisecond, 20, "GPU 1 back", func(snap *telemetry.Snapshot) bool {
		others(snap)
		return live(snap, 1)
	})
	if snap.Devices[1].UUID != gpuUUID(1) {
		t.Errorf("GPU 1 back as %s", snap.Devices[1].UUID)
	}
	if n := len(nd.handle(1).RegisterEventsCalls()); n != 1 {
		t.Errorf("GPU 1's new handle registered for XID events %d times, want 1", n)
	}
	if n, sd := len(nd.lib.InitCalls()), len(nd.lib.ShutdownCalls()); n != 1 || sd != 0 || snap.NVMLReinits != 0 {
		t.Errorf("nvmlInit %d, nvmlShutdown %d, re-initialised %d: one lost GPU must not re-initialise NVML", n, sd, snap.NVMLReinits)
	}
	for msg, want := range map[string]int{"GPU lost": 1, "GPU back": 1} {
		if n := strings.Count(logs.String(), msg); n != want {
			t.Errorf("%q logged %d times, want %d", msg, n, want)
		}
	}
}

// A GPU that never comes back (its handle, which NVML still hands out,
// answers GPU_IS_LOST) stays lost, with no value, and is looked for
// after 1, 2, then every 4 s (the backoff, capped): between two looks no
// call reaches it, however often the sampler ticks.
func TestGPUThatNeverComesBackStaysLost(t *testing.T) {
	c := newFakeClock()
	nd := newNode(2)
	nd.clock = c.elapsed
	var logs logBuffer
	s := open(t, nd.lib, driverConfig(c, &logs))
	step(t, s, c, 0)
	h := nd.handle(1)
	calls := func() int { return count(nd, func() int { return nd.calls[h] }) }
	looks := func() int { return count(nd, func() int { return len(nd.lookups) }) }

	nd.lose(1, false)
	lostAt := c.elapsed() + 250*time.Millisecond
	for range 100 { // 25 s
		beforeCalls, beforeLooks := calls(), looks()
		snap := step(t, s, c, 250*time.Millisecond)
		noStaleValues(t, snap)
		if !snap.States[1].Lost || !live(snap, 0) {
			t.Fatalf("tick %d: GPU 1 lost %v, GPU 0 sampled %v; want lost and sampled", snap.Seq, snap.States[1].Lost, live(snap, 0))
		}
		if looks() == beforeLooks && calls() != beforeCalls && c.elapsed() > lostAt {
			t.Fatalf("tick %d: %d calls to the lost GPU without a look for it", snap.Seq, calls()-beforeCalls)
		}
	}
	var at []time.Duration
	for _, l := range count(nd, func() []time.Duration { return slices.Clone(nd.lookups) }) {
		at = append(at, l-lostAt)
	}
	want := []time.Duration{1, 3, 7, 11, 15, 19, 23}
	for i := range want {
		want[i] *= time.Second
	}
	if !slices.Equal(at, want) {
		t.Errorf("looked for after %v, want %v", at, want)
	}
	if n := strings.Count(logs.String(), "GPU lost"); n != 1 {
		t.Errorf("the loss logged %d times, want once", n)
	}
}

// The driver reloaded while one GPU's call hangs: NVML is not shut down
// under it. Each attempt waits for calls in flight (ShutdownWait) and is
// put off, logged once; every GPU is reported lost meanwhile. Once the call
// returns, the next attempt re-initialises NVML and every GPU comes back.
func TestReinitWaitsForAHungCall(t *testing.T) {
	var g gate
	defer g.open()
	c := newFakeClock()
	nd := newNode(3)
	nd.clock = c.elapsed
	var gated atomic.Bool
	nd.build = func(i int, d *mock.Device) {
		if i == 0 && gated.CompareAndSwap(false, true) { // the first handle only
			d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { g.pass(); return 55, nvml.SUCCESS }
		}
	}
	var logs logBuffer
	cfg := driverConfig(c, &logs)
	cfg.Interval = time.Second // the tick whose read hangs waits 3/4 of it
	s := open(t, nd.lib, cfg)
	step(t, s, c, 0)

	g.close()
	step(t, s, c, 250*time.Millisecond, 0)
	testutil.Eventually(t, 5*time.Second, "GPU 0's read to hang", func() bool { return s.workers[0].busy() })
	nd.reload()
	for range 8 { // attempts after 0, 1, 3 and 7 s
		snap := step(t, s, c, time.Second, 0)
		noStaleValues(t, snap)
		if n := len(nd.lib.ShutdownCalls()); n != 0 {
			t.Fatalf("tick %d: NVML shut down under GPU 0's call in flight", snap.Seq)
		}
	}
	if snap := s.Latest(); !snap.NVMLDown {
		t.Error("NVML not reported down while it cannot be re-initialised")
	}
	if n := len(nd.lib.InitCalls()); n != 1 {
		t.Errorf("nvmlInit called %d times with a call in flight", n)
	}
	if n := strings.Count(logs.String(), "not shutting NVML down under them"); n != 1 {
		t.Errorf("the put-off attempts logged %d times, want once", n)
	}

	g.open()
	snap := stepUntil(t, s, c, time.Second, 10, "every GPU back once the call returned", allLive)
	if n, sd := len(nd.lib.InitCalls()), len(nd.lib.ShutdownCalls()); n != 2 || sd != 1 || snap.NVMLReinits != 1 {
		t.Errorf("nvmlInit %d, nvmlShutdown %d, re-initialised %d; want 2, 1, 1", n, sd, snap.NVMLReinits)
	}
}

// Close during a recovery returns within its bound: with nvmlInit in
// flight it leaves NVML alone (the re-initialisation already shut it down
// once); while the driver is still unloaded, there is nothing to shut down.
func TestCloseDuringRecovery(t *testing.T) {
	t.Run("nvmlInit hangs", func(t *testing.T) {
		var g gate
		defer g.open()
		c := newFakeClock()
		nd := newNode(2)
		var logs logBuffer
		cfg := driverConfig(c, &logs)
		cfg.InitTimeout = time.Minute
		s := open(t, nd.lib, cfg)
		step(t, s, c, 0)
		g.close()
		nd.gateInit(&g)
		nd.reload()
		testutil.Eventually(t, 5*time.Second, "nvmlInit called again", func() bool {
			if len(nd.lib.InitCalls()) == 2 {
				return true
			}
			c.advance(250 * time.Millisecond)
			s.Tick() // asks no worker once NVML is down, waits on nothing
			return false
		})
		within(t, 2*time.Second, "Close with nvmlInit in flight", func() { _ = s.Close() })
		if n := len(nd.lib.ShutdownCalls()); n != 1 {
			t.Errorf("nvmlShutdown called %d times, want once (the re-initialisation's, before nvmlInit)", n)
		}
		if !strings.Contains(logs.String(), "skipping NVML shutdown") {
			t.Errorf("skipped shutdown not logged:\n%s", logs.String())
		}
	})
	t.Run("driver unloaded", func(t *testing.T) {
		c := newFakeClock()
		nd := newNode(2)
		var logs logBuffer
		s := open(t, nd.lib, driverConfig(c, &logs))
		step(t, s, c, 0)
		nd.unload()
		for range 3 {
			step(t, s, c, time.Second)
		}
		within(t, 2*time.Second, "Close while NVML cannot be initialised", func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		if n := len(nd.lib.ShutdownCalls()); n != 1 {
			t.Errorf("nvmlShutdown called %d times, want once (the first attempt's; NVML is not initialised after it)", n)
		}
	})
}

// The simulated node's GPUs can be lost and come back too.
func TestSimulatedGPULostAndBack(t *testing.T) {
	c := newFakeClock()
	l := sim.New(sim.Options{Devices: 2, Seed: 3})
	var logs logBuffer
	s := open(t, l, driverConfig(c, &logs))
	step(t, s, c, 0)
	l.Devices()[1].Lose()
	if snap := step(t, s, c, 250*time.Millisecond); !snap.States[1].Lost || !live(snap, 0) {
		t.Fatal("simulated GPU 1 not lost alone")
	}
	l.Devices()[1].Restore()
	stepUntil(t, s, c, 250*time.Millisecond, 20, "simulated GPU 1 back", func(snap *telemetry.Snapshot) bool {
		return live(snap, 0) && live(snap, 1)
	})
}

// What keeps NVML's calls and its re-initialisation apart: a device's
// goroutines make no call while NVML is paused or closing, once the device
// is retired, or once NVML has been shut down since it was opened; nor
// does the XID loop on an event set of an older session.
func TestCallsNeverCrossASession(t *testing.T) {
	nd := newNode(1)
	s := open(t, nd.lib, Config{})
	d := s.workers[0].d
	made := 0
	call := func() bool { return d.call(func() { made++ }) }
	if !call() || !s.callIn(0, func() { made++ }) || made != 2 {
		t.Fatal("calls refused in a live session")
	}
	s.paused.Store(true)
	if call() || s.callIn(0, func() { made++ }) {
		t.Error("a call made while NVML was paused for re-initialisation")
	}
	s.paused.Store(false)
	s.session.Add(1)
	if call() || s.callIn(0, func() { made++ }) {
		t.Error("a call made on a handle of an NVML session since shut down")
	}
	if !s.callIn(1, func() { made++ }) {
		t.Error("a call refused in the new session")
	}
	if n := s.inflight.Load(); n != 0 {
		t.Errorf("%d calls counted in flight after refusals", n)
	}
}
