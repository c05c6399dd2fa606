package nvml

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The driver comes back. Two faults end a GPU's handles, and the sampler
// recovers from both without stopping anything else:
//
//   - One GPU lost (ERROR_GPU_IS_LOST: it fell off the bus, or was
//     unbound): its worker reports it lost and, on ticks, looks for it again
//     by UUID (DeviceGetHandleByUUID), with backoff (Config.ReinitBackoff,
//     doubling to Config.ReinitBackoffMax), on its own goroutine, so a look
//     that hangs holds up that GPU only. Found and answering, it is probed
//     again (fields, MIG instances, XID registration) and sampled; a UUID
//     no longer there stays lost. The other GPUs are not touched.
//   - The driver gone (ERROR_UNINITIALIZED after a driver reload,
//     ERROR_DRIVER_NOT_LOADED while it is unloaded; NVML answers every
//     call so): a GPU that answers so asks the recoverer, a goroutine of
//     the sampler's, to check with a system-wide call (DeviceGetCount). If
//     that fails too, every GPU is reported lost and NVML is shut down and
//     initialised again, with the same backoff, once no NVML call is in
//     flight (a call that hangs postpones it: nvmlShutdown would wait for
//     it too, or pull the library from under it). Then every worker opens
//     its GPU again by UUID, as above, and a new XID event set is made.
//
// The tick never waits for any of it: it only starts a recovery step when
// one is due, on the recoverer, and reads what it left in atomics. Handles
// belong to the NVML session they were opened in (Sampler.session, bumped
// when NVML is shut down to be initialised again): a goroutine holding one
// of an older session never calls NVML with it (see device.call).

// errCallsInFlight means NVML was not re-initialised because calls were in
// flight: shutting it down would race them.
var errCallsInFlight = errors.New("NVML calls in flight")

// recovery is the state of the recovery from a driver-wide failure. The
// atomics are shared by the tick and the recoverer; the rest is the
// recoverer's own.
type recovery struct {
	// kick carries the tick's Config.Monotonic time to the recoverer for
	// one step; busy is set while a step is queued or running, so the
	// tick never blocks on kick.
	kick chan time.Duration
	busy atomic.Bool
	// due is the Config.Monotonic time before which no step starts.
	due atomic.Int64
	// suspect is set by a GPU that answered that the driver is gone.
	suspect atomic.Bool
	// down is set while NVML answers that the driver is unavailable and
	// is being initialised again: every GPU is reported lost.
	down atomic.Bool
	// healthy is set by the tick when a GPU answers: the backoff starts
	// over at the next failure (not after a re-initialisation that no GPU
	// survived, which would otherwise re-initialise at every tick).
	healthy atomic.Bool
	reinits atomic.Uint64 // successful re-initialisations

	backoff  time.Duration
	attempts int
	since    time.Duration // when the driver went (Config.Monotonic)
	lastErr  string        // of the last failed attempt, for once-per-change logs
}

// superviseRecovery starts a recovery step on the recoverer when one is
// due: a check when a GPU answered that the driver is gone, an attempt to
// re-initialise NVML while it is down. It runs on the tick, never blocks,
// and up says whether any GPU answered this tick.
func (s *Sampler) superviseRecovery(mono time.Duration, up bool) {
	r := &s.rec
	if up && !r.healthy.Load() {
		r.healthy.Store(true)
	}
	if r.busy.Load() || mono < time.Duration(r.due.Load()) {
		return
	}
	if !r.down.Load() && !r.suspect.Swap(false) {
		return
	}
	r.busy.Store(true)
	select {
	case r.kick <- mono:
	default: // never happens: busy is cleared only once kick is empty
		r.busy.Store(false)
	}
}

// recoverLoop makes the recovery steps the tick asks for, one at a time,
// until the sampler closes.
func (s *Sampler) recoverLoop() {
	for {
		select {
		case <-s.quit:
			return
		case mono := <-s.rec.kick:
			s.recoverStep(mono)
			s.rec.busy.Store(false)
		}
	}
}

// recoverStep checks whether the driver is gone, when it was not known to
// be, and if it is makes one attempt to initialise NVML again; mono is the
// tick's time, from which the next attempt is due.
func (s *Sampler) recoverStep(mono time.Duration) {
	r := &s.rec
	if r.healthy.Swap(false) {
		r.backoff = s.cfg.ReinitBackoff
	}
	if !r.down.Load() {
		var ret nvml.Return
		if err := s.await(s.life, "DeviceGetCount", s.cfg.ProbeTimeout, func() { _, ret = s.lib.DeviceGetCount() }); err != nil {
			if !errors.Is(err, ErrInterrupted) {
				s.log.Warn("NVML not answering whether the driver is there; lost GPUs are looked for one by one", "err", err)
			}
			return
		}
		if ret == nvml.SUCCESS {
			s.log.Debug("NVML answers; lost GPUs are looked for one by one")
			return
		}
		r.down.Store(true)
		r.since, r.attempts, r.lastErr = mono, 0, ""
		s.log.Error("NVML driver unavailable; every GPU reported lost, re-initialising NVML with backoff",
			"err", ret, "backoff", r.backoff)
	}
	r.attempts++
	err := s.reinit()
	switch {
	case err == nil:
		r.reinits.Add(1)
		r.down.Store(false)
		// No new attempt before the backoff, whatever the GPUs answer
		// meanwhile: a driver that fails again at once is not re-initialised
		// at every tick.
		r.due.Store(int64(mono + r.backoff))
		r.backoff = min(2*r.backoff, s.cfg.ReinitBackoffMax)
		s.log.Info("NVML re-initialised; opening every GPU again", "attempts", r.attempts, "down_for", mono-r.since)
	case errors.Is(err, ErrInterrupted):
		// Closing: nothing more to do.
	default:
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			s.log.Warn("re-initialising NVML failed; trying again with backoff", "err", err, "attempt", r.attempts, "backoff", r.backoff)
		} else {
			s.log.Debug("re-initialising NVML failed", "err", err, "attempt", r.attempts, "backoff", r.backoff)
		}
		r.due.Store(int64(mono + r.backoff))
		r.backoff = min(2*r.backoff, s.cfg.ReinitBackoffMax)
	}
}

