package livekit

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Histograms are the LiveKit v1.13.5 families the harness spreads, with
// their bucket upper bounds (pkg/telemetry/prometheus/packets.go). All
// three carry direction (incoming: publisher to SFU, outgoing: SFU to
// subscriber), source, type and country labels, and are observed once
// per stream every 5 s (connectionquality.UpdateInterval) from the
// stream's stats over those 5 s: jitter and RTT as their maximum, and
// only when above zero; loss as the percentage lost, zero included.
var Histograms = []Histogram{
	{"livekit_jitter_us", []float64{1000, 10000, 30000, 50000, 70000, 100000, 300000, 600000, 1000000}},
	{"livekit_rtt_ms", []float64{50, 100, 150, 200, 250, 500, 750, 1000, 5000, 10000}},
	{"livekit_packet_loss_percent", []float64{0, 0.1, 0.3, 0.5, 0.7, 1, 5, 10, 40, 100}},
}

// Histogram is a histogram family and its bucket upper bounds (+Inf not
// listed).
type Histogram struct {
	Name    string
	Buckets []float64
}

// Bucket is one bucket's share of a histogram's observations: those in
// (the previous bucket's LE, LE].
type Bucket struct {
	LE    float64
	Count float64
}

// Buckets returns, per bucket, how many observations family made in the
// last window, summed over every label but le, from Prometheus's
// increase(): cumulative counts turned into per-bucket ones. Empty when
// the family has no series yet.
func (e *Env) Buckets(ctx context.Context, family string, window time.Duration) ([]Bucket, error) {
	q := fmt.Sprintf("sum by (le) (increase(%s_bucket[%s]))", family, promDuration(window))
	var data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := e.Prom.API(ctx, "/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	cum := make([]Bucket, 0, len(data.Result))
	for _, r := range data.Result {
		le, err := strconv.ParseFloat(r.Metric["le"], 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: le %q: %w", q, r.Metric["le"], err)
		}
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", q, r.Value[1], err)
		}
		cum = append(cum, Bucket{LE: le, Count: v})
	}
	return perBucket(cum), nil
}

// perBucket turns cumulative bucket counts into per-bucket ones.
func perBucket(cum []Bucket) []Bucket {
	slices.SortFunc(cum, func(a, b Bucket) int { return cmpFloat(a.LE, b.LE) })
	out := make([]Bucket, len(cum))
	prev := 0.0
	for i, b := range cum {
		out[i] = Bucket{LE: b.LE, Count: max(b.Count-prev, 0)}
		prev = b.Count
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Spread counts the buckets holding observations. increase() extrapolates
// to the window's edges, so a bucket's count is not a whole number; one
// observation counts from half of one.
func Spread(bs []Bucket) int {
	n := 0
	for _, b := range bs {
		if b.Count >= 0.5 {
			n++
		}
	}
	return n
}

// FormatBuckets renders buckets as "le=1000:3 le=10000:12 ...".
func FormatBuckets(bs []Bucket) string {
	parts := make([]string, len(bs))
	for i, b := range bs {
		le := strconv.FormatFloat(b.LE, 'g', -1, 64)
		if math.IsInf(b.LE, 1) {
			le = "+Inf"
		}
		parts[i] = fmt.Sprintf("le=%s:%.1f", le, b.Count)
	}
	return strings.Join(parts, " ")
}

// Quantile returns Prometheus's histogram_quantile(q) of family over the
// last window, summed over every label but le: the oracle a scaler's
// percentile is compared against. ok is false while there is no data.
func (e *Env) Quantile(ctx context.Context, q float64, family string, window time.Duration) (v float64, ok bool, err error) {
	return e.Prom.Query(ctx, QuantileQuery(q, family, window))
}

// QuantileQuery is the PromQL Quantile runs.
func QuantileQuery(q float64, family string, window time.Duration) string {
	return fmt.Sprintf("histogram_quantile(%g, sum by (le) (rate(%s_bucket[%s])))", q, family, promDuration(window))
}

// promDuration writes d as PromQL does: whole milliseconds.
func promDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}
