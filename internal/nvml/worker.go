package nvml

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

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
	d     *device
	req   chan request

	// since is when the current read began, in nanoseconds after
	// s.epoch plus one; 0 while idle.
	since     atomic.Int64
	abandoned atomic.Bool

	// identified is closed once the GPU's identity is known (or failed),
	// probed once its start-up is over, probed or not.
	identified, probed chan struct{}
	openErr            error // set before identified is closed

	mu      sync.Mutex
	result  telemetry.DeviceState // the latest completed reading
	hasData bool
	fresh   bool // result not yet taken by a tick: its NewSamples are new
	migs    []telemetry.MIGDevice
	migGen  uint64

	stalledLogged bool // touched only by the ticking goroutine

	// scratch is the reading being taken, on the worker's goroutine;
	// kept here so a reading allocates nothing of its own.
	scratch telemetry.DeviceState
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
	d, err := openDevice(w.s.lib, w.index, w.s.log)
	w.end()
	w.d, w.openErr = d, err
	close(w.identified)
	if err != nil || w.abandoned.Load() {
		close(w.probed) // nothing more to wait for
		return
	}
	d.worker = w
	for e := range d.engines {
		d.engines[e].ring = newRing(ringCapacity(w.s.cfg.Window))
	}
	if !w.begin() {
		close(w.probed)
		return
	}
	w.s.probe(d)
	w.s.registerXID(d)
	w.end()
	w.mu.Lock()
	w.migs, w.migGen = d.MIG, 0
	w.mu.Unlock()
	d.lastMIGScan = time.Now()
	close(w.probed)
	for {
		select {
		case <-w.s.quit:
			return
		case r := <-w.req:
			w.sample(r)
		}
	}
}

// sample reads the device once and puts the reading in the slot. MIG
// instances are listed again first when due, so the reading and the MIG
// inventory published with it always match.
func (w *worker) sample(r request) {
	st := &w.scratch
	*st = telemetry.DeviceState{}
	d := w.d
	if !w.begin() {
		return // NVML is being shut down: no tick waits for this
	}
	migChanged := false
	if d.migStale || time.Since(d.lastMIGScan) >= w.s.cfg.MIGRescan {
		migChanged = d.rescanMIG()
	}
	d.sample(r.now, r.mono, w.s.cfg.Window, st)
	w.end()
	w.mu.Lock()
	w.result, w.hasData, w.fresh = *st, true, true
	if migChanged {
		w.migs = d.MIG
		w.migGen++
	}
	w.mu.Unlock()
	select {
	case w.s.done <- doneMsg{worker: w.slot, seq: r.seq}:
	default: // never happens: one message per request, room for all
	}
}

// collect fills st from the worker's latest reading, for a tick. A GPU
// whose read has been in flight for more than StallIntervals intervals is
// stalled: its reading is left out rather than served stale. It returns
// the worker's MIG inventory and its generation.
func (w *worker) collect(st *telemetry.DeviceState) (uint64, []telemetry.MIGDevice) {
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
	gen, migs := w.migGen, w.migs
	w.mu.Unlock()
	if w.d != nil {
		st.XID = w.d.xid.p.Load()
	}
	stalled := w.inFlightFor() > telemetry.StallIntervals*w.s.cfg.Interval
	if stalled || !has {
		st.Reading = telemetry.Reading{}
		st.MIG = nil
		st.Windows = [telemetry.NumEngines]telemetry.Window{}
		st.NewSamples = [telemetry.NumEngines][]telemetry.UtilSample{}
		st.Processes = nil
	}
	if stalled != w.stalledLogged {
		w.stalledLogged = stalled
		if stalled {
			w.d.log.Error("GPU read not returning; reported stalled", "in_flight", w.inFlightFor().Round(time.Millisecond))
		} else {
			w.d.log.Info("GPU read returned; no longer stalled")
		}
	}
	st.Stalled = stalled
	return gen, migs
}
