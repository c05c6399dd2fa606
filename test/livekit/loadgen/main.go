// Command loadgen joins a LiveKit room as synthetic publishers or
// subscribers, for the impaired-SFU test in test/livekit.
//
// Publishers each publish one Opus-like audio track: random payloads at
// a set mean bit rate, paced irregularly (holds released as bursts) and
// with sequence numbers skipped on purpose, so that the SFU sees jitter
// and loss of the publishers' own making as well as the network's.
// Subscribers subscribe to every track and read it, so that their RTCP
// receiver reports (jitter, loss, the RTT echo) reach the SFU.
//
//	loadgen -url ws://10.251.0.1:7880 -room r -publishers 4
//	loadgen -url ws://10.251.0.1:7880 -room r -subscribers 3
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, cfg, log); err != nil {
		log.Error("loadgen failed", "err", err)
		os.Exit(1)
	}
}
