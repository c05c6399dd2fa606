package podresources_test

import (
	"bytes"
	"strings"
	"sync"
	"time"

	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
)

// Fixed UUIDs: fixtures must be deterministic.
const (
	gpu0 = "GPU-00000000-0000-4000-8000-000000000000" // minor 0, whole
	gpu1 = "GPU-11111111-1111-4111-8111-111111111111" // minor 1, time-sliced
	gpu2 = "GPU-22222222-2222-4222-8222-222222222222" // minor 2, MIG
	gpu3 = "GPU-33333333-3333-4333-8333-333333333333" // minor 3, GKE ids
	migA = "MIG-aaaaaaaa-aaaa-5aaa-8aaa-aaaaaaaaaaaa" // gpu2 gi 1 ci 0
	migB = "MIG-bbbbbbbb-bbbb-5bbb-8bbb-bbbbbbbbbbbb" // gpu2 gi 7 ci 1
	migC = "MIG-cccccccc-cccc-5ccc-8ccc-cccccccccccc" // gpu2 gi 7 ci 0
)

func testInventory() []podresources.GPU {
	return []podresources.GPU{
		{UUID: gpu0, Minor: 0},
		{UUID: gpu1, Minor: 1},
		{UUID: gpu2, Minor: 2, MIG: []podresources.MIGDevice{
			{UUID: migA, GI: 1, CI: 0, Profile: "1g.5gb"},
			{UUID: migB, GI: 7, CI: 1, Profile: "3g.20gb"}, // listed before ci 0 on purpose
			{UUID: migC, GI: 7, CI: 0, Profile: "3g.20gb"},
		}},
		{UUID: gpu3, Minor: 3},
	}
}

var socketPath = fakekubelet.TempSocketPath

// fakeClock is Options.Now for tests of MaxStale: minutes pass at once.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1700000000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a bytes.Buffer safe for the client's goroutine to write and
// the test to read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count returns the number of log lines containing every one of subs.
func (b *syncBuffer) count(subs ...string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for line := range strings.Lines(b.buf.String()) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
