package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

// chainStep is one round's step -> replicas on the push path, split at
// the moments the test observes between the agent and the Deployment:
//
//	t0  the sample time of the step's first snapshot (Node.WatchStep)
//	tS  the scaler answers the step: 0 -> 1, its StreamIsActive message
//	    reaches the tap on its way to KEDA's operator; 1 -> N, the
//	    scaler's push to the test's own stream whose activation only the
//	    stepped value crosses, or its first answer of that value to KEDA
//	    if that came first
//	tR  1 -> N: the first GetMetrics through the tap (the HPA's read,
//	    through the aggregation layer, KEDA's adapter and operator)
//	    answered with the stepped value; 0 -> 1: tS, as KEDA is pushed
//	tW  the test's watch delivers the Deployment's new spec.replicas
//	    (ReplicaRecorder)
type chainStep struct {
	Total time.Duration `json:"total_ns"` // t0 -> tW
	// Push is the push path's own share: agent -> scaler -> KEDA's
	// client, t0 -> tS.
	Push time.Duration `json:"push_path_ns"`
	// Wait is the reader's wait, tS -> tR: for 1 -> N the HPA's sync
	// wait for its next read; 0 for 0 -> 1, where the scaler pushes.
	Wait time.Duration `json:"reader_wait_ns"`
	// Act is tR -> tW: for 0 -> 1 KEDA's operator scaling the Deployment
	// on the message (RequestScale, the scale subresource write); for
	// 1 -> N the rest of the HPA's sync (the read's way back, the
	// replica computation, the scale write).
	Act time.Duration `json:"act_ns"`
	// Reads is the median interval between the HPA's reads through the
	// tap during the round (1 -> N only): its effective sync period.
	Reads time.Duration `json:"hpa_read_interval_ns,omitempty"`
	// Phase is the HPA's last read before the step -> t0 (1 -> N only):
	// the wait is about one read interval less this.
	Phase time.Duration `json:"hpa_phase_ns,omitempty"`
	// KEDADone is tR -> the IsActive KEDA's operator asks right after
	// its GetMetrics (GetMetricsAndActivity) through the tap (1 -> N
	// only): how much of Act is KEDA's before its answer leaves for the
	// adapter, the aggregator and the HPA.
	KEDADone time.Duration `json:"keda_done_ns,omitempty"`
}

// chainOrder fails the test unless t0 <= tS <= tR <= tW: the scaler
// cannot answer a step before its first snapshot, KEDA cannot read it
// before the scaler answers, and the Deployment must not move before
// KEDA (or the HPA through it) had the step.
func chainOrder(t *testing.T, what string, t0, tS, tR, tW time.Time) chainStep {
	t.Helper()
	marks := []struct {
		name string
		at   time.Time
	}{{"the step's first snapshot", t0}, {"the scaler's answer", tS}, {"KEDA's read", tR}, {"the replica change", tW}}
	for i := 1; i < len(marks); i++ {
		if marks[i].at.Before(marks[i-1].at) {
			t.Errorf("%s: %s (%s) came before %s (%s)", what, marks[i].name, marks[i].at.Format(time.StampMicro),
				marks[i-1].name, marks[i-1].at.Format(time.StampMicro))
		}
	}
	return chainStep{Total: tW.Sub(t0), Push: tS.Sub(t0), Wait: tR.Sub(tS), Act: tW.Sub(tR)}
}

// fromZeroChain splits a 0 -> 1 round of the push ScaledObject so: its
// first StreamIsActive message with true, through the tap, is both tS
// and tR.
func (e *env) fromZeroChain(t *testing.T, so string, t0, tW time.Time) chainStep {
	t.Helper()
	ev, ok := e.tap.First(so, "StreamIsActive", time.Time{}, func(ev tapEvent) bool { return ev.Active })
	if !ok {
		t.Fatalf("%s woke without a StreamIsActive true through the tap: %+v", so, e.tap.Events(so, "StreamIsActive"))
	}
	return chainOrder(t, so, t0, ev.At, ev.At, tW)
}

// outChain splits a 1 -> N round of the push ScaledObject so: stepped is
// when the test's own stream saw the scaler turn active on the stepped
// value.
func (e *env) outChain(t *testing.T, so string, value float64, t0, stepped, tW time.Time) chainStep {
	t.Helper()
	read, ok := e.tap.First(so, "GetMetrics", time.Time{}, func(ev tapEvent) bool { return !ev.Unavailable && ev.Value == value })
	if !ok {
		t.Fatalf("%s scaled without a GetMetrics answered %g through the tap", so, value)
	}
	tS := stepped
	if read.At.Before(tS) {
		// The HPA's read reached the scaler between its ingest and the
		// push to the test's stream.
		tS = read.At
	}
	c := chainOrder(t, so, t0, tS, read.At, tW)
	var gaps []time.Duration
	reads := e.tap.Events(so, "GetMetrics")
	for i := 1; i < len(reads); i++ {
		gaps = append(gaps, reads[i].Asked.Sub(reads[i-1].Asked))
	}
	c.Reads = medianOf(gaps)
	for _, r := range reads {
		if r.Asked.Before(t0) {
			c.Phase = t0.Sub(r.Asked)
		}
	}
	if done, ok := e.tap.First(so, "IsActive", read.At, func(tapEvent) bool { return true }); ok {
		c.KEDADone = done.At.Sub(read.At)
	}
	return c
}

