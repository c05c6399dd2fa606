package main

import (
	"math"
	"testing"
	"time"
)

func testPacing() pacing {
	return pacing{
		Bitrate: 200_000, Frame: 20 * time.Millisecond,
		PhaseMin: time.Second, PhaseMax: 4 * time.Second,
		Loads: []float64{1}, Skips: []float64{0}, Gaps: []time.Duration{0},
		GapProb: 0.05, Seed: 1,
	}
}

// plan runs a pacer over n packets from epoch.
func plan(p *pacer, epoch time.Time, frame time.Duration, n int) []packet {
	out := make([]packet, n)
	for i := range out {
		out[i] = p.plan(epoch.Add(time.Duration(i) * frame))
	}
	return out
}

func TestPacerSteadyWithoutGaps(t *testing.T) {
	pc := testPacing()
	epoch := time.Unix(0, 0)
	for i, pk := range plan(newPacer(pc, epoch, 0), epoch, pc.Frame, 1000) {
		if due := epoch.Add(time.Duration(i) * pc.Frame); !pk.SendAt.Equal(due) {
			t.Fatalf("packet %d: sent at %s, due %s: want no hold without gaps", i, pk.SendAt, due)
		}
		if pk.Skip {
			t.Fatalf("packet %d skipped with no skip probability", i)
		}
	}
}

func TestPacerHoldsReleaseBursts(t *testing.T) {
	pc := testPacing()
	pc.Gaps = []time.Duration{200 * time.Millisecond}
	pc.GapProb = 0.2
	epoch := time.Unix(0, 0)
	pks := plan(newPacer(pc, epoch, 0), epoch, pc.Frame, 5000)
	held, bursts := 0, 0
	for i, pk := range pks {
		due := epoch.Add(time.Duration(i) * pc.Frame)
		late := pk.SendAt.Sub(due)
		if late < 0 || late > 200*time.Millisecond {
			t.Fatalf("packet %d: sent %s after it was due, want 0 to the longest gap", i, late)
		}
		if i > 0 && pk.SendAt.Before(pks[i-1].SendAt) {
			t.Fatalf("packet %d: sent at %s, before packet %d (%s)", i, pk.SendAt, i-1, pks[i-1].SendAt)
		}
		if late > 0 {
			held++
			if i > 0 && pk.SendAt.Equal(pks[i-1].SendAt) {
				bursts++ // goes out back to back with the one before
			}
		}
	}
	if held == 0 || bursts == 0 {
		t.Errorf("%d packets held, %d sent in a burst: want holds released as bursts", held, bursts)
	}
}

func TestPacerSkipsAndSizes(t *testing.T) {
	pc := testPacing()
	pc.Skips = []float64{0.1}
	epoch := time.Unix(0, 0)
	pks := plan(newPacer(pc, epoch, 0), epoch, pc.Frame, 20000)
	skipped, bytes := 0, 0
	for i, pk := range pks {
		if pk.Size < 16 || pk.Size > maxPayload {
			t.Fatalf("packet %d: %d bytes, want 16 to %d", i, pk.Size, maxPayload)
		}
		if pk.Skip {
			skipped++
		}
		bytes += pk.Size
	}
	if got := float64(skipped) / float64(len(pks)); math.Abs(got-0.1) > 0.01 {
		t.Errorf("skipped %.3f of packets, want 0.1", got)
	}
	mean := float64(pc.Bitrate) * pc.Frame.Seconds() / 8
	if got := float64(bytes) / float64(len(pks)); math.Abs(got-mean)/mean > 0.02 {
		t.Errorf("mean payload %.1f bytes, want %.1f (the bit rate)", got, mean)
	}
}

// The publishers of a run share their load phases, so that their loads
// rise and fall together, whenever each started.
func TestPacerLoadPhasesShared(t *testing.T) {
	pc := testPacing()
	pc.Loads = []float64{0.5, 1, 2}
	pc.Skips = []float64{0, 0.5}
	epoch := time.Unix(0, 0)
	a, b := newPacer(pc, epoch, 0), newPacer(pc, epoch, 1)
	b.plan(epoch.Add(3 * time.Second)) // b joined later
	differ := false
	for i := 150; i < 3000; i++ {
		due := epoch.Add(time.Duration(i) * pc.Frame)
		pa, pb := a.plan(due), b.plan(due)
		if a.load != b.load {
			t.Fatalf("at %s: loads %g and %g, want the shared phase's", due.Sub(epoch), a.load, b.load)
		}
		differ = differ || pa.Skip != pb.Skip
	}
	if !differ {
		t.Error("two publishers skipped the same packets: want their own phases and randomness")
	}
}

func TestPacerDeterministic(t *testing.T) {
	pc := testPacing()
	pc.Loads = []float64{0.5, 1, 2}
	pc.Skips = []float64{0, 0.05}
	pc.Gaps = []time.Duration{0, 100 * time.Millisecond}
	epoch := time.Unix(0, 0)
	x := plan(newPacer(pc, epoch, 2), epoch, pc.Frame, 2000)
	y := plan(newPacer(pc, epoch, 2), epoch, pc.Frame, 2000)
	for i := range x {
		if x[i] != y[i] {
			t.Fatalf("packet %d: %+v then %+v from the same seed", i, x[i], y[i])
		}
	}
}
