package main

import (
	"fmt"
	"time"
)

// msg is one NodeSnapshot as a subscriber received it.
type msg struct {
	seq, skipped uint64
	sampled      time.Time // the tick's start, on the agent's clock
	received     time.Time // when Recv returned it, on the harness's
}

// seqReport accounts for every sequence one subscriber could have seen,
// from its first message to its last.
type seqReport struct {
	Messages int    `json:"messages"`
	First    uint64 `json:"first"`
	Last     uint64 `json:"last"`
	// Skipped sums NodeSnapshot.skipped: the snapshots the agent says it
	// dropped for this subscriber.
	Skipped uint64 `json:"skipped"`
	// Unaccounted are sequences neither received nor counted as skipped,
	// and messages out of order or repeated: a bug whatever the reader did.
	Unaccounted []string `json:"unaccounted,omitempty"`
	// Proven are gaps a reader that kept up cannot have caused (see
	// provenGaps): a bug.
	Proven []string `json:"proven,omitempty"`
}

// KeptUp reports whether the subscriber saw every sequence.
func (r seqReport) KeptUp() bool { return r.Skipped == 0 && len(r.Unaccounted) == 0 }

// account checks a subscriber's messages: each sequence follows the
// previous one by one plus the snapshots skipped in between, and a gap
// is proven to be the agent's fault when the reader took the message
// after it before the agent could have had a full buffer for it.
//
// Why that proves it: the agent drops a subscriber's oldest buffered
// snapshot only when a new one arrives while its buffer (buffer
// snapshots) is full. If S-1 was dropped, that happened when S+buffer-1
// was published, with S still buffered; so S left the buffer after that
// snapshot's tick started. A reader that received S before the sample
// time of S+buffer-1 took S before then: S-1 was never dropped for a
// full buffer. Slow readers (late Recv, a starved goroutine) only ever
// make a gap look explained, never proven: the test is one-sided.
func account(ms []msg, buffer int) seqReport {
	var r seqReport
	if len(ms) == 0 {
		return r
	}
	r.Messages, r.First, r.Last = len(ms), ms[0].seq, ms[len(ms)-1].seq
	bySeq := make(map[uint64]time.Time, len(ms))
	for _, m := range ms {
		bySeq[m.seq] = m.sampled
	}
	for i := 1; i < len(ms); i++ {
		prev, m := ms[i-1], ms[i]
		r.Skipped += m.skipped
		if m.seq != prev.seq+1+m.skipped {
			r.Unaccounted = append(r.Unaccounted, fmt.Sprintf("seq %d after %d with skipped %d", m.seq, prev.seq, m.skipped))
			continue
		}
		if m.skipped == 0 {
			continue
		}
		later, ok := bySeq[m.seq+uint64(buffer)-1]
		if ok && m.received.Before(later) {
			r.Proven = append(r.Proven, fmt.Sprintf("seq %d (skipped %d) received %s before seq %d was sampled",
				m.seq, m.skipped, later.Sub(m.received).Round(time.Millisecond), m.seq+uint64(buffer)-1))
		}
	}
	return r
}
