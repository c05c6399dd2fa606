package fleet

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

func TestParseAppMetadata(t *testing.T) {
	q := mustQuery(t, "metric", "app", "appMetric", "livekit_forward_latency_ns", "appLabels", "kind=video; track = camera",
		"quantile", "0.95", "scale", "1e-6", "window", "2s", "podPattern", "sfu-.*", "target", "200")
	a := q.App
	if a == nil || a.Family != "livekit_forward_latency_ns" || a.Type != AppHistogram || a.Quantile != 0.95 || a.Scale != 1e-6 || q.Window != 2*time.Second ||
		len(a.Labels) != 2 || a.Labels[0] != (Label{"kind", "video"}) || a.Labels[1] != (Label{"track", "camera"}) {
		t.Fatalf("parsed %+v %+v", q, a)
	}
	if !strings.HasPrefix(q.MetricName(), "app-livekit-forward-latency-ns-q95-w2000ms-default-sfu") {
		t.Errorf("metric name %s", q.MetricName())
	}
	if g := mustQuery(t, "metric", "app", "appMetric", "rooms", "target", "5"); g.Window != DefaultAppWindow || g.App.Scale != 1 || g.App.Type != AppAny {
		t.Errorf("defaults: %+v %+v", g, g.App)
	}
	if q.MetricName() == mustQuery(t, "metric", "app", "appMetric", "livekit_forward_latency_ns", "appLabels", "kind=audio",
		"quantile", "0.95", "scale", "1e-6", "window", "2s", "podPattern", "sfu-.*", "target", "200").MetricName() {
		t.Error("two triggers that differ in appLabels share a metric name")
	}
	for _, tc := range []struct {
		kv  []string
		key string
	}{
		{[]string{"metric", "app", "target", "1"}, "appMetric"},
		{[]string{"metric", "app", "appMetric", "bad name", "target", "1"}, "appMetric"},
		{[]string{"metric", "app", "appMetric", "x", "appType", "summary", "target", "1"}, "appType"},
		{[]string{"metric", "app", "appMetric", "x", "quantile", "1", "target", "1"}, "quantile"},
		{[]string{"metric", "app", "appMetric", "x", "quantile", "0", "target", "1"}, "quantile"},
		{[]string{"metric", "app", "appMetric", "x", "quantile", "nan", "target", "1"}, "quantile"},
		{[]string{"metric", "app", "appMetric", "x", "appType", "gauge", "quantile", "0.5", "target", "1"}, "quantile"},
		{[]string{"metric", "app", "appMetric", "x", "appType", "histogram", "target", "1"}, "quantile"},
		{[]string{"metric", "app", "appMetric", "x", "appLabels", "kind", "target", "1"}, "appLabels"},
		{[]string{"metric", "app", "appMetric", "x", "appLabels", "le=0.1", "target", "1"}, "appLabels"},
		{[]string{"metric", "app", "appMetric", "x", "appLabels", "a=1;a=2", "target", "1"}, "appLabels"},
		{[]string{"metric", "app", "appMetric", "x", "scale", "0", "target", "1"}, "scale"},
		{[]string{"metric", "app", "appMetric", "x", "quantile", "0.9", "aggregation", "max", "target", "1"}, "aggregation"},
		{[]string{"metric", "app", "appMetric", "x", "window", "0", "target", "1"}, "window"},
		{[]string{"metric", "app", "appMetric", "x", "podPattern", "sfu-(", "target", "1"}, "podPattern"},
		{[]string{"metric", "gpu_util", "quantile", "0.9", "target", "1"}, "quantile"},
		{[]string{"metric", "gpu_util", "appMetric", "x", "target", "1"}, "appMetric"},
	} {
		_, err := ParseMetadata(md(tc.kv...), "default", time.Minute)
		var me *MetadataError
		if !errors.As(err, &me) || me.Key != tc.key {
			t.Errorf("%v: err %v, want one naming %s", tc.kv, err, tc.key)
		}
	}
}

// hist is a histogram series of bounds 0.05, 0.1, 0.2, 0.4 whose
// observations so far are obs (cumulative counts computed here).
func hist(labels map[string]string, obs ...float64) *telemetryv1.AppSeries {
	bounds := []float64{0.05, 0.1, 0.2, 0.4}
	h := &telemetryv1.AppHistogram{UpperBounds: bounds, CumulativeCounts: make([]float64, len(bounds))}
	for _, o := range obs {
		for i, b := range bounds {
			if o <= b {
				h.CumulativeCounts[i]++
			}
		}
		h.Sum += o
		h.Count++
	}
	s := &telemetryv1.AppSeries{Histogram: h}
	for _, k := range []string{"kind", "route"} {
		if v, ok := labels[k]; ok {
			s.Labels = append(s.Labels, &telemetryv1.Label{Name: k, Value: v})
		}
	}
	return s
}

