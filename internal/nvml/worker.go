package nvml

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// worker owns one GPU: every NVML call on that GPU's handles is made on
// its goroutine, so a call that never returns (a GPU falling off the bus
// can do that) holds up that GPU only. The tick hands it requests through
// a one-slot channel, never blocking, and takes its latest reading from a
// slot under a mutex held only to copy.
type worker struct {
	s     *Sampler
	index int // NVML index
	slot  int // position in the snapshot
	// d is the GPU's current device, the worker goroutine's own (and
	// start-up's, before probed is closed): a GPU found again gets a new
	// one. cur is the same for the XID goroutine, which matches events
	// to handles.
	d   *device
	cur atomic.Pointer[device]
	log *slog.Logger // set before identified is closed
	// xid is the GPU's XID history, kept across its devices. The event
	// goroutine replaces it whole on each error; the tick copies the
	// pointer into each snapshot.
	xid xidState
	req chan request

	// since is when the current read began, in nanoseconds after
	// s.epoch plus one; 0 while idle.
	since     atomic.Int64
	abandoned atomic.Bool
	// answered is the seq of the latest request answered: what a test
	// that drives the ticks waits on.
	answered atomic.Uint64

	// identified is closed once the GPU's identity is known (or failed),
	// probed once its start-up is over, probed or not.
	identified, probed chan struct{}
	openErr            error // set before identified is closed

	mu      sync.Mutex
	result  telemetry.DeviceState // the latest completed reading
	hasData bool
	fresh   bool // result not yet taken by a tick: its NewSamples are new
	// ident is the GPU's identity and MIG instances as the worker last
	// read them; identGen counts its changes (MIG reconfigured, the GPU
	// found again), so the tick replaces the inventory only then.
	ident    telemetry.Device
	identGen uint64

	stalledLogged bool // touched only by the ticking goroutine

	// scratch is the reading being taken, on the worker's goroutine;
	// kept here so a reading allocates nothing of its own.
	scratch telemetry.DeviceState
	// retryAt is when (Config.Monotonic) a lost GPU is looked for again,
	// backoff the wait after that; touched only by the worker goroutine.
	retryAt, backoff time.Duration
	// session is the NVML session the worker last acted in (Sampler.session).
	session uint64
}

// errClosing is a worker's start-up error when the sampler closed first.
var errClosing = errors.New("sampler closed during start-up")

type request struct {
	seq  uint64
	now  time.Time
	mono time.Duration // Config.Monotonic at now
}

func newWorker(s *Sampler, index int) *worker {
	return &worker{
		s:          s,
		index:      index,
		req:        make(chan request, 1),
		identified: make(chan struct{}),
		probed:     make(chan struct{}),
	}
}

// begin and end bracket every stretch of NVML calls of the worker.
// begin refuses once NVML is being shut down.
func (w *worker) begin() bool {
	if !w.s.enter() {
		return false
	}
	w.since.Store(int64(time.Since(w.s.epoch)) + 1)
	return true
}

func (w *worker) end() {
	w.since.Store(0)
	w.s.exit()
}

func (w *worker) busy() bool { return w.since.Load() != 0 }

// inFlightFor is how long the current read has been running; 0 if idle.
func (w *worker) inFlightFor() time.Duration {
	since := w.since.Load()
	if since == 0 {
		return 0
	}
	return time.Since(w.s.epoch) - time.Duration(since-1)
}

// abandon tells a worker whose identity never came back to exit when (if)
// it does.
func (w *worker) abandon() { w.abandoned.Store(true) }

// run opens, probes and registers the GPU for XID events, then reads it
// on request until the sampler closes.
func (w *worker) run() {
	if !w.begin() {
		w.openErr = errClosing
		close(w.identified)
		close(w.probed)
		return
	}
	session := w.s.session.Load()
	d, err := openDevice(w.s.lib, w.index, w.s.log)
	w.end()
	w.d, w.openErr = d, err
	if d != nil {
		d.session, w.session, w.log = session, session, d.log
	}
	close(w.identified)
	if err != nil || w.abandoned.Load() {
		close(w.probed) // nothing more to wait for
		return
	}
	w.adopt(d, nil)
	if !w.begin() {
		close(w.probed)
		return
	}
	w.s.probe(d)
	if !d.lost {
		w.s.registerXID(d)
	}
	w.end()
	w.mu.Lock()
	w.ident, w.identGen = d.Device, 0
	w.mu.Unlock()
	w.cur.Store(d)
	if d.lost {
		w.lost(d, "GPU lost at start; looked for again with backoff")
	}
	close(w.probed)
	for {
		select {
		case <-w.s.quit:
			return
		case r := <-w.req:
			w.handle(r)
		}
	}
}

