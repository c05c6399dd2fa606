package nvml

import (
	"context"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// The recent XIDs keep the retention's (an hour, or longer), at most
// MaxRecentXIDs of them, and a record once published never changes.
func TestAppendRecentXID(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	prev := &telemetry.XIDCounts{Recent: []telemetry.XIDEvent{
		{XID: 13, At: t0.Add(-2 * time.Hour)}, {XID: 31, At: t0.Add(-30 * time.Minute)},
	}}
	got := appendRecentXID(prev, telemetry.XIDEvent{XID: 79, At: t0}, telemetry.XIDRetention)
	if len(got) != 2 || got[0].XID != 31 || got[1].XID != 79 {
		t.Errorf("recent %v, want 31 then 79 (13 is older than an hour)", got)
	}
	// The old record still reads what it held.
	if len(prev.Recent) != 2 || prev.Recent[0].XID != 13 || prev.Recent[1].XID != 31 {
		t.Errorf("the old record changed: %v", prev.Recent)
	}
	// A longer retention keeps the two-hour-old one.
	if got := appendRecentXID(prev, telemetry.XIDEvent{XID: 79, At: t0}, 3*time.Hour); len(got) != 3 {
		t.Errorf("3h retention: %v", got)
	}
	if got := appendRecentXID(nil, telemetry.XIDEvent{XID: 48, At: t0}, telemetry.XIDRetention); len(got) != 1 || got[0].XID != 48 {
		t.Errorf("first XID: %v", got)
	}
	full := &telemetry.XIDCounts{}
	for i := range telemetry.MaxRecentXIDs {
		full.Recent = append(full.Recent, telemetry.XIDEvent{XID: uint64(i), At: t0})
	}
	got = appendRecentXID(full, telemetry.XIDEvent{XID: 99999, At: t0}, telemetry.XIDRetention)
	if len(got) != telemetry.MaxRecentXIDs || got[0].XID != 1 || got[len(got)-1].XID != 99999 {
		t.Errorf("at the cap: %d kept, first %d, last %d", len(got), got[0].XID, got[len(got)-1].XID)
	}
	// CountSince counts from the newest back.
	x := &telemetry.XIDCounts{Recent: got}
	if n := x.CountSince(t0)[99999]; n != 1 {
		t.Errorf("CountSince: %d", n)
	}
}

// The event set is drained on the first tick of each XIDDrainPeriod: every
// tenth tick at 100 ms, every fourth at 250 or 300 ms, every tick from a
// second up.
func TestXIDDrainCadence(t *testing.T) {
	for interval, want := range map[time.Duration]uint64{
		100 * time.Millisecond: 10, 250 * time.Millisecond: 4, 300 * time.Millisecond: 4,
		time.Second: 1, 10 * time.Second: 1,
	} {
		if got := xidDrainEvery(interval); got != want {
			t.Errorf("xidDrainEvery(%v) = %d, want %d", interval, got, want)
		}
	}
	lib, _ := newLib(newFullGPU(0))
	waits := make(chan struct{}, 64)
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				if ms != 0 {
					t.Errorf("Wait(%d): a drain waits for nothing", ms)
				}
				waits <- struct{}{}
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	s := open(t, lib, Config{Interval: MinInterval})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go s.watchXID(ctx)
	// 21 ticks at 100 ms: drains on the 1st, the 11th and the 21st.
	for n := 1; n <= 21; n++ {
		tick(s)
		if n%10 == 1 {
			select {
			case <-waits:
			case <-time.After(5 * time.Second):
				t.Fatalf("tick %d: no drain", n)
			}
		}
	}
	cancel()
	if n := len(waits); n != 0 {
		t.Errorf("%d more drains over 21 ticks at 100 ms, want 3 in all", n)
	}
}
