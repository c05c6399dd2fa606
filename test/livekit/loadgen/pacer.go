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
type pacer struct {
	p   pacing
	rng *rand.Rand

	phaseEnd  time.Time
	load      float64
	skip      float64
	gap       time.Duration
	holdUntil time.Time
}

func newPacer(p pacing, seed int64) *pacer {
	return &pacer{p: p, rng: rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))}
}

// plan decides the packet whose media time is due; calls come in order of
// due, one frame apart.
func (p *pacer) plan(due time.Time) packet {
	if !due.Before(p.phaseEnd) {
		p.newPhase(due)
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

func (p *pacer) newPhase(now time.Time) {
	span := p.p.PhaseMax - p.p.PhaseMin
	length := p.p.PhaseMin
	if span > 0 {
		length += time.Duration(p.rng.Int64N(int64(span)))
	}
	p.phaseEnd = now.Add(length)
	p.load = p.p.Loads[p.rng.IntN(len(p.p.Loads))]
	p.skip = p.p.Skips[p.rng.IntN(len(p.p.Skips))]
	p.gap = p.p.Gaps[p.rng.IntN(len(p.p.Gaps))]
}
