package nvml

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// MinInterval is the shortest sampling interval accepted. NVML's own
// utilization counters refresh every 1/6 s at best; sampling much faster
// costs CPU and buys nothing (buffered samples are drained anyway).
const MinInterval = 100 * time.Millisecond

// Defaults of the bounds on calls that may not return.
const (
	// DefaultProbeTimeout bounds how long Open waits for each GPU's
	// inventory and probe. A GPU whose identity has not come back by then
	// is skipped; one whose probe has not is served as stalled until it
	// does.
	DefaultProbeTimeout = 5 * time.Second
	// DefaultShutdownWait bounds how long Close waits for NVML calls in
	// flight before it skips nvmlShutdown (which would wait for them too).
	DefaultShutdownWait = time.Second
	// DefaultMIGRescan is how often MIG instances are listed again; a MIG
	// read that answers that its handle is gone triggers a rescan at once.
	DefaultMIGRescan = 10 * time.Second
)

// Config configures a Sampler.
type Config struct {
	Interval time.Duration // time between ticks; at least MinInterval
	Window   time.Duration // span of the utilization windows
	Logger   *slog.Logger
	// TickObserver, if set, is told each tick's duration in seconds (a
	// Prometheus histogram, say), so every tick counts, not only the
	// ones a scrape happens to see.
	TickObserver interface{ Observe(float64) }
	// Now is the clock; tests replace it.
	Now func() time.Time
	// Monotonic is a clock that never steps, which tells a wall-clock
	// step (Now) apart from time passing. Nil means the runtime's
	// monotonic clock when Now is nil, and Now itself otherwise (a test's
	// clock then never steps unless the test says so).
	Monotonic func() time.Duration

	ProbeTimeout time.Duration // see DefaultProbeTimeout
	ShutdownWait time.Duration // see DefaultShutdownWait
	MIGRescan    time.Duration // see DefaultMIGRescan
	// Store, if set, is where snapshots are published, so readers can
	// wait on it and read its history (telemetry.NewStore); nil keeps
	// only the latest snapshot.
	Store *telemetry.Store
	// OnInventoryChange, if set, is called (from the ticking goroutine)
	// with the new inventory whenever MIG instances appear or disappear,
	// so the pod resolver can follow.
	OnInventoryChange func([]telemetry.Device)
}

// Sampler owns NVML: it reads every GPU at a fixed interval and publishes
// one immutable snapshot per tick. Each GPU is read by its own worker
// goroutine, so a call that never returns holds up that GPU only; the tick
// waits for the workers until a deadline and publishes whatever is ready.
// Readers call Latest and never wait for it, nor it for them.
type Sampler struct {
	lib     Library
	cfg     Config
	log     *slog.Logger
	workers []*worker
	store   *telemetry.Store
	epoch   time.Time // monotonic origin of the workers' in-flight stamps

	// inventory is the current static inventory, replaced (never
	// modified) when MIG instances change.
	inventory atomic.Pointer[[]telemetry.Device]

	// done carries a worker's index when it finished a tick's request.
	done     chan doneMsg
	deadline *time.Timer
	quit     chan struct{}
	inflight atomic.Int64 // NVML calls in flight on any goroutine

	// Touched only by the goroutine that ticks.
	seq, ticks, missed uint64
	firstTick          time.Time
	recent             [16]time.Time // start of the latest ticks, a ring
	migGen             []uint64      // MIG inventory generation per worker, as published

	closeOnce sync.Once
	bg        sync.WaitGroup // goroutines other than the workers (XID)
}

type doneMsg struct {
	worker int
	seq    uint64
}

