package podresources

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is the kubelet client's own health, as a Prometheus collector:
// whether the kubelet answers, whether pod labels come from an old or an
// expired answer, and device IDs that match no GPU.
type Metrics struct {
	c                             StatusSource
	up, stale, expired, last      *prometheus.Desc
	refreshes, failures, unresolv *prometheus.Desc
}

// StatusSource is what Metrics reads; Client implements it.
type StatusSource interface {
	Status() Status
	Assignments() *Assignments
}

// NewMetrics returns the collector of c's health, for the agent's
// registry.
func NewMetrics(c StatusSource) *Metrics {
	name := func(n string) string { return prometheus.BuildFQName("gpu_agent", "kubelet", n) }
	return &Metrics{
		c:         c,
		up:        prometheus.NewDesc(name("up"), "1 if the last pod-resources List call succeeded.", nil, nil),
		stale:     prometheus.NewDesc(name("pod_map_stale"), "1 if pod labels come from the last good kubelet answer because the latest call failed.", nil, nil),
		expired:   prometheus.NewDesc(name("pod_map_expired"), "1 if pod labels are dropped because the kubelet has not answered for longer than --kubelet.max-stale.", nil, nil),
		last:      prometheus.NewDesc(name("last_success_timestamp_seconds"), "When pod-resources List last succeeded, as a Unix time.", nil, nil),
		refreshes: prometheus.NewDesc(name("refreshes_total"), "Successful pod-resources List calls.", nil, nil),
		failures:  prometheus.NewDesc(name("refresh_failures_total"), "Failed pod-resources List calls.", nil, nil),
		unresolv:  prometheus.NewDesc(name("unresolved_devices"), "NVIDIA device IDs in the kubelet's answer that match no GPU on this node.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.up, m.stale, m.expired, m.last, m.refreshes, m.failures, m.unresolv} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.c.Status()
	ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, boolValue(st.Up))
	ch <- prometheus.MustNewConstMetric(m.stale, prometheus.GaugeValue, boolValue(st.Stale))
	ch <- prometheus.MustNewConstMetric(m.expired, prometheus.GaugeValue, boolValue(st.Expired))
	ch <- prometheus.MustNewConstMetric(m.refreshes, prometheus.CounterValue, float64(st.Refreshes))
	ch <- prometheus.MustNewConstMetric(m.failures, prometheus.CounterValue, float64(st.Failures))
	ch <- prometheus.MustNewConstMetric(m.unresolv, prometheus.GaugeValue, float64(m.c.Assignments().Unresolved()))
	if !st.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(m.last, prometheus.GaugeValue, float64(st.LastSuccess.UnixNano())/1e9)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