// watchActive opens StreamIsActive on the scaler itself (not through the
// tap) for md with activationTarget activation, which the value before
// the step must not cross, and returns a function that waits for the
// stream to turn active and returns when the test received that: when
// the scaler had the stepped value.
func (e *env) watchActive(ctx context.Context, t *testing.T, md map[string]string, activation float64) func() time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	q := map[string]string{"activationTarget": strconv.FormatFloat(activation, 'f', -1, 64)}
	for k, v := range md {
		if k != "activationTarget" {
			q[k] = v
		}
	}
	stream, err := e.keda.StreamIsActive(ctx, &externalscaler.ScaledObjectRef{Name: "chain", Namespace: ns, ScalerMetadata: q})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetResult() {
		cancel()
		t.Fatalf("StreamIsActive above %g before the step: %v %v", activation, first, err)
	}
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				done <- result{err: fmt.Errorf("StreamIsActive above %g never turned active: %w", activation, err)}
				return
			}
			if m.GetResult() {
				done <- result{at: time.Now()}
				return
			}
		}
	}()
	return func() time.Time {
		defer cancel()
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.at
	}
}

func medianOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	if len(ds)%2 == 1 {
		return ds[len(ds)/2]
	}
	return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
}

func (c chainStep) String() string {
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	s := fmt.Sprintf("total %s = push path %s + wait %s + act %s", ms(c.Total), ms(c.Push), ms(c.Wait), ms(c.Act))
	if c.Reads > 0 {
		s += fmt.Sprintf(" (the HPA read every %s; its last read before the step %s before it; KEDA's IsActive after the read answered %s after it)",
			ms(c.Reads), ms(c.Phase), ms(c.KEDADone))
	}
	return s
}

// chainTable writes the split of the push path's rounds: each share's
// median and max, and every round.
func chainTable(b *strings.Builder, rows []struct {
	name  string
	steps []chainStep
}) {
	fmt.Fprintln(b, "| push path: step -> replicas | rounds | total, median (max) | push path: first snapshot -> scaler's answer | wait: -> KEDA reads it | act: -> spec.replicas | every round, total = push + wait + act |")
	fmt.Fprintln(b, "|---|---|---:|---:|---:|---:|---|")
	for _, r := range rows {
		if len(r.steps) == 0 {
			continue
		}
		col := func(f func(chainStep) time.Duration) string {
			ds := make([]time.Duration, len(r.steps))
			for i, c := range r.steps {
				ds[i] = f(c)
			}
			if slices.Max(ds) == 0 {
				return "none: pushed" // 0 -> 1: the scaler's message is KEDA's read
			}
			return fmt.Sprintf("%s (%s)", medianOf(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond))
		}
		var all []string
		for _, c := range r.steps {
			all = append(all, fmt.Sprintf("%s = %s + %s + %s", c.Total.Round(time.Millisecond), c.Push.Round(time.Millisecond),
				c.Wait.Round(time.Millisecond), c.Act.Round(time.Millisecond)))
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s | %s |\n", r.name, len(r.steps),
			col(func(c chainStep) time.Duration { return c.Total }), col(func(c chainStep) time.Duration { return c.Push }),
			col(func(c chainStep) time.Duration { return c.Wait }), col(func(c chainStep) time.Duration { return c.Act }),
			strings.Join(all, "; "))
	}
}

// awaitPhase sleeps until about offset after one of the HPA's reads of
// so through the tap (its last, plus whole sync periods). scaleOut gets
// here just after a read, as it polls the HPA's status for one; stepping
// at once would step every round at the same moment of the HPA's cycle
// and measure one sync wait, not the spread a step at any moment sees.
func (e *env) awaitPhase(ctx context.Context, t *testing.T, so string, offset time.Duration) {
	t.Helper()
	reads := e.tap.Events(so, "GetMetrics")
	if len(reads) == 0 {
		t.Fatalf("the HPA of %s never read through the tap", so)
	}
	at := reads[len(reads)-1].Asked.Add(offset)
	for !at.After(time.Now()) {
		at = at.Add(HPASyncPeriod)
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(at)):
	}
}
