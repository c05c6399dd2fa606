package scalertest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

// StepFunc applies a load step (high or back to low) and returns when the
// snapshot carrying it was published: the fake agent's Publish, or, with
// real agents, the simulator's step and the sampler's publish time.
type StepFunc func(ctx context.Context, high bool) (time.Time, error)

// PushLatency is what MeasurePushLatency measured, one entry per step.
type PushLatency struct {
	// GetMetrics: from the publish to the first GetMetrics (KEDA's client,
	// polled back to back) that returns the new value.
	GetMetrics []time.Duration
	// Stream: from the publish to the StreamIsActive message of the
	// transition arriving at KEDA's client.
	Stream []time.Duration
}

// Percentile is the nearest-rank percentile p (0-100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func (l *PushLatency) String() string {
	return fmt.Sprintf("steps=%d GetMetrics p50=%s p99=%s max=%s; StreamIsActive p50=%s p99=%s max=%s",
		len(l.Stream),
		Percentile(l.GetMetrics, 50), Percentile(l.GetMetrics, 99), Percentile(l.GetMetrics, 100),
		Percentile(l.Stream, 50), Percentile(l.Stream, 99), Percentile(l.Stream, 100))
}

// MeasurePushLatency alternates steps between low and high, the trigger's
// aggregate values on either side of its activationTarget (so every step
// is a StreamIsActive transition), and times both paths of each step.
func MeasurePushLatency(ctx context.Context, client externalscaler.ExternalScalerClient, ref *externalscaler.ScaledObjectRef,
	low, high float64, steps int, step StepFunc) (*PushLatency, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamIsActive(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("StreamIsActive: %w", err)
	}
	type msg struct {
		at     time.Time
		active bool
		err    error
	}
	msgs := make(chan msg, 16)
	go func() {
		for {
			r, err := stream.Recv()
			msgs <- msg{time.Now(), r.GetResult(), err}
			if err != nil {
				return
			}
		}
	}()
	waitStream := func(want bool) (time.Time, error) {
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case m := <-msgs:
				if m.err != nil {
					return time.Time{}, fmt.Errorf("StreamIsActive: %w", m.err)
				}
				if m.active == want {
					return m.at, nil
				}
			case <-timeout.C:
				return time.Time{}, fmt.Errorf("no StreamIsActive %v within 5s", want)
			}
		}
	}
	req := &externalscaler.GetMetricsRequest{ScaledObjectRef: ref}
	// pollMetrics calls GetMetrics back to back until it returns want; an
	// error (Unavailable before the agents are connected) is retried.
	pollMetrics := func(want float64) (time.Time, error) {
		deadline := time.Now().Add(5 * time.Second)
		var last error
		for time.Now().Before(deadline) && ctx.Err() == nil {
			r, err := client.GetMetrics(ctx, req)
			if err != nil {
				last = err
				continue
			}
			if v := r.GetMetricValues(); len(v) == 1 && math.Abs(v[0].GetMetricValueFloat()-want) < 1e-9 {
				return time.Now(), nil
			}
		}
		return time.Time{}, fmt.Errorf("GetMetrics did not return %g within 5s (last error: %v)", want, last)
	}

	// Start low: the stream's first message is the current state.
	if _, err := step(ctx, false); err != nil {
		return nil, err
	}
	if _, err := pollMetrics(low); err != nil {
		return nil, err
	}
	if _, err := waitStream(false); err != nil {
		return nil, err
	}
	res := &PushLatency{}
	for i := range steps {
		up := i%2 == 0
		want := low
		if up {
			want = high
		}
		t0, err := step(ctx, up)
		if err != nil {
			return nil, err
		}
		done := make(chan error, 1)
		var tm time.Time
		go func() {
			var err error
			tm, err = pollMetrics(want)
			done <- err
		}()
		ts, serr := waitStream(up)
		if err := errors.Join(<-done, serr); err != nil {
			return nil, fmt.Errorf("step %d: %w", i, err)
		}
		res.GetMetrics = append(res.GetMetrics, tm.Sub(t0))
		res.Stream = append(res.Stream, ts.Sub(t0))
	}
	return res, nil
}
