package dcgm

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is the Source's own families: whether DCGM is up, and its
// failures by reason. Every reason is served from the start, at 0.
type Metrics struct {
	up     prometheus.Gauge
	errors *prometheus.CounterVec
	upNow  atomic.Bool
}

var _ prometheus.Collector = (*Metrics)(nil)

func newMetrics() *Metrics {
	m := &Metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gpu_agent_dcgm_up",
			Help: "1 while DCGM is connected and its profiling fields are read, else 0.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpu_agent_dcgm_errors_total",
			Help: "DCGM failures by reason: library_missing, connect, in_use, not_supported, timeout, read.",
		}, []string{"reason"}),
	}
	for _, r := range Reasons {
		m.errors.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) setUp(up bool) {
	m.upNow.Store(up)
	if up {
		m.up.Set(1)
	} else {
		m.up.Set(0)
	}
}

func (m *Metrics) isUp() bool { return m.upNow.Load() }

func (m *Metrics) count(reason string) { m.errors.WithLabelValues(reason).Inc() }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.up.Describe(ch)
	m.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.up.Collect(ch)
	m.errors.Collect(ch)
}