// reinit shuts NVML down and initialises it again, with a new XID event
// set. It holds NVML paused throughout, so no other call starts; it
// starts only once none is in flight, waiting up to Config.ShutdownWait
// (errCallsInFlight after that: a call that hangs postpones it, as it
// does Close's nvmlShutdown). The tick asks no worker meanwhile.
func (s *Sampler) reinit() error {
	s.paused.Store(true)
	defer s.paused.Store(false)
	deadline := time.Now().Add(s.cfg.ShutdownWait)
	for s.inflight.Load() > 0 {
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%w; not shutting NVML down under them", errCallsInFlight)
		}
		select {
		case <-s.quit:
			return ErrInterrupted
		case <-time.After(5 * time.Millisecond):
		}
	}
	// From here on no handle of the old session is used again: the
	// devices' goroutines and the XID loop see the session change.
	s.session.Add(1)
	if err := s.awaitHeld("nvmlShutdown", s.cfg.ProbeTimeout, func() {
		if x := s.xid.Swap(nil); x != nil {
			x.set.Free() // the driver is gone: it fails, and frees what it can
		}
		if s.initialised.Swap(false) {
			s.lib.Shutdown()
		}
	}); err != nil {
		return err
	}
	var ret nvml.Return
	if err := s.awaitHeld("nvmlInit", s.cfg.InitTimeout, func() {
		if ret = s.lib.Init(); ret == nvml.SUCCESS {
			s.initialised.Store(true)
		}
	}); err != nil {
		return fmt.Errorf("initialising NVML: %w", err)
	}
	if ret != nvml.SUCCESS {
		return fmt.Errorf("initialising NVML: %w", ret)
	}
	var set EventSet
	var setRet nvml.Return
	switch err := s.awaitHeld("EventSetCreate", s.cfg.ProbeTimeout, func() { set, setRet = s.lib.EventSetCreate() }); {
	case errors.Is(err, ErrInterrupted):
		return err
	case err != nil:
		s.log.Warn("XID events unavailable after re-initialising NVML", "err", err)
	case setRet != nvml.SUCCESS:
		s.log.Warn("XID events unavailable after re-initialising NVML", "err", setRet)
	default:
		s.xid.Store(newXIDSet(set, s.session.Load()))
	}
	return nil
}

// reacquire looks for the worker's lost GPU again by its UUID, on the
// worker's goroutine, within its stretch of calls: found and answering,
// it is probed again and registered for XID events on a new device, which
// the next tick samples. Otherwise it stays lost and is looked for again
// after the backoff. mono is the tick's time.
func (w *worker) reacquire(mono time.Duration) {
	s, old := w.s, w.d
	fail := func(err error) {
		var ret nvml.Return
		if errors.As(err, &ret) && driverGone(ret) {
			s.rec.suspect.Store(true)
		}
		w.backoff = min(max(2*w.backoff, s.cfg.ReinitBackoff), s.cfg.ReinitBackoffMax)
		w.retryAt = mono + w.backoff
		w.log.Debug("lost GPU not back", "err", err, "next_in", w.backoff)
	}
	h, ret := s.lib.DeviceGetHandleByUUID(old.UUID)
	if ret != nvml.SUCCESS {
		fail(nvmlError("DeviceGetHandleByUUID", ret))
		return
	}
	session := s.session.Load() // unchanged within the stretch
	d, err := newDevice(h, old.Index, s.log)
	if err != nil {
		fail(err)
		return
	}
	if d.UUID != old.UUID {
		fail(fmt.Errorf("DeviceGetHandleByUUID(%s) answered %s", old.UUID, d.UUID))
		return
	}
	d.session, d.log = session, w.log
	w.adopt(d, old)
	s.probe(d)
	if d.lost {
		fail(nvmlError("probe", d.lostRet))
		return
	}
	s.registerXID(d)
	w.d = d
	w.cur.Store(d)
	w.retryAt, w.backoff = 0, 0
	// No reading yet, and nothing lost: the next tick samples it.
	st := d.lostState()
	st.Lost = false
	w.mu.Lock()
	w.result, w.hasData, w.fresh = st, true, false
	if !sameDevice(w.ident, d.Device) {
		w.ident = d.Device
		w.identGen++
	}
	w.mu.Unlock()
	w.log.Info("GPU back; sampled again", "lost", old.lostRet)
}
