package nvml

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// xidState is a device's XID history. The event goroutine replaces it
// whole on each error; the sampler copies the pointer into each snapshot.
type xidState struct {
	p atomic.Pointer[telemetry.XIDCounts]
}

func (x *xidState) record(xid uint64, retention time.Duration) {
	prev := x.p.Load()
	next := &telemetry.XIDCounts{Last: xid, Counts: map[uint64]uint64{}}
	if prev != nil {
		next.Counts = maps.Clone(prev.Counts)
	}
	next.Counts[xid]++
	next.Recent = appendRecentXID(prev, telemetry.XIDEvent{XID: xid, At: time.Now()}, retention)
	x.p.Store(next)
}

// appendRecentXID is prev's recent XIDs, less those older than retention
// and beyond telemetry.MaxRecentXIDs, plus ev. It appends to prev's array
// when it has room: a published record reads only its own length, so
// writing past it is safe, and an XID storm costs no copy per XID (only
// when append grows the array).
func appendRecentXID(prev *telemetry.XIDCounts, ev telemetry.XIDEvent, retention time.Duration) []telemetry.XIDEvent {
	var old []telemetry.XIDEvent
	if prev != nil {
		old = prev.Recent
	}
	cut := ev.At.Add(-retention)
	i := 0
	for i < len(old) && (old[i].At.Before(cut) || len(old)-i >= telemetry.MaxRecentXIDs) {
		i++
	}
	return append(old[i:len(old):cap(old)], ev)
}

// XIDDrainPeriod is about how often the XID events are drained: on the
// first tick of each such stretch (every tick at an interval this long or
// longer). An XID is reported up to this much later than it happened,
// against dcgm-exporter's collect interval (30 s by default); draining
// on every 100 ms tick was a wake-up of NVML's event machinery ten times
// a second for events that come a few times a year.
const XIDDrainPeriod = time.Second

// xidDrainEvery is how many ticks apart the drains are.
func xidDrainEvery(interval time.Duration) uint64 {
	return uint64(max(1, (XIDDrainPeriod+interval-1)/interval))
}

// xidDrainMax bounds the events one drain reads, so an XID storm cannot
// keep the event goroutine in NVML for ever: the rest wait for the next
// tick's drain.
const xidDrainMax = 64

// xidSet is an event set every GPU of one NVML session registers with;
// armed is closed by the first GPU that registers, so the wait loop waits
// only where there is something to wait for. A re-initialisation of NVML
// frees the set and creates another.
type xidSet struct {
	set     EventSet
	session uint64
	armed   chan struct{}
	armOnce sync.Once
}

func newXIDSet(set EventSet, session uint64) *xidSet {
	return &xidSet{set: set, session: session, armed: make(chan struct{})}
}

// registerXID registers d with the sampler's event set for XID critical
// errors. It runs on d's worker after the probe, so a registration that
// does not return holds up that GPU only: its XID errors go unreported
// (Open says so) while the others' are. NVML is thread-safe: workers
// register concurrently with each other and, for a GPU whose probe came
// back late, with the wait loop.
func (s *Sampler) registerXID(d *device) {
	x := s.xid.Load()
	if x == nil || x.session != d.session {
		return // none, or NVML is being initialised again
	}
	ret := x.set.Register(d.handle, nvml.EventTypeXidCriticalError)
	switch {
	case ret == nvml.SUCCESS:
		x.armOnce.Do(func() { close(x.armed) })
	case isNotSupported(ret):
		d.log.Debug("XID events not supported")
	default:
		d.log.Warn("registering for XID events failed", "err", ret)
	}
}

// watchXID reads XID critical errors, on its own goroutine, until ctx is
// done: on the signal of a tick every XIDDrainPeriod (see Tick) it drains the current event set
// with zero-timeout waits, a non-blocking poll of the driver's event
// queue, once a GPU has registered with it. Draining on the tick, rather
// than blocking in nvmlEventSetWait between ticks, keeps every NVML call of
// an interval in one burst: the process sleeps between ticks instead of
// waking for a wait loop of its own (and NVIDIA's mock library, which
// polls inside a blocking wait every 100 ms, makes no wake-ups of its own).
// An XID is reported in the snapshot after the tick that drained it: up
// to XIDDrainPeriod after it happened. Nothing waits for this goroutine: a Wait
// that never returns keeps it (and NVML, which Close then leaves
// initialised) but nothing else, and the ticks go on.
func (s *Sampler) watchXID(ctx context.Context) {
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.quit:
			return
		case <-s.xidPoll:
		}
		x := s.xid.Load()
		if x == nil {
			continue // none, or NVML is being initialised again
		}
		select {
		case <-x.armed:
		default:
			continue // no GPU registered yet
		}
		for range xidDrainMax {
			var data nvml.EventData
			var ret nvml.Return
			if !s.callIn(x.session, func() { data, ret = x.set.Wait(0) }) {
				if s.closing.Load() {
					return // NVML is being shut down
				}
				break // being initialised again: the next tick's set
			}
			if ret == nvml.SUCCESS {
				failing = false
				s.recordXID(data)
				continue
			}
			if ret == nvml.ERROR_TIMEOUT {
				failing = false // nothing (more) queued
			} else if !failing {
				failing = true
				s.log.Warn("waiting for XID events failed", "err", ret)
			}
			break
		}
	}
}

func (s *Sampler) recordXID(data nvml.EventData) {
	if data.EventType&nvml.EventTypeXidCriticalError == 0 {
		return
	}
	for _, w := range s.workers {
		if d := w.cur.Load(); d != nil && d.handle == data.Device {
			w.xid.record(data.EventData, s.cfg.XIDRetention)
			w.log.Warn("XID error", "xid", data.EventData)
			return
		}
	}
	s.log.Warn("XID error on an unknown device", "xid", data.EventData)
}
