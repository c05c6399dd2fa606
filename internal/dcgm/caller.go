package dcgm

import (
	"context"
	"errors"
	"time"
)

var errNoGPU = errors.New("no GPU")

// caller makes one DCGM call at a time, each on a goroutine of its own,
// and waits for it at most a timeout: a call that never returns is
// reported (ErrTimeout) and holds the slot until it does return, so no
// other call races it (go-dcgm's global handle is unlocked) and the
// caller's goroutine is never held.
type caller struct {
	slot chan struct{}
}

func newCaller() *caller { return &caller{slot: make(chan struct{}, 1)} }

// do runs fn when the slot is free, waiting for the slot and for fn
// together at most timeout, and at most until ctx ends.
func (c *caller) do(ctx context.Context, timeout time.Duration, fn func() error) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case c.slot <- struct{}{}:
	case <-t.C:
		return errors.Join(ErrTimeout, errors.New("an earlier call is still in flight"))
	case <-ctx.Done():
		return ctx.Err()
	}
	done := make(chan error, 1)
	go func() {
		defer func() { <-c.slot }()
		done <- fn()
	}()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return ErrTimeout
	case <-ctx.Done():
		return ctx.Err()
	}
}

func isTimeout(err error) bool { return errors.Is(err, ErrTimeout) }
