package exporter

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// StallIntervals is how many sampling intervals may pass without a new
// snapshot before /readyz reports the agent unready.
const StallIntervals = 3

// Readiness says whether the agent is ready to serve: a first snapshot
// exists and sampling has not stalled. It returns the reason when not.
func Readiness(src Snapshots, interval time.Duration, now time.Time) (bool, string) {
	snap := src.Latest()
	if snap == nil {
		return false, "no GPU sample yet"
	}
	if age := now.Sub(snap.Time); age > StallIntervals*interval {
		return false, fmt.Sprintf("sampling stalled: last sample %s ago, interval %s", age.Round(time.Millisecond), interval)
	}
	return true, "ok"
}

// HandlerOptions configures NewHandler.
type HandlerOptions struct {
	Interval time.Duration
	Logger   *slog.Logger
	Version  string
}

// NewHandler serves /metrics (Prometheus text and OpenMetrics), /healthz
// (the process is alive), /readyz (see Readiness) and a landing page.
func NewHandler(reg *prometheus.Registry, src Snapshots, opts HandlerOptions) (http.Handler, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelError),
		// A collector that panics or errs still leaves the rest served.
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       10 * time.Second,
	})))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := Readiness(src, opts.Interval, time.Now())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
	})
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "GPU telemetry agent",
		Description: "Sub-second NVML telemetry with pod attribution, dcgm-exporter compatible",
		Version:     opts.Version,
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/healthz", Text: "Liveness"},
			{Address: "/readyz", Text: "Readiness"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("building landing page: %w", err)
	}
	mux.Handle("/", landing)
	return mux, nil
}
