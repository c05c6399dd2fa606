package main

import (
	"testing"
	"time"
)

func TestAccount(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(seq uint64) time.Time { return t0.Add(time.Duration(seq) * 100 * time.Millisecond) }
	// A reader that takes each message 10 ms after its tick.
	prompt := func(seqs ...uint64) []msg {
		var ms []msg
		var prev uint64
		for i, s := range seqs {
			m := msg{seq: s, sampled: at(s), received: at(s).Add(10 * time.Millisecond)}
			if i > 0 {
				m.skipped = s - prev - 1
			}
			ms, prev = append(ms, m), s
		}
		return ms
	}

	r := account(prompt(5, 6, 7, 8, 9, 10), 4)
	if !r.KeptUp() || r.Messages != 6 || r.First != 5 || r.Last != 10 || len(r.Proven) > 0 {
		t.Errorf("every sequence: %+v", r)
	}

	// A gap the agent counted, with the reader prompt all along: S=7 came
	// 10 ms after its tick, long before seq 10 (7+4-1) was sampled.
	r = account(prompt(5, 7, 8, 9, 10, 11), 4)
	if r.KeptUp() || r.Skipped != 1 || len(r.Proven) != 1 || len(r.Unaccounted) > 0 {
		t.Errorf("a prompt reader's gap: %+v", r)
	}

	// The same gap, with the message after it taken late (after seq 10's
	// tick): a slow reader, by design.
	ms := prompt(5, 7, 8, 9, 10, 11)
	ms[1].received = at(10).Add(time.Millisecond)
	if r = account(ms, 4); r.Skipped != 1 || len(r.Proven) > 0 || len(r.Unaccounted) > 0 {
		t.Errorf("a slow reader's gap: %+v", r)
	}

	// Without seq S+buffer-1 nothing can be proven.
	if r = account(prompt(5, 7), 4); len(r.Proven) > 0 {
		t.Errorf("a gap at the end: %+v", r)
	}

	// A sequence missing that skipped does not count, and a repeat.
	ms = prompt(5, 6, 8)
	ms[2].skipped = 0
	if r = account(ms, 4); len(r.Unaccounted) != 1 {
		t.Errorf("an uncounted gap: %+v", r)
	}
	ms = prompt(5, 6)
	ms = append(ms, ms[1])
	if r = account(ms, 4); len(r.Unaccounted) != 1 {
		t.Errorf("a repeated sequence: %+v", r)
	}
	if r = account(nil, 4); r.Messages != 0 || !r.KeptUp() {
		t.Errorf("no messages: %+v", r)
	}
}

func TestJudgeGrowth(t *testing.T) {
	for _, c := range []struct {
		name    string
		samples []float64
		leak    bool
	}{
		{"flat", []float64{30, 31, 30, 30, 32, 30, 30, 30, 31}, false},
		{"spikes above a flat floor", []float64{30, 80, 30, 30, 90, 30, 30, 70, 30}, false},
		{"one goroutine per sample", []float64{30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50}, true},
		{"within the slack", []float64{30, 31, 32, 33, 34, 35, 36, 37, 38}, false},
		{"a step that came back down", []float64{30, 30, 30, 60, 60, 60, 30, 30, 30}, false},
		{"up, then down a little: not monotonic", []float64{30, 30, 30, 60, 60, 60, 50, 50, 50}, false},
		{"up in steps", []float64{30, 30, 30, 45, 45, 45, 60, 60, 60}, true},
		{"down in the middle", []float64{40, 40, 40, 30, 30, 30, 60, 60, 60}, false},
	} {
		g, err := judgeGrowth(c.samples, 10)
		if err != nil {
			t.Fatal(err)
		}
		if g.Leak != c.leak {
			t.Errorf("%s: leak %v, want %v (floors %v)", c.name, g.Leak, c.leak, g.Floors)
		}
	}
	if _, err := judgeGrowth([]float64{1, 2, 3}, 10); err == nil {
		t.Error("three samples judged")
	}
	if slackFor(20) != 10 || slackFor(500) != 50 {
		t.Errorf("slackFor: %v, %v", slackFor(20), slackFor(500))
	}
}
