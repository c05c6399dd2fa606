package nvml

import (
	"context"
	"maps"
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

// xidWaitTimeout is how long one EventSet.Wait waits for an event. A Wait
// that returns keeps within Close's ShutdownWait, so NVML is shut down
// cleanly; one that never returns is left behind (see watchXID).
const xidWaitTimeout = 500 * time.Millisecond

// registerXID registers d with the sampler's event set for XID critical
// errors. It runs on d's worker after the probe, so a registration that
// does not return holds up that GPU only: its XID errors go unreported
// (Open says so) while the others' are. NVML is thread-safe: workers
// register concurrently with each other and, for a GPU whose probe came
// back late, with the wait loop.
func (s *Sampler) registerXID(d *device) {
	if s.xidSet == nil {
		return
	}
	ret := s.xidSet.Register(d.handle, nvml.EventTypeXidCriticalError)
	switch {
	case ret == nvml.SUCCESS:
		s.xidArmOnce.Do(func() { close(s.xidArmed) })
	case isNotSupported(ret):
		d.log.Debug("XID events not supported")
	default:
		d.log.Warn("registering for XID events failed", "err", ret)
	}
}

// watchXID waits for XID critical errors, on its own goroutine, until ctx
// is done, once a GPU has registered for them. NVML delivers them through
// an event set rather than a value to poll, so they never slow a tick.
// Nothing waits for this goroutine: a Wait that never returns keeps it
// (and NVML, which Close then leaves initialised) but nothing else.
func (s *Sampler) watchXID(ctx context.Context) {
	select {
	case <-s.xidArmed:
	case <-ctx.Done():
		return
	case <-s.quit:
		return
	}
	failing := false
	for ctx.Err() == nil {
		var data nvml.EventData
		var ret nvml.Return
		if !s.call(func() { data, ret = s.xidSet.Wait(uint32(xidWaitTimeout / time.Millisecond)) }) {
			return // NVML is being shut down
		}
		switch ret {
		case nvml.SUCCESS:
			failing = false
			s.recordXID(data)
		case nvml.ERROR_TIMEOUT:
			failing = false
		default:
			if !failing {
				failing = true
				s.log.Warn("waiting for XID events failed", "err", ret)
			}
			// Never spin on a broken event set.
			select {
			case <-ctx.Done():
			case <-s.quit:
				return
			case <-time.After(time.Second):
			}
		}
	}
}

func (s *Sampler) recordXID(data nvml.EventData) {
	if data.EventType&nvml.EventTypeXidCriticalError == 0 {
		return
	}
	for _, w := range s.workers {
		if d := w.d; d.handle == data.Device {
			d.xid.record(data.EventData, s.cfg.XIDRetention)
			d.log.Warn("XID error", "xid", data.EventData)
			return
		}
	}
	s.log.Warn("XID error on an unknown device", "xid", data.EventData)
}
