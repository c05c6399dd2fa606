package main

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// config is everything a run needs; parseFlags fills it and Validate
// checks it.
type config struct {
	URL, APIKey, APISecret, Room string
	// Identity prefixes participant identities: <Identity>pub-<i>,
	// <Identity>sub-<i>.
	Identity                string
	Publishers, Subscribers int
	// Duration ends the run; zero: run until SIGTERM or SIGINT.
	Duration time.Duration
	// StatsEvery is how often counters are logged; zero: never.
	StatsEvery time.Duration
	pacing
}

// pacing says how a publisher sends. Time is cut into phases of a random
// length between PhaseMin and PhaseMax. Load phases, shared by every
// publisher of a run, draw a load factor from Loads; each publisher's own
// phases draw a skip probability and a longest hold from Skips and Gaps
// (uniformly, independently).
type pacing struct {
	// Bitrate is one publisher's mean payload bit rate at load factor 1.
	Bitrate int
	// Frame is the media time of one packet (Opus: 20 ms).
	Frame              time.Duration
	PhaseMin, PhaseMax time.Duration
	// Loads scale Bitrate: a phase above the bottleneck's share fills its
	// queue, one below lets it drain.
	Loads []float64
	// Skips are probabilities that a packet is never sent: its sequence
	// number is skipped, so the SFU counts it lost whatever the network did.
	Skips []float64
	// Gaps are longest holds: in a phase with a non-zero one, each packet
	// starts a hold with probability GapProb; packets due during the hold
	// are sent back to back when it ends, as a stalled encoder or a
	// scheduler hiccup would.
	Gaps    []time.Duration
	GapProb float64
	// Seed seeds the shared load phases and, with i, publisher i's own
	// randomness.
	Seed int64
}

// maxPayload keeps a packet, with RTP, SRTP, UDP and IP headers, under a
// 1280-byte path MTU.
const maxPayload = 1150

func parseFlags(fs *flag.FlagSet, args []string) (*config, error) {
	c := &config{}
	fs.StringVar(&c.URL, "url", "", "LiveKit's WebSocket URL (ws://host:7880)")
	fs.StringVar(&c.APIKey, "api-key", "devkey", "API key (livekit-server --dev's)")
	fs.StringVar(&c.APISecret, "api-secret", "secret", "API secret (livekit-server --dev's)")
	fs.StringVar(&c.Room, "room", "load", "room to join")
	fs.StringVar(&c.Identity, "identity", "", "prefix of participant identities")
	fs.IntVar(&c.Publishers, "publishers", 0, "publishers to run, one audio track each")
	fs.IntVar(&c.Subscribers, "subscribers", 0, "subscribers to run, each subscribing to every track")
	fs.DurationVar(&c.Duration, "duration", 0, "how long to run (0: until SIGTERM)")
	fs.DurationVar(&c.StatsEvery, "stats-every", 10*time.Second, "how often to log counters (0: never)")
	fs.IntVar(&c.Bitrate, "bitrate", 200_000, "mean payload bit rate of one publisher at load factor 1, bit/s")
	fs.DurationVar(&c.Frame, "frame", 20*time.Millisecond, "media time of one packet")
	fs.DurationVar(&c.PhaseMin, "phase-min", time.Second, "shortest pacing phase")
	fs.DurationVar(&c.PhaseMax, "phase-max", 4*time.Second, "longest pacing phase")
	c.Loads = []float64{1}
	fs.Func("loads", "comma-separated load factors, one drawn per load phase, which all publishers share (default 1)", func(s string) (err error) {
		c.Loads, err = floats(s)
		return err
	})
	fs.Func("skips", "comma-separated probabilities that a packet is skipped, one drawn per phase (default 0)", func(s string) (err error) {
		c.Skips, err = floats(s)
		return err
	})
	fs.Func("gaps", "comma-separated longest holds, one drawn per phase (default 0: steady pacing)", func(s string) (err error) {
		c.Gaps, err = durations(s)
		return err
	})
	fs.Float64Var(&c.GapProb, "gap-prob", 0.05, "probability that a packet starts a hold, in a phase with a gap")
	fs.Int64Var(&c.Seed, "seed", 1, "seed of the run's randomness")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if len(c.Skips) == 0 {
		c.Skips = []float64{0}
	}
	if len(c.Gaps) == 0 {
		c.Gaps = []time.Duration{0}
	}
	return c, c.Validate()
}

// Validate names the flag and the value that is wrong.
func (c *config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.URL, "ws://") && !strings.HasPrefix(c.URL, "wss://") {
		errs = append(errs, fmt.Errorf("-url %q: want ws:// or wss://", c.URL))
	}
	if c.Publishers < 0 || c.Subscribers < 0 || c.Publishers+c.Subscribers == 0 {
		errs = append(errs, fmt.Errorf("-publishers %d -subscribers %d: want at least one participant", c.Publishers, c.Subscribers))
	}
	if c.Bitrate <= 0 {
		errs = append(errs, fmt.Errorf("-bitrate %d: want a positive rate", c.Bitrate))
	}
	if c.Frame < 5*time.Millisecond || c.Frame > 120*time.Millisecond {
		errs = append(errs, fmt.Errorf("-frame %s: want 5ms to 120ms", c.Frame))
	}
	if c.PhaseMin <= 0 || c.PhaseMax < c.PhaseMin {
		errs = append(errs, fmt.Errorf("-phase-min %s -phase-max %s: want 0 < min <= max", c.PhaseMin, c.PhaseMax))
	}
	for _, l := range c.Loads {
		if l <= 0 {
			errs = append(errs, fmt.Errorf("-loads %v: want positive factors", c.Loads))
			break
		}
	}
	for _, s := range c.Skips {
		if s < 0 || s >= 1 {
			errs = append(errs, fmt.Errorf("-skips %v: want probabilities in [0, 1)", c.Skips))
			break
		}
	}
	for _, g := range c.Gaps {
		if g < 0 {
			errs = append(errs, fmt.Errorf("-gaps %v: want non-negative durations", c.Gaps))
			break
		}
	}
	if c.GapProb < 0 || c.GapProb > 1 {
		errs = append(errs, fmt.Errorf("-gap-prob %g: want a probability", c.GapProb))
	}
	return errors.Join(errs...)
}

func floats(s string) ([]float64, error) {
	var fs []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return nil, err
		}
		fs = append(fs, v)
	}
	return fs, nil
}

func durations(s string) ([]time.Duration, error) {
	var ds []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}
