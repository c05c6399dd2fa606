package app

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the app scraper's own metrics. The agent does not re-export
// the apps' metrics: Prometheus scrapes the apps itself.
type Metrics struct {
	targets  *prometheus.GaugeVec
	duration prometheus.Histogram
	errors   *prometheus.CounterVec
	dropped  *prometheus.CounterVec
}

func newMetrics() *Metrics {
	name := func(n string) string { return prometheus.BuildFQName("gpu_agent", "app", n) }
	m := &Metrics{
		targets: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("targets"),
			Help: "Pods on this node that opted in to app scraping (gpu-agent.io/scrape), by state: scraping, invalid (a bad gpu-agent.io/ annotation), over_limit (past --app.max-targets)."},
			[]string{"state"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: name("scrape_duration_seconds"),
			Help:    "Time of one app scrape: request, body and parse.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("scrape_errors_total"),
			Help: "Failed app scrapes by reason (timeout, connect, http_status, redirect, body_too_large, parse, busy), and bad gpu-agent.io/ annotations (config, once per distinct error)."},
			[]string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("series_dropped_total"),
			Help: "App series not kept from a scrape, by reason: series_limit (the family did not fit under --app.max-series-per-pod), unsupported_type (summaries, gauge histograms), native_histogram, invalid."},
			[]string{"reason"}),
	}
	for _, s := range []string{"scraping", "invalid", "over_limit"} {
		m.targets.WithLabelValues(s)
	}
	for _, r := range errorReasons {
		m.errors.WithLabelValues(r)
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.targets.Describe(ch)
	m.duration.Describe(ch)
	m.errors.Describe(ch)
	m.dropped.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.targets.Collect(ch)
	m.duration.Collect(ch)
	m.errors.Collect(ch)
	m.dropped.Collect(ch)
}