func appSnap(node string, seq uint64, at time.Time, appsOnly bool, scrapes ...*telemetryv1.AppScrape) *telemetryv1.NodeSnapshot {
	s := snap(node, seq, at)
	s.Apps, s.AppsOnly = scrapes, appsOnly
	return s
}

func scrapeOf(ns, pod string, at time.Time, fams ...*telemetryv1.AppFamily) *telemetryv1.AppScrape {
	return &telemetryv1.AppScrape{Namespace: ns, Pod: pod, ScrapeTime: timestamppb.New(at), Families: fams}
}

func histFamily(name string, series ...*telemetryv1.AppSeries) *telemetryv1.AppFamily {
	return &telemetryv1.AppFamily{Name: name, Type: telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM, Series: series}
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// The quantile is over the window's increase of every matching series'
// buckets, summed by bound across pods and nodes, as
// histogram_quantile(q, sum by (le) (increase(F_bucket[W]))) gives it:
// computed here from the same points with the promql package, which
// internal/fleet/promql holds against a real Prometheus.
func TestAppHistogramQuantile(t *testing.T) {
	s, c := newTestStore(t)
	q := mustQuery(t, "metric", "app", "appMetric", "lat_seconds", "appLabels", "kind=video", "quantile", "0.95",
		"window", "10s", "scale", "1000", "podPattern", "sfu-.*", "target", "200")
	s.Retain(q)
	if _, err := s.Answer(q); !errors.Is(err, ErrNoAgents) {
		t.Fatalf("no agents: %v", err)
	}
	video, audio := map[string]string{"kind": "video"}, map[string]string{"kind": "audio"}
	// Scrapes every second for 12 s on two nodes: sfu-0 sees 10 fast
	// observations a second, sfu-1 5 slow ones; audio and other-0 never
	// count.
	var obs0, obs1, obsA []float64
	var times []time.Time
	for i := range 12 {
		at := epoch.Add(time.Duration(i) * time.Second)
		times = append(times, at)
		obs0 = append(obs0, repeat(0.03, 10)...)
		obs1 = append(obs1, repeat(0.3, 5)...)
		obsA = append(obsA, repeat(0.39, 50)...)
		c.t = at
		ingest(t, s,
			appSnap("node-a", uint64(i+1), at, false,
				scrapeOf("default", "sfu-0", at, histFamily("lat_seconds", hist(video, obs0...), hist(audio, obsA...))),
				scrapeOf("default", "other-0", at, histFamily("lat_seconds", hist(video, obsA...)))),
			appSnap("node-b", uint64(i+1), at, false,
				scrapeOf("default", "sfu-1", at, histFamily("lat_seconds", hist(video, obs1...)))))
	}
	res, err := s.Answer(q)
	if err != nil {
		t.Fatal(err)
	}
	// The expectation, from the points themselves.
	end := c.Now().UnixMilli()
	sum := map[float64]float64{}
	for _, obs := range [][]float64{obs0, obs1} {
		per := len(obs) / 12
		for k, b := range []float64{0.05, 0.1, 0.2, 0.4, math.Inf(1)} {
			var ps []promql.Point
			for i, at := range times {
				h := hist(video, obs[:per*(i+1)]...).GetHistogram()
				v := h.GetCount()
				if k < 4 {
					v = h.GetCumulativeCounts()[k]
				}
				ps = append(ps, promql.Point{T: at.UnixMilli(), V: v})
			}
			inc, _ := promql.Increase(ps, end, 10*time.Second)
			sum[b] += inc
		}
	}
	var bs []promql.Bucket
	for b, v := range sum {
		bs = append(bs, promql.Bucket{UpperBound: b, Count: v})
	}
	want := promql.HistogramQuantile(0.95, bs) * 1000
	if math.Abs(res.Value-want) > 1e-9 || res.Pods != 2 || res.Nodes != 2 {
		t.Fatalf("answer %v, want %v over 2 pods, 2 nodes", res, want)
	}
	// A third of the observations are slow (0.3 in (0.2, 0.4]): the p95 is
	// in that bucket, in ms.
	if res.Value <= 200 || res.Value > 400 {
		t.Fatalf("p95 %v ms, want in (200, 400]", res.Value)
	}

	// Nothing observed in the window: Unavailable, never 0.
	for i := 12; i < 30; i++ {
		at := epoch.Add(time.Duration(i) * time.Second)
		c.t = at
		ingest(t, s,
			appSnap("node-a", uint64(i+1), at, false, scrapeOf("default", "sfu-0", at, histFamily("lat_seconds", hist(video, obs0...)))),
			appSnap("node-b", uint64(i+1), at, false, scrapeOf("default", "sfu-1", at, histFamily("lat_seconds", hist(video, obs1...)))))
	}
	if res, err := s.Answer(q); !errors.Is(err, ErrNoObservations) {
		t.Fatalf("idle window: %v, %v; want ErrNoObservations", res, err)
	}
	// Silent nodes: stale.
	c.Add(5 * time.Second)
	if _, err := s.Answer(q); !errors.Is(err, ErrNoAgents) {
		t.Fatalf("silent nodes: %v", err)
	}
}

func TestAppCounterAndGauge(t *testing.T) {
	s, c := newTestStore(t)
	rate := mustQuery(t, "metric", "app", "appMetric", "req_total", "window", "10s", "target", "100")
	gauge := mustQuery(t, "metric", "app", "appMetric", "rooms", "aggregation", "max", "target", "5")
	s.Retain(rate)
	s.Retain(gauge)
	for i := range 11 {
		at := epoch.Add(time.Duration(i) * time.Second)
		c.t = at
		var scrapes []*telemetryv1.AppScrape
		for p, perSec := range map[string]float64{"sfu-0": 100, "sfu-1": 50} {
			scrapes = append(scrapes, scrapeOf("default", p, at,
				&telemetryv1.AppFamily{Name: "req_total", Type: telemetryv1.AppMetricType_APP_METRIC_TYPE_COUNTER,
					Series: []*telemetryv1.AppSeries{{Value: perSec * float64(i)}}},
				&telemetryv1.AppFamily{Name: "rooms", Type: telemetryv1.AppMetricType_APP_METRIC_TYPE_GAUGE,
					Series: []*telemetryv1.AppSeries{{Value: perSec / 10}}}))
		}
		ingest(t, s, appSnap("node-a", uint64(i+1), at, false, scrapes...))
	}
	// 150 a second, exactly: the points span the window whole.
	if res, err := s.Answer(rate); err != nil || math.Abs(res.Value-150) > 1e-9 {
		t.Fatalf("rate %v, %v; want 150", res, err)
	}
	if res, err := s.Answer(gauge); err != nil || res.Value != 10 || res.Pods != 2 {
		t.Fatalf("gauge max %v, %v; want 10 over 2 pods", res, err)
	}
	// A quantile of a counter is a bad trigger for this data.
	bad := mustQuery(t, "metric", "app", "appMetric", "req_total", "quantile", "0.5", "target", "1")
	if _, err := s.Answer(bad); !errors.Is(err, ErrNoReading) {
		t.Fatalf("quantile of a counter: %v", err)
	}
}

// StreamIsActive hears of a crossing on the ingest of the scrape that
// causes it, apps_only messages included.
func TestAppWatch(t *testing.T) {
	s, c := newTestStore(t)
	q := mustQuery(t, "metric", "app", "appMetric", "lat_seconds", "quantile", "0.95", "window", "5s",
		"target", "0.2", "activationTarget", "0.2")
	s.Retain(q)
	at := epoch
	var obs []float64
	step := func(v float64, appsOnly bool) {
		at = at.Add(250 * time.Millisecond)
		c.t = at
		obs = append(obs, repeat(v, 50)...)
		ingest(t, s, appSnap("node-a", 1+uint64(at.Sub(epoch)/time.Second), at, appsOnly,
			scrapeOf("default", "sfu-0", at, histFamily("lat_seconds", hist(nil, obs...)))))
	}
	for range 8 {
		step(0.03, false)
	}
	active, ch, cancel := s.Watch(q)
	defer cancel()
	if active {
		t.Fatal("active at 30 ms")
	}
	if s.Watchers() != 1 {
		t.Fatalf("watchers %d", s.Watchers())
	}
	step(0.3, true) // an apps_only message between ticks
	select {
	case a := <-ch:
		if !a {
			t.Fatal("sent inactive")
		}
	default:
		t.Fatalf("no transition after the slow scrape (answer %v)", func() any { r, err := s.Answer(q); return []any{r, err} }())
	}
}
