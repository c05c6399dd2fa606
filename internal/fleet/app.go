package fleet

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

// AppType is an app family's metric type, as a trigger names it
// (appType) or the agents report it.
type AppType uint8

// The app family types.
const (
	AppAny AppType = iota // not named: whatever the agents report
	AppCounter
	AppGauge
	AppHistogram
)

var appTypeNames = map[string]AppType{"counter": AppCounter, "gauge": AppGauge, "histogram": AppHistogram}

func (t AppType) String() string {
	for n, v := range appTypeNames {
		if v == t {
			return n
		}
	}
	return "any"
}

// DefaultAppWindow is the window of a histogram or counter trigger that
// names none.
const DefaultAppWindow = 30 * time.Second

// AppQuery is the app part of a metric: app trigger.
type AppQuery struct {
	Family   string  // appMetric
	Labels   []Label // appLabels, exact matches, sorted by name
	Type     AppType // appType; AppAny: what the data says
	Quantile float64 // quantile (histograms); 0: not given
	Scale    float64 // scale; 1 when not given
}

// Label is a name=value pair of an app series.
type Label struct{ Name, Value string }

var familyName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// parseAppQuery reads the keys of metric: app that need nothing else of
// the query; finish reads the rest once the query's common keys are in.
func parseAppQuery(vals map[string]string, bad func(key, why string) error) (*AppQuery, error) {
	a := &AppQuery{Scale: 1}
	f, ok := vals[KeyAppMetric]
	if !ok || f == "" {
		return nil, bad(KeyAppMetric, "required with metric: app; the family's name, e.g. livekit_jitter_us")
	}
	if !familyName.MatchString(f) {
		return nil, bad(KeyAppMetric, "not a metric family name")
	}
	a.Family = f
	if v, ok := vals[KeyAppLabels]; ok {
		for _, pair := range strings.Split(v, ";") {
			pair = strings.TrimSpace(pair)
			if pair == "" {
				continue
			}
			k, val, ok := strings.Cut(pair, "=")
			k = strings.TrimSpace(k)
			if !ok || !labelName.MatchString(k) || k == "le" {
				return nil, bad(KeyAppLabels, fmt.Sprintf("%q: want key=value;key=value, exact matches (not le)", pair))
			}
			if slices.ContainsFunc(a.Labels, func(l Label) bool { return l.Name == k }) {
				return nil, bad(KeyAppLabels, fmt.Sprintf("label %s given twice", k))
			}
			a.Labels = append(a.Labels, Label{Name: k, Value: strings.TrimSpace(val)})
		}
		sort.Slice(a.Labels, func(i, j int) bool { return a.Labels[i].Name < a.Labels[j].Name })
	}
	if v, ok := vals[KeyAppType]; ok {
		t, known := appTypeNames[v]
		if !known {
			return nil, bad(KeyAppType, "unknown family type; one of counter, gauge, histogram")
		}
		a.Type = t
	}
	if v, ok := vals[KeyQuantile]; ok {
		q, err := parseNumber(v)
		if err != nil || q <= 0 || q >= 1 {
			return nil, bad(KeyQuantile, "must be a number between 0 and 1, exclusive (0.95)")
		}
		if a.Type != AppAny && a.Type != AppHistogram {
			return nil, bad(KeyQuantile, "only for a histogram (appType "+a.Type.String()+")")
		}
		a.Quantile, a.Type = q, AppHistogram
	} else if a.Type == AppHistogram {
		return nil, bad(KeyQuantile, "required for a histogram (0.95 for p95)")
	}
	if v, ok := vals[KeyScale]; ok {
		s, err := parseNumber(v)
		if err != nil || s == 0 {
			return nil, bad(KeyScale, "must be a number other than 0 (1e-6 turns ns into ms)")
		}
		a.Scale = s
	}
	return a, nil
}

