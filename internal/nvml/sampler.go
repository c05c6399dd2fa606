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

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// MinInterval is the shortest sampling interval accepted. NVML's own
// utilization counters refresh every 1/6 s at best; sampling much faster
// costs CPU and buys nothing (buffered samples are drained anyway).
const MinInterval = 100 * time.Millisecond

// Defaults of the bounds on calls that may not return.
const (
	// DefaultInitTimeout bounds each system-wide call Open cannot do
	// without (nvmlInit, DeviceGetCount). Generous: without persistence
	// mode the driver brings every GPU up inside nvmlInit, which can take
	// seconds per GPU; a call that has not returned by then is an error
	// naming it, never a hang.
	DefaultInitTimeout = 30 * time.Second
	// DefaultProbeTimeout bounds how long Open waits for each GPU's
	// inventory, probe and XID registration, and for the optional
	// system-wide calls (EventSetCreate, SystemGetDriverVersion). A GPU
	// whose identity has not come back by then is skipped; one whose
	// probe has not is served as stalled until it does.
	DefaultProbeTimeout = 5 * time.Second
	// DefaultShutdownWait bounds how long Close waits for NVML calls in
	// flight before it skips nvmlShutdown (which would wait for them too).
	DefaultShutdownWait = time.Second
	// DefaultMIGRescan is how often MIG instances are listed again; a MIG
	// read that answers that its handle is gone triggers a rescan at once.
	DefaultMIGRescan = 10 * time.Second
	// DefaultReinitBackoff and DefaultReinitBackoffMax bound the waits
	// between attempts to bring NVML back after the driver went away
	// (nvmlShutdown, nvmlInit), and between looks for a lost GPU
	// (DeviceGetHandleByUUID): the first wait, doubled after each failed
	// attempt up to the most.
	DefaultReinitBackoff    = time.Second
	DefaultReinitBackoffMax = time.Minute
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

	InitTimeout  time.Duration // see DefaultInitTimeout
	ProbeTimeout time.Duration // see DefaultProbeTimeout
	ShutdownWait time.Duration // see DefaultShutdownWait
	MIGRescan    time.Duration // see DefaultMIGRescan
	// ReinitBackoff and ReinitBackoffMax: see DefaultReinitBackoff. The
	// waits are measured on the ticks' Monotonic clock, so attempts are
	// made on ticks, never between them.
	ReinitBackoff, ReinitBackoffMax time.Duration
	// XIDRetention is how long each GPU's recent XIDs are kept for counts
	// over a window (telemetry.XIDCounts.Recent): at least
	// telemetry.XIDRetention, longer for a longer window.
	XIDRetention time.Duration
	// Store, if set, is where snapshots are published, so readers can
	// wait on it and read its history (telemetry.NewStore); nil keeps
	// only the latest snapshot.
	Store *telemetry.Store
	// Extra, if set, adds another source's values (DCGM's profiling
	// fields) to each whole GPU's reading, on the tick, so that one
	// snapshot holds everything and the sampler stays its only writer.
	Extra ExtraSource
}

// ExtraSource is a source of per-GPU values that NVML does not give
// (telemetry.ProfilingFields). Fill is called on the ticking goroutine,
// once per tick for each whole GPU that is neither lost nor stalled, with
// the reading about to be published: it sets the fields it has a current
// value of and adds them to supported, and leaves the others absent.
// FillInstance does the same for each MIG instance of such a GPU, named
// by its GPU's UUID and its GPU instance ID (a MIG reading has no
// supported set of its own). Both must return at once: they read what
// their source has already fetched, never the source itself.
type ExtraSource interface {
	Fill(uuid string, r *telemetry.Reading, supported *telemetry.FieldSet)
	FillInstance(gpuUUID string, gi int, r *telemetry.Reading)
}

// nvmlFields are the fields read from NVML: every field but those an
// ExtraSource fills.
const nvmlFields = telemetry.AllFields &^ telemetry.ProfilingFields

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
	// closing is set before NVML is shut down: no call starts after it
	// (see enter), so inflight can only fall from then on.
	closing atomic.Bool
	// paused is set while NVML is shut down and initialised again after
	// the driver went away (see reinit): no call starts meanwhile but the
	// re-initialisation's own.
	paused atomic.Bool
	// session counts the times NVML was shut down to be initialised
	// again. Every handle belongs to the session it was opened in, and is
	// never used in another (see device.call).
	session atomic.Uint64
	// life ends when the sampler closes; it bounds the calls made off
	// start-up (the re-initialisation's).
	life       context.Context
	cancelLife context.CancelFunc

	// xid is the event set every GPU registers with for XID errors, nil
	// where NVML has none (or while it is being re-initialised).
	xid atomic.Pointer[xidSet]
	// xidPoll is the tick's signal to the XID goroutine to drain the
	// event set (see watchXID); never blocks the tick.
	xidPoll     chan struct{}
	initialised atomic.Bool // nvmlInit returned SUCCESS: Shutdown is owed

	// rec is the recovery from a driver-wide failure (see recover.go).
	rec recovery

	// driver is the driver's version, "" if NVML did not say; set in Open,
	// read-only after.
	driver string

	// Touched only by the goroutine that ticks.
	seq, ticks, missed uint64
	firstTick          time.Time
	recent             [16]time.Time // start of the latest ticks, a ring
	invGen             []uint64      // inventory generation per worker, as published

	closeOnce sync.Once
}

