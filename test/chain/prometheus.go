package main

import (
	"context"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// pollPrometheus runs query every period, as KEDA's prometheus scaler
// does with pollingInterval, and sends each result with the time it
// arrived.
func pollPrometheus(ctx context.Context, p *testutil.Prometheus, query string, period time.Duration) <-chan timedValue {
	out := make(chan timedValue, 1024)
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			v, ok, err := p.Query(ctx, query)
			if err != nil || !ok {
				continue // no data yet, or a slow answer: the next poll tries again
			}
			select {
			case out <- timedValue{at: time.Now(), value: v}:
			default:
			}
		}
	}()
	return out
}
