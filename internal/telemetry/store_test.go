package telemetry

import (
	"context"
	"sync"
	"testing"
	"time"
)

func snapAt(seq uint64) *Snapshot { return &Snapshot{Seq: seq} }

func TestNewStoreSizesHistoryByWindow(t *testing.T) {
	for _, tt := range []struct {
		interval, window time.Duration
		want             int
	}{
		{250 * time.Millisecond, 15 * time.Second, 61},
		{100 * time.Millisecond, 250 * time.Millisecond, 4},
		{100 * time.Millisecond, time.Hour, MaxHistory},
		{0, 0, 1},
	} {
		if got := len(NewStore(tt.interval, tt.window).ring); got != tt.want {
			t.Errorf("NewStore(%s, %s) keeps %d snapshots, want %d", tt.interval, tt.window, got, tt.want)
		}
	}
}

func TestWaitReturnsAtOnceWhenNewer(t *testing.T) {
	st := NewStore(time.Second, 10*time.Second)
	st.Publish(snapAt(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // must not be needed
	if s, err := st.Wait(ctx, 0); err != nil || s.Seq != 1 {
		t.Fatalf("Wait(0) = %v, %v; want snapshot 1 at once", s, err)
	}
	if _, err := st.Wait(ctx, 1); err != context.Canceled {
		t.Fatalf("Wait(1) with nothing newer and a done context: %v, want context.Canceled", err)
	}
}

func TestWaitersWokenByPublish(t *testing.T) {
	var st Store // the zero Store, as the sampler holds it
	const waiters = 8
	got := make(chan uint64, waiters)
	for range waiters {
		go func() {
			s, err := st.Wait(context.Background(), 0)
			if err != nil {
				t.Error(err)
			}
			got <- s.Seq
		}()
	}
	select {
	case seq := <-got:
		t.Fatalf("a waiter returned snapshot %d before any Publish", seq)
	case <-time.After(20 * time.Millisecond):
	}
	st.Publish(snapAt(1))
	for range waiters {
		select {
		case seq := <-got:
			if seq != 1 {
				t.Errorf("waiter woke with %d, want 1", seq)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter was not woken by Publish")
		}
	}
}

// Readers following every publish as fast as they can, while the writer
// publishes without pause: each reader must reach the last snapshot (a
// lost wakeup leaves it waiting forever) and never see one go backwards.
func TestNoLostWakeups(t *testing.T) {
	st := NewStore(time.Millisecond, 8*time.Millisecond)
	const last = 20000
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var seen uint64
			for seen < last {
				s, err := st.Wait(ctx, seen)
				if err != nil {
					t.Errorf("waiting after %d: %v (a lost wakeup)", seen, err)
					return
				}
				if s.Seq <= seen {
					t.Errorf("Wait(%d) returned %d", seen, s.Seq)
					return
				}
				seen = s.Seq
			}
		})
	}
	for seq := uint64(1); seq <= last; seq++ {
		st.Publish(snapAt(seq))
	}
	wg.Wait()
}

func seqs(ss []*Snapshot) []uint64 {
	var out []uint64
	for _, s := range ss {
		out = append(out, s.Seq)
	}
	return out
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A reader that skipped ticks gets the snapshots it missed from the
// history, oldest first, as long as the history holds them; what it no
// longer holds is counted, and the history never grows past its size.
func TestSinceHistory(t *testing.T) {
	st := NewStore(time.Second, 3*time.Second) // 4 snapshots
	for seq := uint64(1); seq <= 10; seq++ {
		st.Publish(snapAt(seq))
	}
	latest := st.Latest()
	for _, tt := range []struct {
		after    uint64
		want     []uint64
		wantLost uint64
	}{
		{9, []uint64{10}, 0},
		{7, []uint64{8, 9, 10}, 0},
		{6, []uint64{7, 8, 9, 10}, 0},
		{2, []uint64{7, 8, 9, 10}, 4}, // 3-6 overwritten
		{0, []uint64{7, 8, 9, 10}, 6},
		{10, nil, 0},
	} {
		got, lost := st.Since(nil, tt.after, latest)
		if !equal(seqs(got), tt.want) || lost != tt.wantLost {
			t.Errorf("Since(%d) = %v, lost %d; want %v, lost %d", tt.after, seqs(got), lost, tt.want, tt.wantLost)
		}
	}
	held := 0
	for i := range st.ring {
		if st.ring[i].Load() != nil {
			held++
		}
	}
	if held != 4 {
		t.Errorf("history holds %d snapshots, want 4", held)
	}

	// A snapshot published after upTo is not included: the reader asked
	// up to the one it is about to use.
	old := st.Latest()
	st.Publish(snapAt(11))
	if got, _ := st.Since(nil, 8, old); !equal(seqs(got), []uint64{9, 10}) {
		t.Errorf("Since(8, up to 10) = %v after 11 was published, want [9 10]", seqs(got))
	}

	// The zero Store has no history: only the latest, the rest lost.
	var zero Store
	for seq := uint64(1); seq <= 5; seq++ {
		zero.Publish(snapAt(seq))
	}
	if got, lost := zero.Since(nil, 1, zero.Latest()); !equal(seqs(got), []uint64{5}) || lost != 3 {
		t.Errorf("zero Store Since(1) = %v, lost %d; want [5], lost 3", seqs(got), lost)
	}
}

// A waiter for an old sequence number returns at once with the latest,
// and the history gives it what it missed.
func TestWaiterForOldSeqGetsHistory(t *testing.T) {
	st := NewStore(250*time.Millisecond, time.Second)
	for seq := uint64(1); seq <= 5; seq++ {
		st.Publish(snapAt(seq))
	}
	s, err := st.Wait(context.Background(), 2)
	if err != nil || s.Seq != 5 {
		t.Fatalf("Wait(2) = %v, %v", s, err)
	}
	if got, lost := st.Since(nil, 2, s); !equal(seqs(got), []uint64{3, 4, 5}) || lost != 0 {
		t.Errorf("Since(2) = %v, lost %d; want [3 4 5]", seqs(got), lost)
	}
}

// The tick's Publish allocates nothing, with or without history.
func TestPublishAllocatesNothing(t *testing.T) {
	snaps := make([]Snapshot, 200)
	for _, st := range []*Store{{}, NewStore(100*time.Millisecond, 15*time.Second)} {
		var seq uint64
		if n := testing.AllocsPerRun(100, func() {
			s := &snaps[seq]
			seq++
			s.Seq = seq
			st.Publish(s)
		}); n != 0 {
			t.Errorf("Publish allocates %v times per call, want 0", n)
		}
	}
}