// finish checks what depends on the query's other keys.
func (a *AppQuery) finish(q *Query, vals map[string]string, bad func(key, why string) error, maxWindow time.Duration) error {
	if _, ok := vals[KeyAggregation]; ok && a.Type == AppHistogram {
		return bad(KeyAggregation, "not for a histogram: its quantile is over every matching series' buckets")
	}
	if _, ok := vals[KeyWindow]; !ok {
		q.Window = min(DefaultAppWindow, maxWindow)
	}
	if q.Window <= 0 && (a.Type == AppHistogram || a.Type == AppCounter || a.Type == AppAny) {
		return bad(KeyWindow, "must be above 0 for a histogram's quantile or a counter's rate")
	}
	return nil
}

func (a *AppQuery) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\x00%d\x00%g\x00%g", a.Family, a.Type, a.Quantile, a.Scale)
	for _, l := range a.Labels {
		b.WriteString("\x00" + l.Name + "=" + l.Value)
	}
	return b.String()
}

// reduction names the answer's reduction for the metric name.
func (a *AppQuery) reduction(q *Query) string {
	if a.Quantile > 0 {
		return "q" + strings.ReplaceAll(strconv.FormatFloat(a.Quantile*100, 'f', -1, 64), ".", "")
	}
	return q.Aggregation.String()
}

// appSeries is one series of an app family on one pod: its history.
type appSeries struct {
	family string
	typ    telemetryv1.AppMetricType
	labels []*telemetryv1.Label // sorted by name
	// points is a counter's, gauge's or untyped metric's history; for a
	// histogram, buckets[i] is bound i's cumulative count and count the
	// +Inf bucket.
	points  []promql.Point
	bounds  []float64
	buckets [][]promql.Point
	count   []promql.Point
	last    int64 // ms: the latest scrape that had the series
}

// podApps is one pod's app history on a node.
type podApps struct {
	namespace, name string
	last            int64 // ms: its latest scrape
	err             string
	series          map[string]*appSeries
}

// nodeApps is a node's app state, under node.mu.
type nodeApps struct {
	pods map[string]*podApps // by namespace/name
}

func seriesKey(family string, labels []*telemetryv1.Label) string {
	var b strings.Builder
	b.WriteString(family)
	for _, l := range labels {
		b.WriteString("\x00" + l.GetName() + "\x00" + l.GetValue())
	}
	return b.String()
}

// ingestApps records a message's app scrapes: each new scrape's values
// append to its series' histories, kept for retention (ms). Pods missing
// from the message are gone from the node, but their points stay while in
// the window, as a PromQL range over a gone target's series does. It
// reports whether a scrape was new: every message repeats the whole set,
// and one that brings nothing new changes no answer.
//
// first is the first message of a stream: a scrape already seen may then
// bring series it did not (a re-subscription that names a new family).
func (n *node) ingestApps(snap *telemetryv1.NodeSnapshot, retention int64, first bool) bool {
	if n.apps == nil {
		n.apps = &nodeApps{pods: make(map[string]*podApps)}
	}
	newest := int64(math.MinInt64)
	fresh := false
	for _, sc := range snap.GetApps() {
		key := sc.GetNamespace() + "/" + sc.GetPod()
		p := n.apps.pods[key]
		if p == nil {
			p = &podApps{namespace: sc.GetNamespace(), name: sc.GetPod(), series: make(map[string]*appSeries)}
			n.apps.pods[key] = p
		}
		p.err = sc.GetError()
		if sc.GetScrapeTime() == nil {
			continue
		}
		t := sc.GetScrapeTime().AsTime().UnixMilli()
		newest = max(newest, t)
		if t < p.last || t == p.last && !first {
			continue // seen: the whole set comes with every message
		}
		if t > p.last {
			p.last, fresh = t, true
		}
		for _, f := range sc.GetFamilies() {
			for _, s := range f.GetSeries() {
				k := seriesKey(f.GetName(), s.GetLabels())
				as := p.series[k]
				if as == nil {
					as = &appSeries{family: f.GetName(), typ: f.GetType(), labels: s.GetLabels()}
					p.series[k] = as
				}
				if as.last >= t && len(as.points)+len(as.count) > 0 {
					continue // this scrape's value is in (a scrape sent again)
				}
				as.record(t, f.GetType(), s)
				fresh = true
			}
		}
	}
	if !fresh {
		return false
	}
	horizon := newest - retention/int64(time.Millisecond) - 1
	for key, p := range n.apps.pods {
		for k, s := range p.series {
			if s.trim(horizon) {
				delete(p.series, k)
			}
		}
		if len(p.series) == 0 && p.last < horizon {
			delete(n.apps.pods, key)
		}
	}
	return true
}