type doneMsg struct {
	worker int
	seq    uint64
}

// ErrInterrupted means Open's context ended before start-up was over.
// The error wraps the context's error too.
var ErrInterrupted = errors.New("NVML start-up interrupted")

// ErrNotReturning means an NVML call Open cannot do without did not
// return within its bound. The error names the call.
var ErrNotReturning = errors.New("NVML call did not return")

// Open initialises NVML, reads the inventory and probes, once per device
// and field, what the device supports, each GPU on its own worker and
// within cfg.ProbeTimeout. Every call it makes is bounded: nvmlInit and
// DeviceGetCount by cfg.InitTimeout (ErrNotReturning), the rest by
// cfg.ProbeTimeout, and all by ctx: once ctx is done Open returns
// ErrInterrupted within cfg.ShutdownWait, shutting NVML down only if no
// call is in flight by then. The caller must Close the sampler.
func Open(ctx context.Context, lib Library, cfg Config) (*Sampler, error) {
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
	if cfg.InitTimeout <= 0 {
		cfg.InitTimeout = DefaultInitTimeout
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.ShutdownWait <= 0 {
		cfg.ShutdownWait = DefaultShutdownWait
	}
	cfg.XIDRetention = max(cfg.XIDRetention, telemetry.XIDRetention)
	if cfg.MIGRescan <= 0 {
		cfg.MIGRescan = DefaultMIGRescan
	}
	if cfg.ReinitBackoff <= 0 {
		cfg.ReinitBackoff = DefaultReinitBackoff
	}
	if cfg.ReinitBackoffMax <= 0 {
		cfg.ReinitBackoffMax = DefaultReinitBackoffMax
	}
	cfg.ReinitBackoffMax = max(cfg.ReinitBackoffMax, cfg.ReinitBackoff)
	if cfg.Store == nil {
		cfg.Store = &telemetry.Store{}
	}
	s := &Sampler{lib: lib, cfg: cfg, log: cfg.Logger, store: cfg.Store, epoch: time.Now(),
		quit: make(chan struct{}), xidPoll: make(chan struct{}, 1)}
	s.life, s.cancelLife = context.WithCancel(context.Background())
	s.rec = recovery{kick: make(chan time.Duration, 1), backoff: cfg.ReinitBackoff}
	if err := s.open(ctx); err != nil {
		s.closeOnce.Do(func() {
			if s.initialised.Load() {
				_ = s.shutdown()
			} else {
				s.closeWorkers()
			}
		})
		return nil, err
	}
	go s.recoverLoop()
	return s, nil
}

// open is Open's start-up once the config is complete. On error the
// caller shuts NVML down (or skips it, with calls in flight).
func (s *Sampler) open(ctx context.Context) error {
	// Each call has its own results: one given up on may still write them.
	var ret nvml.Return
	if err := s.await(ctx, "nvmlInit", s.cfg.InitTimeout, func() { ret = s.lib.Init() }); err != nil {
		return fmt.Errorf("initialising NVML: %w", err)
	}
	if ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return ErrLibraryNotFound
		}
		return fmt.Errorf("initialising NVML: %w", ret)
	}
	s.initialised.Store(true)
	var n int
	var countRet nvml.Return
	if err := s.await(ctx, "DeviceGetCount", s.cfg.InitTimeout, func() { n, countRet = s.lib.DeviceGetCount() }); err != nil {
		return err
	}
	if countRet != nvml.SUCCESS {
		return nvmlError("DeviceGetCount", countRet)
	}
	// The event set exists before the workers start: each registers its
	// GPU with it after its probe, on its own goroutine.
	var set EventSet
	var setRet nvml.Return
	switch err := s.await(ctx, "EventSetCreate", s.cfg.ProbeTimeout, func() { set, setRet = s.lib.EventSetCreate() }); {
	case errors.Is(err, ErrInterrupted):
		return err
	case err != nil:
		s.log.Warn("XID events unavailable", "err", err)
	case setRet != nvml.SUCCESS:
		s.log.Warn("XID events unavailable", "err", setRet)
	default:
		s.xid.Store(newXIDSet(set, 0))
	}
	s.done = make(chan doneMsg, n)
	ws, err := s.startWorkers(ctx, n)
	if err != nil {
		return err
	}
	s.workers = ws
	if len(s.workers) == 0 {
		return ErrNoDevices
	}
	inv := make([]telemetry.Device, len(s.workers))
	s.invGen = make([]uint64, len(s.workers))
	for i, w := range s.workers {
		inv[i] = w.d.Device
	}
	s.inventory.Store(&inv)
	s.deadline = time.NewTimer(time.Hour)
	s.deadline.Stop()
	var v string
	var vRet nvml.Return
	switch err := s.await(ctx, "SystemGetDriverVersion", s.cfg.ProbeTimeout, func() { v, vRet = s.lib.SystemGetDriverVersion() }); {
	case errors.Is(err, ErrInterrupted):
		return err
	case err != nil || vRet != nvml.SUCCESS:
		s.log.Info("NVML initialised", "driver", "unknown", "gpus", len(s.workers))
	default:
		s.driver = v
		s.log.Info("NVML initialised", "driver", v, "gpus", len(s.workers))
	}
	return nil
}

