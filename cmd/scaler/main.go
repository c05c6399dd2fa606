// Command scaler is KEDA's external scaler for GPU workloads: it
// subscribes to every agent's Watch stream and answers KEDA (GetMetrics,
// IsActive, StreamIsActive) from memory. See docs/stream-and-scaler.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpu-telemetry/agent/internal/scaler"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := scaler.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