// record appends one scrape's value of the series. A histogram whose
// bounds changed starts over (a new layout is a new set of series).
func (s *appSeries) record(t int64, typ telemetryv1.AppMetricType, m *telemetryv1.AppSeries) {
	s.last = t
	if typ != s.typ {
		*s = appSeries{family: s.family, typ: typ, labels: s.labels, last: t}
	}
	h := m.GetHistogram()
	if typ != telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM || h == nil {
		s.points = append(s.points, promql.Point{T: t, V: m.GetValue()})
		return
	}
	if !slices.Equal(s.bounds, h.GetUpperBounds()) {
		s.bounds = slices.Clone(h.GetUpperBounds())
		s.buckets = make([][]promql.Point, len(s.bounds))
		s.count = nil
	}
	counts := h.GetCumulativeCounts()
	for i := range s.bounds {
		var c float64
		if i < len(counts) {
			c = counts[i]
		}
		s.buckets[i] = append(s.buckets[i], promql.Point{T: t, V: c})
	}
	s.count = append(s.count, promql.Point{T: t, V: h.GetCount()})
}

// trim drops points before horizon; it reports whether none is left.
func (s *appSeries) trim(horizon int64) bool {
	cut := func(ps []promql.Point) []promql.Point {
		i := sort.Search(len(ps), func(i int) bool { return ps[i].T >= horizon })
		if i == 0 {
			return ps
		}
		return append(ps[:0], ps[i:]...)
	}
	s.points = cut(s.points)
	for i := range s.buckets {
		s.buckets[i] = cut(s.buckets[i])
	}
	s.count = cut(s.count)
	return len(s.points) == 0 && len(s.count) == 0
}

// matches reports whether the series carries every label of the query.
func (a *AppQuery) matches(s *appSeries) bool {
	if s.family != a.Family {
		return false
	}
	for _, want := range a.Labels {
		i := slices.IndexFunc(s.labels, func(l *telemetryv1.Label) bool { return l.GetName() == want.Name })
		if i < 0 || s.labels[i].GetValue() != want.Value {
			return false
		}
	}
	return true
}

// appEval gathers one evaluation of an app query across nodes.
type appEval struct {
	q        *Query
	end      int64 // ms
	buckets  map[float64]float64
	sum      float64 // counters' rates
	values   []float64
	pods     map[string]bool
	series   int
	matched  int // matching pods on fresh nodes, with or without data
	typeSeen telemetryv1.AppMetricType
	mixed    bool
}

// ErrNoObservations answers a histogram quantile over a window in which
// nothing was observed: Unavailable, never 0.
var ErrNoObservations = fmt.Errorf("%w: the window holds no observation", ErrNoReading)

// evalApp answers an app query from every fresh node's app history.
func (s *Store) evalApp(q *Query) (Result, error) {
	now := s.now()
	e := &appEval{q: q, end: now.UnixMilli(), buckets: make(map[float64]float64), pods: make(map[string]bool)}
	fresh, stale := 0, 0
	for _, n := range *s.nodes.Load() {
		v := n.view.Load()
		if v == nil {
			continue
		}
		if now.Sub(v.received) > s.staleAfter(v) {
			n.mu.Lock()
			if n.apps != nil {
				for _, p := range n.apps.pods {
					if q.Matches(p.namespace, p.name) {
						stale++
					}
				}
			}
			n.mu.Unlock()
			continue
		}
		fresh++
		n.mu.Lock()
		e.node(n)
		n.mu.Unlock()
	}
	switch {
	case fresh == 0:
		return Result{}, ErrNoAgents
	case e.mixed:
		return Result{}, fmt.Errorf("%w: family %s has several types across pods", ErrNoReading, q.App.Family)
	case e.series == 0 && e.matched == 0 && stale > 0:
		return Result{}, ErrStale
	case e.series == 0:
		return Result{}, fmt.Errorf("%w: no matching series of %s in the last %s", ErrNoReading, q.App.Family, q.Window)
	}
	return e.result(fresh)
}