// await makes a system-wide NVML call, f, that may never return, on a
// goroutine of its own, and waits for it until it returns, ctx is done
// (ErrInterrupted) or timeout passes (ErrNotReturning). A call given up
// on stays counted in flight, so NVML is not shut down under it.
func (s *Sampler) await(ctx context.Context, call string, timeout time.Duration, f func()) error {
	return s.awaitWith(s.enter, ctx, call, timeout, f)
}

// awaitHeld is await for the re-initialisation, which holds NVML paused:
// its calls are refused only once the sampler closes, and end with it.
func (s *Sampler) awaitHeld(call string, timeout time.Duration, f func()) error {
	return s.awaitWith(s.enterHeld, s.life, call, timeout, f)
}

func (s *Sampler) awaitWith(enter func() bool, ctx context.Context, call string, timeout time.Duration, f func()) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w before %s: %w", ErrInterrupted, call, err)
	}
	if !enter() {
		return fmt.Errorf("%w before %s: closing", ErrInterrupted, call)
	}
	done := make(chan struct{})
	go func() {
		f()
		s.exit()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w with %s in flight: %w", ErrInterrupted, call, ctx.Err())
	case <-t.C:
		return fmt.Errorf("%w: %s, after %s", ErrNotReturning, call, timeout)
	}
}

// startWorkers opens every GPU on its own worker and waits, up to the
// probe timeout, for each to know its identity and finish probing. It
// gives up at once, with ErrInterrupted, when ctx is done.
func (s *Sampler) startWorkers(ctx context.Context, n int) ([]*worker, error) {
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
		case <-ctx.Done():
			for _, w := range all {
				w.abandon()
			}
			return nil, fmt.Errorf("%w while probing GPU %d: %w", ErrInterrupted, w.index, ctx.Err())
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
			w.d.log.Warn("GPU probe did not return; served as stalled until it does, its XID errors unreported until then",
				"waited", s.cfg.ProbeTimeout)
		}
		w.slot = len(ws)
		ws = append(ws, w)
	}
	return ws, nil
}

// Devices returns the current inventory. It changes only when MIG
// instances appear or disappear, or a GPU found again (after it was lost,
// or NVML re-initialised) comes back with another identity (its minor
// number, its MIG instances).
func (s *Sampler) Devices() []telemetry.Device { return *s.inventory.Load() }

// DriverVersion returns the driver's version ("550.54.15"), read once at
// Open, or "" if NVML did not answer.
func (s *Sampler) DriverVersion() string { return s.driver }

// Latest returns the latest snapshot, or nil before the first tick.
func (s *Sampler) Latest() *telemetry.Snapshot { return s.store.Latest() }

// Interval returns the sampling interval.
func (s *Sampler) Interval() time.Duration { return s.cfg.Interval }

