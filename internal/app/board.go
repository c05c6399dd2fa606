package app

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// Board holds the latest Set and wakes whoever waits for the next one:
// the Manager publishes on it, the stream reads it.
type Board struct {
	mu      sync.Mutex
	set     *Set
	changed chan struct{} // closed and replaced on every publication
}

// NewBoard returns a board holding an empty set.
func NewBoard() *Board { return &Board{set: &Set{}, changed: make(chan struct{})} }

// Publish makes scrapes, sorted here by namespace and name, the next set.
func (b *Board) Publish(scrapes []*Scrape) {
	slices.SortFunc(scrapes, func(a, b *Scrape) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	b.mu.Lock()
	b.set = &Set{Seq: b.set.Seq + 1, Scrapes: scrapes}
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Latest returns the latest published set; never nil.
func (b *Board) Latest() *Set {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.set
}

// Wait returns the first set published after seq, or ctx's error.
func (b *Board) Wait(ctx context.Context, seq uint64) (*Set, error) {
	for {
		b.mu.Lock()
		set, ch := b.set, b.changed
		b.mu.Unlock()
		if set.Seq > seq {
			return set, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
