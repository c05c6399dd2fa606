package nvml

import (
	"context"
	"maps"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// xidState is a device's XID history. The event goroutine replaces it
// whole on each error; the sampler copies the pointer into each snapshot.
type xidState struct {
	p atomic.Pointer[telemetry.XIDCounts]
}

func (x *xidState) record(xid uint64) {
	prev := x.p.Load()
	next := &telemetry.XIDCounts{Last: xid, Counts: map[uint64]uint64{}}
	if prev != nil {
		next.Counts = maps.Clone(prev.Counts)
	}
	next.Counts[xid]++
	x.p.Store(next)
}

// xidWaitTimeout bounds how long shutdown waits for the event goroutine.
const xidWaitTimeout = 500 * time.Millisecond

// watchXID waits for XID critical errors on every device that supports
// them, on its own goroutine, until ctx is done. NVML delivers them through
// an event set rather than a value to poll, so they never slow a tick.
func (s *Sampler) watchXID(ctx context.Context) {
	var set nvml.EventSet
	var ret nvml.Return
	s.call(func() { set, ret = s.lib.EventSetCreate() })
	if ret != nvml.SUCCESS {
		s.log.Warn("XID events unavailable", "err", ret)
		return
	}
	defer s.call(func() { set.Free() })
	registered := 0
	for _, w := range s.workers {
		d := w.d
		var ret nvml.Return
		s.call(func() { ret = d.handle.RegisterEvents(nvml.EventTypeXidCriticalError, set) })
		switch {
		case ret == nvml.SUCCESS:
			registered++
		case isNotSupported(ret):
			d.log.Debug("XID events not supported")
		default:
			d.log.Warn("registering for XID events failed", "err", ret)
		}
	}
	if registered == 0 {
		return
	}
	failing := false
	for ctx.Err() == nil {
		var data nvml.EventData
		var ret nvml.Return
		s.call(func() { data, ret = set.Wait(uint32(xidWaitTimeout / time.Millisecond)) })
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
			d.xid.record(data.EventData)
			d.log.Warn("XID error", "xid", data.EventData)
			return
		}
	}
	s.log.Warn("XID error on an unknown device", "xid", data.EventData)
}