// Run ticks until ctx is done. The first tick happens at once. It returns
// without waiting for NVML calls, which may not return: Close waits for
// them, within its bound.
func (s *Sampler) Run(ctx context.Context) error {
	go s.watchXID(ctx)
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

// Tick asks every idle worker for a reading, waits for them until most of
// the interval has passed, and publishes a snapshot of what is ready. It
// never waits on a busy worker, nor on a recovery from a driver-wide
// failure, which it only starts (see recover.go); while the driver is
// unavailable it asks no worker and reports every GPU lost. It must not be
// called concurrently with itself; Run calls it.
func (s *Sampler) Tick() {
	start, mono := s.cfg.Now(), s.cfg.Monotonic()
	s.countTick(start)
	s.seq++
	s.ticks++

	down := s.rec.down.Load()
	pending := 0
	for _, w := range s.workers {
		if down || w.busy() {
			continue
		}
		select {
		case w.req <- request{seq: s.seq, now: start, mono: mono}:
			pending++
		default: // a request is still queued: the worker has not taken it
		}
	}
	if !down && (s.seq-1)%xidDrainEvery(s.cfg.Interval) == 0 {
		select {
		case s.xidPoll <- struct{}{}:
		default: // the last drain is still going
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
	up := false
	for i, w := range s.workers {
		gen, dev := w.collect(&snap.States[i], down)
		st := &snap.States[i]
		up = up || !st.Lost
		if s.cfg.Extra != nil && !st.Lost && !st.Stalled {
			s.cfg.Extra.Fill(dev.UUID, &st.Reading, &st.Supported)
			for j := range min(len(st.MIG), len(dev.MIG)) { // aligned: both the worker's
				s.cfg.Extra.FillInstance(dev.UUID, dev.MIG[j].GI, &st.MIG[j])
			}
		}
		if gen != s.invGen[i] {
			if changed == nil {
				changed = append([]telemetry.Device(nil), inv...)
			}
			changed[i] = dev
			s.invGen[i] = gen
		}
	}
	if changed != nil {
		// A new inventory is a new slice, never the old one modified:
		// readers (the pod resolver) tell a change by its identity.
		s.inventory.Store(&changed)
		snap.Devices = changed
	}
	s.superviseRecovery(mono, up)
	snap.NVMLDown, snap.NVMLReinits = down, s.rec.reinits.Load()
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
	expected := uint64(elapsed/s.cfg.Interval) + 1 // #nosec G115 -- elapsed is not negative, checked above
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

// enter and exit bracket every NVML call made off the tick (start-up,
// XID events, the PCIe fallback) and every worker's stretch of reads, so
// Close knows whether any is in flight. enter refuses once NVML is being
// shut down, for good or to be initialised again. The count goes up
// before closing and paused are read, and they are set before the count
// is read (all sequentially consistent), so either the caller sees them
// or shutdown (and reinit) sees the call.
func (s *Sampler) enter() bool {
	s.inflight.Add(1)
	if s.closing.Load() || s.paused.Load() {
		s.inflight.Add(-1)
		return false
	}
	return true
}

// enterHeld is enter for the re-initialisation, which makes its calls
// while it holds NVML paused.
func (s *Sampler) enterHeld() bool {
	s.inflight.Add(1)
	if s.closing.Load() {
		s.inflight.Add(-1)
		return false
	}
	return true
}

func (s *Sampler) exit() { s.inflight.Add(-1) }

// callIn makes f, an NVML call off the tick on something of NVML
// session session (the XID event set), unless NVML is being shut down or
// initialised again, or has been since; it reports whether it did.
func (s *Sampler) callIn(session uint64, f func()) bool {
	if !s.enter() {
		return false
	}
	defer s.exit()
	if s.session.Load() != session {
		return false
	}
	f()
	return true
}

// Close stops the workers and shuts NVML down, unless an NVML call is
// still in flight after cfg.ShutdownWait: nvmlShutdown would then wait
// for it too, so it is skipped, with a log line. Call it after Run has
// returned.
func (s *Sampler) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.shutdown() })
	return err
}

// shutdown stops new NVML calls, waits up to cfg.ShutdownWait for those
// in flight, then frees the XID event set and shuts NVML down; with a
// call still in flight it skips both, with a log line.
func (s *Sampler) shutdown() error {
	s.closing.Store(true)
	s.closeWorkers()
	deadline := time.Now().Add(s.cfg.ShutdownWait)
	for s.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.inflight.Load(); n > 0 {
		s.log.Warn("NVML calls still in flight; skipping NVML shutdown", "calls", n, "waited", s.cfg.ShutdownWait)
		return nil
	}
	// A re-initialisation that gave up left no set, and NVML shut down.
	if x := s.xid.Swap(nil); x != nil {
		x.set.Free()
	}
	if !s.initialised.Swap(false) {
		return nil
	}
	if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("shutting NVML down: %w", ret)
	}
	return nil
}

func (s *Sampler) closeWorkers() {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	s.cancelLife()
}

// IsLibraryNotFound reports whether err means NVML could not be loaded.
func IsLibraryNotFound(err error) bool { return errors.Is(err, ErrLibraryNotFound) }
