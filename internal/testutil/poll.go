package testutil

import (
	"context"
	"fmt"
	"time"
)

// Poll interval: the first retry comes after pollFirst, each next one
// after twice the last, up to pollMax. A condition that holds a moment
// later is seen within a millisecond or two; one that takes seconds costs
// at most 20 calls a second (a scrape, an API call).
const (
	pollFirst = time.Millisecond
	pollMax   = 50 * time.Millisecond
)

// Poll calls cond until it is done, ctx ends or timeout passes. cond
// returns done and an error:
//   - (true, nil): the wait is over; Poll returns nil.
//   - (true, err): waiting longer cannot help (the process exited, an
//     answer that is wrong rather than late); Poll returns err at once.
//   - (false, err): not yet, err saying why (nil if nothing to say); the
//     last reason is in the error Poll returns on timeout.
//
// The timeout bounds the wait only, so that a broken run fails instead
// of hanging: it is never the assertion.
func Poll(ctx context.Context, timeout time.Duration, cond func() (done bool, err error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last error
	for wait := pollFirst; ; wait = min(2*wait, pollMax) {
		done, err := cond()
		if done {
			return err
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return reason(ctx.Err(), last)
		case <-deadline.C:
			return reason(fmt.Errorf("not within %s", timeout), last)
		case <-time.After(wait):
		}
	}
}

func reason(err, last error) error {
	if last == nil {
		return err
	}
	return fmt.Errorf("%w; last: %w", err, last)
}

// Eventually fails t unless cond holds within timeout; what names the
// wait in the failure.
func Eventually(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Poll(t.Context(), timeout, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
