package telemetry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkBuildAndPublishSnapshot8GPUs builds the snapshot of one tick on
// 8 GPUs (every field set, full utilization windows) and publishes it
// while readers load the latest one, as scrapes and stream subscribers do.
// Two allocations per tick: the snapshot and its per-device states. They
// are immutable once published and a reader may hold an old one for as
// long as its scrape lasts, so reusing them would need reference counting,
// which costs the readers more than the allocation costs the writer.
func BenchmarkBuildAndPublishSnapshot8GPUs(b *testing.B) {
	var prev DeviceState
	for f := Field(0); f < NumFields; f++ {
		prev.Set(f, float64(f))
	}
	prev.Supported = AllFields
	for e := range NumEngines {
		prev.Windows[e] = Window{Count: 90, Max: 90, Mean: 45}
	}
	devices := make([]Device, 8)

	var store Store
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if s := store.Latest(); s != nil && len(s.States) != 8 {
					panic("torn snapshot")
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	b.ReportAllocs()
	var seq uint64
	for b.Loop() {
		seq++
		snap := &Snapshot{Seq: seq, Time: time.Now(), Devices: devices, States: make([]DeviceState, len(devices)), Window: 15 * time.Second}
		for i := range snap.States {
			snap.States[i] = prev
		}
		store.Publish(snap)
	}
	close(stop)
	wg.Wait()
}

// BenchmarkPublish is the store's part of a tick, with nobody waiting
// and with 64 subscribers waiting for every snapshot (each woken, each
// re-arming the wake-up channel). The one allocation is the benchmark's
// own snapshot; Publish allocates nothing (TestPublishAllocatesNothing):
// the wake-up channel is made by the waiters.
func BenchmarkPublish(b *testing.B) {
	for _, waiters := range []int{0, 64} {
		b.Run(fmt.Sprintf("waiters=%d", waiters), func(b *testing.B) {
			st := NewStore(100*time.Millisecond, 15*time.Second)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range waiters {
				wg.Go(func() {
					var seen uint64
					for {
						s, err := st.Wait(ctx, seen)
						if err != nil {
							return
						}
						seen = s.Seq
					}
				})
			}
			b.ReportAllocs()
			var seq uint64
			for b.Loop() {
				seq++
				st.Publish(&Snapshot{Seq: seq})
			}
			b.StopTimer()
			cancel()
			wg.Wait()
		})
	}
}