// Open initialises NVML, reads the inventory and probes, once per device
// and field, what the device supports, each GPU on its own worker and
// within cfg.ProbeTimeout. The caller must Close the sampler.
func Open(lib Library, cfg Config) (*Sampler, error) {
	if cfg.Interval < MinInterval {
		return nil, fmt.Errorf("sampling interval %s is below the minimum %s", cfg.Interval, MinInterval)
	}
	if cfg.Window <= 0 {
		cfg.Window = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Monotonic == nil {
		if cfg.Now == nil {
			start := time.Now()
			cfg.Monotonic = func() time.Duration { return time.Since(start) }
		} else {
			now, start := cfg.Now, cfg.Now()
			cfg.Monotonic = func() time.Duration { return now().Sub(start) }
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.ShutdownWait <= 0 {
		cfg.ShutdownWait = DefaultShutdownWait
	}
	if cfg.MIGRescan <= 0 {
		cfg.MIGRescan = DefaultMIGRescan
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, ErrLibraryNotFound
		}
		return nil, fmt.Errorf("initialising NVML: %w", ret)
	}
	if cfg.Store == nil {
		cfg.Store = &telemetry.Store{}
	}
	s := &Sampler{lib: lib, cfg: cfg, log: cfg.Logger, store: cfg.Store, epoch: time.Now(), quit: make(chan struct{})}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		lib.Shutdown()
		return nil, nvmlError("DeviceGetCount", ret)
	}
	s.done = make(chan doneMsg, n)
	s.workers = s.startWorkers(n)
	if len(s.workers) == 0 {
		// Nothing is in flight that matters: the workers that did not
		// answer are skipped, and Shutdown must not wait for them.
		s.closeWorkers()
		if s.inflight.Load() == 0 {
			lib.Shutdown()
		}
		return nil, ErrNoDevices
	}
	inv := make([]telemetry.Device, len(s.workers))
	s.migGen = make([]uint64, len(s.workers))
	for i, w := range s.workers {
		inv[i] = w.d.Device
	}
	s.inventory.Store(&inv)
	s.deadline = time.NewTimer(time.Hour)
	s.deadline.Stop()
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		s.log.Info("NVML initialised", "driver", v, "gpus", len(s.workers))
	}
	return s, nil
}

// startWorkers opens every GPU on its own worker and waits, up to the
// probe timeout, for each to know its identity and finish probing.
func (s *Sampler) startWorkers(n int) []*worker {
	all := make([]*worker, n)
	for i := range all {
		all[i] = newWorker(s, i)
		go all[i].run()
	}
	deadline := time.NewTimer(s.cfg.ProbeTimeout)
	defer deadline.Stop()
	timedOut := false
	for _, w := range all {
		if timedOut {
			break
		}
		select {
		case <-w.probed:
		case <-deadline.C:
			timedOut = true
		}
	}
	var ws []*worker
	for _, w := range all {
		select {
		case <-w.identified:
		default:
			w.abandon()
			s.log.Warn("skipping GPU whose inventory calls did not return", "index", w.index, "waited", s.cfg.ProbeTimeout)
			continue
		}
		if w.openErr != nil {
			s.log.Warn("skipping GPU that cannot be opened", "index", w.index, "err", w.openErr)
			continue
		}
		select {
		case <-w.probed:
		default:
			w.d.log.Warn("GPU probe did not return; served as stalled until it does", "waited", s.cfg.ProbeTimeout)
		}
		w.slot = len(ws)
		ws = append(ws, w)
	}
	return ws
}

// Devices returns the current inventory. It changes only when MIG
// instances appear or disappear.
func (s *Sampler) Devices() []telemetry.Device { return *s.inventory.Load() }

// Latest returns the latest snapshot, or nil before the first tick.
func (s *Sampler) Latest() *telemetry.Snapshot { return s.store.Latest() }

// Interval returns the sampling interval.
func (s *Sampler) Interval() time.Duration { return s.cfg.Interval }

// Run ticks until ctx is done. The first tick happens at once. It returns
// without waiting for NVML calls that do not return.
func (s *Sampler) Run(ctx context.Context) error {
	s.bg.Go(func() { s.watchXID(ctx) })
	defer s.waitBackground()

	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	s.Tick()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.Tick()
		}
	}
}

// waitBackground waits a bounded time for the XID goroutine: it may be
// inside an NVML call that never returns.
func (s *Sampler) waitBackground() {
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(xidWaitTimeout + s.cfg.ShutdownWait):
		s.log.Warn("XID event goroutine did not stop; leaving it")
	}
}

