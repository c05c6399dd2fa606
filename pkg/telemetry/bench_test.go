package telemetry

import (
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
