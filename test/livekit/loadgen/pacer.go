package main

import (
	"math/rand/v2"
	"time"
)

// packet is what the pacer decides for one packet.
type packet struct {
	// SendAt is when it goes out: its due time, or the end of the hold it
	// fell into (then it goes out back to back with the others held).
	SendAt time.Time
	// Skip says it is never sent: its sequence number is skipped.
	Skip bool
	// Size is its payload in bytes.
	Size int
}

// pacer decides, packet by packet, when a publisher sends and what. It
// knows nothing of WebRTC, so the pacing is tested on its own.
//
// Two kinds of phase cut its time. Load phases are the same for every
// publisher of a run: they start at a shared epoch and draw from a shared
// seed, so the publishers' loads rise and fall together, as in a
// congestion episode, and the bottleneck's queue empties and overflows
// instead of seeing an average. Behaviour phases (skips, holds) are each
// publisher's own.
type pacer struct {
	p       pacing
	rng     *rand.Rand // this publisher's
	loadRng *rand.Rand // the run's, replayed identically by every publisher

	loadEnd   time.Time
	load      float64
	phaseEnd  time.Time
	skip      float64
	gap       time.Duration
	holdUntil time.Time
}

// newPacer returns publisher i's pacer for a run that started at epoch.
func newPacer(p pacing, epoch time.Time, i int) *pacer {
	return &pacer{
		p:       p,
		rng:     rand.New(rand.NewPCG(uint64(p.Seed), uint64(i)+1)),
		loadRng: rand.New(rand.NewPCG(uint64(p.Seed), 0)),
		loadEnd: epoch,
	}
}

// plan decides the packet whose media time is due; calls come in order of
// due, one frame apart.
func (p *pacer) plan(due time.Time) packet {
	for !due.Before(p.loadEnd) {
		p.loadEnd = p.loadEnd.Add(phaseLength(p.loadRng, p.p))
		p.load = p.p.Loads[p.loadRng.IntN(len(p.p.Loads))]
	}
	if !due.Before(p.phaseEnd) {
		p.phaseEnd = due.Add(phaseLength(p.rng, p.p))
		p.skip = p.p.Skips[p.rng.IntN(len(p.p.Skips))]
		p.gap = p.p.Gaps[p.rng.IntN(len(p.p.Gaps))]
	}
	sendAt := due
	switch {
	case due.Before(p.holdUntil):
		sendAt = p.holdUntil
	case p.gap > 0 && p.rng.Float64() < p.p.GapProb:
		p.holdUntil = due.Add(time.Duration(p.rng.Int64N(int64(p.gap)) + 1))
		sendAt = p.holdUntil
	}
	// ±25% around the phase's mean, as a variable-bit-rate codec varies.
	mean := float64(p.p.Bitrate) * p.load * p.p.Frame.Seconds() / 8
	size := int(mean * (0.75 + 0.5*p.rng.Float64()))
	return packet{SendAt: sendAt, Skip: p.rng.Float64() < p.skip, Size: min(max(size, 16), maxPayload)}
}

// phaseLength draws a phase's length, uniform in [PhaseMin, PhaseMax].
func phaseLength(rng *rand.Rand, p pacing) time.Duration {
	span := p.PhaseMax - p.PhaseMin
	if span <= 0 {
		return p.PhaseMin
	}
	return p.PhaseMin + time.Duration(rng.Int64N(int64(span)+1))
}