// node adds a node's matching series; n.mu held.
func (e *appEval) node(n *node) {
	if n.apps == nil {
		return
	}
	a := e.q.App
	end := max(e.end, 0)
	for _, p := range n.apps.pods {
		if !e.q.Matches(p.namespace, p.name) {
			continue
		}
		e.matched++
		end = max(end, p.last) // a node's clock a little ahead of ours
		for _, s := range p.series {
			if !a.matches(s) || !e.typeOK(s.typ) {
				continue
			}
			if e.add(p, s, end) {
				e.series++
				e.pods[p.namespace+"/"+p.name] = true
			}
		}
	}
}

func (e *appEval) typeOK(t telemetryv1.AppMetricType) bool {
	want := map[AppType]telemetryv1.AppMetricType{
		AppCounter:   telemetryv1.AppMetricType_APP_METRIC_TYPE_COUNTER,
		AppGauge:     telemetryv1.AppMetricType_APP_METRIC_TYPE_GAUGE,
		AppHistogram: telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM,
	}[e.q.App.Type]
	if e.q.App.Type != AppAny && t != want && !(e.q.App.Type == AppGauge && t == telemetryv1.AppMetricType_APP_METRIC_TYPE_UNTYPED) {
		return false
	}
	if e.typeSeen == 0 {
		e.typeSeen = t
	} else if e.typeSeen != t {
		e.mixed = true
	}
	return true
}

// add adds one series; it reports whether the series had data in the
// window.
func (e *appEval) add(p *podApps, s *appSeries, end int64) bool {
	w := e.q.Window
	switch s.typ {
	case telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM:
		inf, ok := promql.Increase(s.count, end, w)
		if !ok {
			return false
		}
		e.buckets[math.Inf(1)] += inf
		for i, b := range s.bounds {
			if v, ok := promql.Increase(s.buckets[i], end, w); ok {
				e.buckets[b] += v
			}
		}
		return true
	case telemetryv1.AppMetricType_APP_METRIC_TYPE_COUNTER:
		v, ok := promql.Rate(s.points, end, w)
		if ok {
			e.sum += v
		}
		return ok
	default: // gauge, untyped: the latest scrape's value, if it had one
		if len(s.points) == 0 || s.last != p.last {
			return false
		}
		e.values = append(e.values, s.points[len(s.points)-1].V)
		return true
	}
}

func (e *appEval) result(nodes int) (Result, error) {
	a := e.q.App
	res := Result{Pods: len(e.pods), Nodes: nodes}
	switch e.typeSeen {
	case telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM:
		if a.Quantile == 0 {
			return Result{}, fmt.Errorf("%w: %s is a histogram: give quantile", ErrNoReading, a.Family)
		}
		bs := make([]promql.Bucket, 0, len(e.buckets))
		for ub, c := range e.buckets {
			bs = append(bs, promql.Bucket{UpperBound: ub, Count: c})
		}
		v := promql.HistogramQuantile(a.Quantile, bs)
		if math.IsNaN(v) {
			return Result{}, ErrNoObservations
		}
		res.Value = v * a.Scale
	case telemetryv1.AppMetricType_APP_METRIC_TYPE_COUNTER:
		res.Value = e.sum * a.Scale
	default:
		if a.Quantile > 0 {
			return Result{}, fmt.Errorf("%w: %s is not a histogram: quantile does not apply", ErrNoReading, a.Family)
		}
		var p partial
		for _, v := range e.values {
			p.add(e.q.Aggregation, v)
		}
		if e.q.Aggregation == P95 {
			res.Value = p95(e.values) * a.Scale
		} else {
			res.Value = reduce(e.q.Aggregation, &p) * a.Scale
		}
	}
	return res, nil
}
