package scaler

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
)

// Namespace prefixes the scaler's own metrics.
const Namespace = "gpu_scaler"

// collector reads the pool's and the store's counters once per scrape:
// neither knows of Prometheus.
type collector struct {
	store   *fleet.Store
	pool    *agents.Pool
	queries *fleet.QueryCache
}

func newCollector(s *fleet.Store, p *agents.Pool, q *fleet.QueryCache) prometheus.Collector {
	return &collector{store: s, pool: p, queries: q}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

// Metrics are the scaler's own metrics, name -> help; docs/metrics.md lists
// every one (a test checks).
var (
	descAgents     = desc("agents", "Agent addresses subscribed to (static and discovered).")
	descConnected  = desc("agents_connected", "Agent streams open that have delivered a snapshot.")
	descSnapshots  = desc("snapshots_received_total", "Snapshots received from every agent.")
	descFailures   = desc("agent_stream_failures_total", "Agent streams that failed or ended, and failed connection attempts.")
	descRejected   = desc("agent_messages_rejected_total", "Agent messages refused, by reason: too_large (over the scaler's 16 MiB) or malformed (not a snapshot, or one without a node); each ends its stream, reconnected with backoff.", "reason")
	descThrottled  = desc("agent_messages_throttled_total", "Reads of an agent's stream that waited because the agent sent more than 50 messages a second.")
	descNodes      = desc("nodes", "Nodes known, by state: fresh (reported within the stale timeout) or stale (silent, not yet forgotten).", "state")
	descWatchers   = desc("stream_watchers", "Distinct triggers StreamIsActive streams wait on.")
	descTriggers   = desc("triggers_cached", "Distinct triggers parsed and cached.")
	descAggregates = desc("aggregates", "Distinct triggers kept answered on ingest, polled or streamed; past 128 polled ones, GetMetrics and IsActive evaluate on every call.")
	descLive       = desc("triggers_live", "Triggers KEDA has used within 10 minutes or streams now: what the agents are asked for.")
	descPending    = desc("triggers_pending", "Live triggers answering Unavailable until every connected agent has answered the subscription that serves them.")
	descResubs     = desc("agent_resubscriptions_total", "Times the agents were re-subscribed because the live triggers need other pods, fields, families or periods.")
	descBuild      = desc("build_info", "Build of the scaler; always 1.", "version", "revision", "goversion")
	collectorDescs = []*prometheus.Desc{descAgents, descConnected, descSnapshots, descFailures, descRejected, descThrottled, descNodes, descWatchers, descTriggers, descAggregates, descLive, descPending, descResubs, descBuild}
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range collectorDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stats()
	fresh, stale := c.store.NodeCounts()
	ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(st.Targets))
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(st.Connected))
	ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.CounterValue, float64(st.Snapshots))
	ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(st.Failures))
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(st.TooLarge), agents.RejectTooLarge)
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(st.Malformed), agents.RejectMalformed)
	ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.CounterValue, float64(st.Throttled))
	ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(fresh), "fresh")
	ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(stale), "stale")
	ch <- prometheus.MustNewConstMetric(descWatchers, prometheus.GaugeValue, float64(c.store.Watchers()))
	ch <- prometheus.MustNewConstMetric(descTriggers, prometheus.GaugeValue, float64(c.queries.Len()))
	ch <- prometheus.MustNewConstMetric(descAggregates, prometheus.GaugeValue, float64(c.store.Aggregates()))
	live, pending := c.store.LiveTriggers()
	ch <- prometheus.MustNewConstMetric(descLive, prometheus.GaugeValue, float64(live))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(pending))
	ch <- prometheus.MustNewConstMetric(descResubs, prometheus.CounterValue, float64(st.Resubscriptions))
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, Version, Revision, runtime.Version())
}