// Tick asks every idle worker for a reading, waits for them until most of
// the interval has passed, and publishes a snapshot of what is ready. It
// never waits on a busy worker. It must not be called concurrently with
// itself; Run calls it.
func (s *Sampler) Tick() {
	start, mono := s.cfg.Now(), s.cfg.Monotonic()
	s.countTick(start)
	s.seq++
	s.ticks++

	pending := 0
	for _, w := range s.workers {
		if w.busy() {
			continue
		}
		select {
		case w.req <- request{seq: s.seq, now: start, mono: mono}:
			pending++
		default: // a request is still queued: the worker has not taken it
		}
	}
	s.deadline.Reset(s.tickBudget())
wait:
	for pending > 0 {
		select {
		case m := <-s.done:
			if m.seq == s.seq {
				pending--
			}
		case <-s.deadline.C:
			break wait
		}
	}
	s.deadline.Stop()

	inv := s.Devices()
	snap := &telemetry.Snapshot{
		Seq:     s.seq,
		Time:    start,
		Devices: inv,
		States:  make([]telemetry.DeviceState, len(s.workers)),
		Window:  s.cfg.Window,
	}
	var changed []telemetry.Device
	for i, w := range s.workers {
		gen, migs := w.collect(&snap.States[i])
		if gen != s.migGen[i] {
			if changed == nil {
				changed = append([]telemetry.Device(nil), inv...)
			}
			changed[i].MIG = migs
			s.migGen[i] = gen
		}
	}
	if changed != nil {
		s.inventory.Store(&changed)
		snap.Devices = changed
		if s.cfg.OnInventoryChange != nil {
			s.cfg.OnInventoryChange(changed)
		}
	}
	snap.Duration = s.cfg.Now().Sub(start)
	snap.Ticks, snap.MissedTicks, snap.Rate = s.ticks, s.missed, s.rate()
	s.store.Publish(snap)
	if s.cfg.TickObserver != nil {
		s.cfg.TickObserver.Observe(snap.Duration.Seconds())
	}
}

// tickBudget is how long a tick waits for its workers: most of an
// interval, so a slow GPU delays its own reading, never the next tick.
func (s *Sampler) tickBudget() time.Duration { return s.cfg.Interval * 3 / 4 }

// countTick counts the intervals since the first tick that produced no
// snapshot: expected ticks are one per whole interval elapsed.
func (s *Sampler) countTick(start time.Time) {
	s.recent[s.ticks%uint64(len(s.recent))] = start
	if s.firstTick.IsZero() {
		s.firstTick = start
		return
	}
	elapsed := start.Sub(s.firstTick)
	if elapsed < 0 {
		return
	}
	expected := uint64(elapsed/s.cfg.Interval) + 1
	if taken := s.ticks + 1; expected > taken+s.missed {
		s.missed = expected - taken
	}
}

// rate is the achieved snapshots per second over the recent ticks.
func (s *Sampler) rate() float64 {
	n := min(s.ticks, uint64(len(s.recent)))
	if n < 2 {
		return 0
	}
	newest := s.recent[(s.ticks-1)%uint64(len(s.recent))]
	oldest := s.recent[(s.ticks-n)%uint64(len(s.recent))]
	span := newest.Sub(oldest).Seconds()
	if span <= 0 {
		return 0
	}
	return float64(n-1) / span
}

// call brackets an NVML call made outside a worker's read (XID events,
// the PCIe fallback), so Close knows whether any is in flight.
func (s *Sampler) call(f func()) {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	f()
}

// Close stops the workers and shuts NVML down, unless an NVML call is
// still in flight after cfg.ShutdownWait: nvmlShutdown would then wait
// for it too, so it is skipped, with a log line. Call it after Run has
// returned.
func (s *Sampler) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closeWorkers()
		deadline := time.Now().Add(s.cfg.ShutdownWait)
		for s.inflight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := s.inflight.Load(); n > 0 {
			s.log.Warn("NVML calls still in flight; skipping NVML shutdown", "calls", n, "waited", s.cfg.ShutdownWait)
			return
		}
		if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
			err = fmt.Errorf("shutting NVML down: %w", ret)
		}
	})
	return err
}

func (s *Sampler) closeWorkers() {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
}

// IsLibraryNotFound reports whether err means NVML could not be loaded.
func IsLibraryNotFound(err error) bool { return errors.Is(err, ErrLibraryNotFound) }