// adopt makes d the worker's: its sample rings, and the counters since
// start of the device it replaces (old, nil at start), so that they never
// go back.
func (w *worker) adopt(d, old *device) {
	d.worker = w
	for e := range d.engines {
		d.engines[e].ring = newRing(ringCapacity(w.s.cfg.Window))
	}
	if old != nil {
		d.errors, d.migErrors, d.proc.errors = old.errors, old.migErrors, old.proc.errors
	}
	d.lastMIGScan = time.Now()
}

// handle answers a tick's request: it reads the GPU, or, for a GPU lost
// (or whose handle is of an NVML session since shut down), reports it lost
// at once and, when due, looks for it again (see reacquire).
func (w *worker) handle(r request) {
	if !w.begin() {
		w.ack(r) // NVML is being shut down or re-initialised: nothing read
		return
	}
	d := w.d
	if session := w.s.session.Load(); session != w.session {
		// NVML was initialised again (the driver went away, every GPU
		// was reported lost): this handle is of the old session. Open
		// the GPU again now, lost or not.
		w.session = session
		if !d.lost {
			d.retire(nvml.ERROR_UNINITIALIZED)
		}
		w.retryAt, w.backoff = 0, 0
	}
	if d.lost {
		w.store(d.lostState(), false)
		w.ack(r)
		if r.mono >= w.retryAt {
			w.reacquire(r.mono)
		}
		w.end()
		return
	}
	st := &w.scratch
	*st = telemetry.DeviceState{}
	migChanged := false
	if d.migStale || time.Since(d.lastMIGScan) >= w.s.cfg.MIGRescan {
		migChanged = d.rescanMIG()
	}
	d.kickSlow(r.mono)
	d.sample(r.now, r.mono, w.s.cfg.Window, st)
	w.end()
	if d.lost {
		w.backoff = w.s.cfg.ReinitBackoff
		w.retryAt = r.mono + w.backoff
		w.lost(d, "GPU lost; looked for again with backoff")
	}
	w.store(*st, migChanged)
	w.ack(r)
}

// lost logs the loss of the GPU, once per loss; an answer that the driver
// is gone also asks the sampler to check whether it is gone for every GPU.
func (w *worker) lost(d *device, msg string) {
	w.log.Error(msg, "err", d.lostRet, "backoff", w.s.cfg.ReinitBackoff)
	if driverGone(d.lostRet) {
		w.s.rec.suspect.Store(true)
	}
}

// store puts a reading in the slot; with migChanged, the device's MIG
// instances are new with it, so the two are published together.
func (w *worker) store(st telemetry.DeviceState, migChanged bool) {
	w.mu.Lock()
	w.result, w.hasData, w.fresh = st, true, true
	if migChanged {
		w.ident.MIG = w.d.MIG
		w.identGen++
	}
	w.mu.Unlock()
}

// ack tells the tick that its request was answered.
func (w *worker) ack(r request) {
	w.answered.Store(r.seq)
	select {
	case w.s.done <- doneMsg{worker: w.slot, seq: r.seq}:
	default: // never happens: one message per request, room for all
	}
}

// collect fills st from the worker's latest reading, for a tick. A GPU
// whose read has been in flight for more than StallIntervals intervals is
// stalled: its reading is left out rather than served stale. So is a lost
// GPU's, and, with down (NVML answers that the driver is unavailable),
// every GPU is reported lost. It returns the worker's identity of the GPU
// and its generation.
func (w *worker) collect(st *telemetry.DeviceState, down bool) (uint64, telemetry.Device) {
	w.mu.Lock()
	has := w.hasData
	if has {
		*st = w.result
		if !w.fresh {
			// Already published: its samples are not new any more.
			st.NewSamples = [telemetry.NumEngines][]telemetry.UtilSample{}
		}
		w.fresh = false
	}
	gen, dev := w.identGen, w.ident
	w.mu.Unlock()
	st.XID = w.xid.p.Load()
	st.Lost = st.Lost || down
	// A lost GPU is lost, however long the call that looks for it takes.
	stalled := !st.Lost && w.inFlightFor() > telemetry.StallIntervals*w.s.cfg.Interval
	if stalled || !has || st.Lost {
		st.Reading = telemetry.Reading{}
		st.MIG = nil
		st.Windows = [telemetry.NumEngines]telemetry.Window{}
		st.NewSamples = [telemetry.NumEngines][]telemetry.UtilSample{}
		st.Processes = nil
	}
	if stalled != w.stalledLogged {
		w.stalledLogged = stalled
		if stalled {
			w.log.Error("GPU read not returning; reported stalled", "in_flight", w.inFlightFor().Round(time.Millisecond))
		} else if !st.Lost {
			w.log.Info("GPU read returned; no longer stalled")
		}
	}
	st.Stalled = stalled
	return gen, dev
}
