package podwatch

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics say whether the watch of the node's pods works: without it, the
// pods of a shared GPU see the device's values, and a missing RBAC rule is
// otherwise only a log line. For the agent's registry.
func (w *Watcher) Metrics() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gpu_agent_pod_watch_synced",
			Help: "1 once the first list of this node's pods (the names of GPU processes' pods) has been indexed.",
		}, func() float64 {
			if w.Stats().Synced {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gpu_agent_pod_watch_pods",
			Help: "Pods of this node the pod watch holds.",
		}, func() float64 { return float64(w.Stats().Pods) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gpu_agent_pod_watch_errors_total",
			Help: "Failed lists and watches of this node's pods (a forbidden list, say); the watch retries.",
		}, func() float64 { return float64(w.Stats().Errors) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gpu_agent_pod_watch_lists_total",
			Help: "Lists of this node's pods: the first, and one each time the watch cannot resume (its resource version expired, 410).",
		}, func() float64 { return float64(w.Stats().Lists) }),
	}
}
