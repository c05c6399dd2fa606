// Command agent samples every NVIDIA GPU on the node through NVML, labels
// them with the pods that hold them and serves dcgm-exporter compatible
// Prometheus metrics. See docs/agent.md for flags and docs/metrics.md for
// metrics.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpu-telemetry/agent/internal/agent"
)

func main() {
	agent.DropMemProfile = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := agent.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
