package exporter_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine they started is
// still running when they end (a server, a watcher or a loop not
// stopped on Close).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
