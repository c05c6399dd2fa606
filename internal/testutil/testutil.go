// Package testutil is the harness every test of this module shares: child
// processes (Proc), a real Prometheus scraping them (Prometheus), and
// waiting for a condition (Poll).
//
// It never imports "testing", so the measuring commands under test/
// (test/chain, test/bench) use it too: each helper takes a context and
// returns an error. The helpers ending in T (StartT, StartPrometheusT,
// Eventually) are their thin wrappers for tests: they fail the test
// instead of returning the error, and stop what they started at cleanup.
package testutil

import "context"

// TB is the part of testing.TB the wrappers use; *testing.T, *testing.B
// and *testing.F satisfy it.
type TB interface {
	Helper()
	Context() context.Context
	Cleanup(func())
	TempDir() string
	Failed() bool
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Skipf(format string, args ...any)
}
