package nvml

import "github.com/prometheus/client_golang/prometheus"

// NewTickHistogram is the sampler's own metric: how long each tick of
// every GPU took. Pass it as Config.TickObserver and register it.
func NewTickHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "gpu_agent",
		Name:      "sample_duration_seconds",
		Help:      "Time one sampling tick of every GPU took.",
		Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	})
}
