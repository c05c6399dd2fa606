package agent

import (
	"flag"
	"fmt"
	"time"

	"github.com/gpu-telemetry/agent/internal/app"
)

// AppConfig is the --app.* flags: scraping the node's opted-in pods
// (gpu-agent.io/scrape) for the stream.
type AppConfig struct {
	Enabled         bool
	Interval        time.Duration
	Timeout         time.Duration // 0: the interval
	MaxBodyBytes    int64
	MaxSeriesPerPod int
	MaxTargets      int
	Concurrency     int
}

func (a *AppConfig) register(fs *flag.FlagSet) {
	fs.BoolVar(&a.Enabled, "app.enabled", true, "Scrape the node's pods annotated gpu-agent.io/scrape: \"true\" for the stream (their latency, jitter and loss histograms); needs the pod watch.")
	fs.DurationVar(&a.Interval, "app.interval", app.DefaultInterval, "Default time between two scrapes of an app target (gpu-agent.io/interval overrides it per pod); at least 100ms.")
	fs.DurationVar(&a.Timeout, "app.timeout", 0, "Timeout of one app scrape; 0: the target's interval.")
	fs.Int64Var(&a.MaxBodyBytes, "app.max-body-bytes", app.DefaultMaxBodyBytes, "Largest app scrape body read; a larger one fails the scrape (body_too_large) as it is read.")
	fs.IntVar(&a.MaxSeriesPerPod, "app.max-series-per-pod", app.DefaultMaxSeriesPerPod, "Most series kept of one pod's scrape; families that do not fit are dropped whole (series_limit).")
	fs.IntVar(&a.MaxTargets, "app.max-targets", app.DefaultMaxTargets, "Most app targets scraped on the node; the rest (by namespace and name) are not.")
	fs.IntVar(&a.Concurrency, "app.concurrency", app.DefaultConcurrency, "App scrape bodies read and parsed at once: the memory app scraping takes is bounded by this times --app.max-body-bytes.")
}

func (a *AppConfig) validate() []error {
	var errs []error
	bad := func(flag string, value any, why string) {
		errs = append(errs, fmt.Errorf("--%s=%v: %s", flag, value, why))
	}
	if a.Interval < app.MinInterval {
		bad("app.interval", a.Interval, fmt.Sprintf("must be at least %s", app.MinInterval))
	}
	if a.Timeout < 0 {
		bad("app.timeout", a.Timeout, "must not be negative (0: the interval)")
	} else if a.Timeout > a.Interval {
		bad("app.timeout", a.Timeout, fmt.Sprintf("must be at most --app.interval (%s): a target has one scrape in flight", a.Interval))
	}
	if a.MaxBodyBytes < 1024 {
		bad("app.max-body-bytes", a.MaxBodyBytes, "must be at least 1024")
	}
	if a.MaxSeriesPerPod < 1 {
		bad("app.max-series-per-pod", a.MaxSeriesPerPod, "must be at least 1")
	}
	if a.MaxTargets < 1 {
		bad("app.max-targets", a.MaxTargets, "must be at least 1")
	}
	if a.Concurrency < 1 || a.Concurrency > 64 {
		bad("app.concurrency", a.Concurrency, "must be between 1 and 64")
	}
	return errs
}

func (a *AppConfig) options() app.Options {
	return app.Options{
		Interval:        a.Interval,
		Timeout:         a.Timeout,
		MaxBodyBytes:    a.MaxBodyBytes,
		MaxSeriesPerPod: a.MaxSeriesPerPod,
		MaxTargets:      a.MaxTargets,
		Concurrency:     a.Concurrency,
	}
}
