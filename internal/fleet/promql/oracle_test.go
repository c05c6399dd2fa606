package promql_test

// The oracle: random counters and classic histograms, backfilled into a
// TSDB with promtool and queried from the real Prometheus at many
// evaluation times, must give what this package computes from the same
// samples. Prometheus, not a number worked out by hand, is the expected
// value.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet/promql"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// oracleSeed fixes the data set; the timestamps move with the clock (the
// TSDB keeps only recent data) but every offset and value stays the same.
const oracleSeed = 42

// series is one generated time series.
type series struct {
	name   string
	labels map[string]string
	points []promql.Point
}

// key identifies a series by its labels, the name included, as the API
// returns them.
func (s *series) key() string { return labelKey(s.name, s.labels) }

func labelKey(name string, ls map[string]string) string {
	names := make([]string, 0, len(ls))
	for n := range ls {
		if n != "__name__" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString(name)
	for _, n := range names {
		fmt.Fprintf(&b, ",%s=%s", n, ls[n])
	}
	return b.String()
}

// histogram is one generated classic histogram: a series per pod and le.
type histogram struct {
	name string   // the hist label
	les  []string // le label values, as written
	pods []string // sorted: Prometheus sums a group in this order
	// buckets[pod][i] is the series of le les[i].
	buckets map[string][]*series
}

// staticHistogram is a histogram with one sample per bucket at one time,
// for histogram_quantile on its raw counts: the odd shapes the scaler's
// sums can take (non-monotonic, NaN, duplicate bounds, no +Inf).
type staticHistogram struct {
	name   string
	les    []string
	counts []float64
}

type dataset struct {
	base     int64 // ms; the data lies in about [base-20m, base+100m]
	counters []*series
	hists    []*histogram
	statics  []*staticHistogram
	staticT  int64
}

const (
	sec    = int64(1000)
	minute = 60 * sec
)

// genTimes returns scrape times from start to end: a base interval with
// jitter, and now and then a gap of several intervals.
func genTimes(r *rand.Rand, start, end int64) []int64 {
	interval := []int64{10 * sec, 15 * sec, 30 * sec, 60 * sec}[r.IntN(4)]
	var ts []int64
	for t := start + r.Int64N(interval); t <= end; {
		ts = append(ts, t)
		step := interval + r.Int64N(interval*3/10+1) - interval*3/20
		if r.IntN(40) == 0 {
			step += interval * (2 + r.Int64N(15))
		}
		t += max(step, 1)
	}
	return ts
}

func genCounter(r *rand.Rand, ts []int64) []promql.Point {
	scale := []float64{1, 0.001, 1000, 1e9}[r.IntN(4)]
	integral := r.IntN(2) == 0
	v := 0.0
	if r.IntN(2) == 0 {
		v = math.Floor(r.Float64() * 50 * scale)
	}
	pts := make([]promql.Point, 0, len(ts))
	for _, t := range ts {
		pts = append(pts, promql.Point{T: t, V: v})
		switch x := r.IntN(100); {
		case x < 4: // a restart
			v = 0
			if r.IntN(2) == 0 {
				v = math.Floor(r.Float64() * 5 * scale)
			}
		case x < 12: // idle
		default:
			inc := r.ExpFloat64() * 10 * scale
			if integral {
				inc = math.Floor(inc)
			}
			v += inc
		}
	}
	return pts
}

// boundSets are the le label sets of the generated histograms: the client
// libraries' defaults, negative bounds, and one without +Inf.
var boundSets = [][]string{
	{"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"},
	{"-1", "0", "0.5", "1", "5", "+Inf"},
	{"1", "2", "4", "8", "16", "32", "+Inf"},
	{"0.1", "1", "10"},
}

func genHistogram(r *rand.Rand, name string, les []string, npods int, from, to int64) *histogram {
	h := &histogram{name: name, les: les, buckets: map[string][]*series{}}
	bounds := make([]float64, len(les))
	for i, le := range les {
		bounds[i], _ = strconv.ParseFloat(le, 64)
	}
	for p := range npods {
		pod := fmt.Sprintf("pod-%d", p)
		h.pods = append(h.pods, pod)
		ss := make([]*series, len(les))
		for i, le := range les {
			ss[i] = &series{name: "h_bucket", labels: map[string]string{"hist": name, "pod": pod, "le": le}}
		}
		counts := make([]float64, len(les))
		mu, sigma := r.Float64()*2-1, 0.5+r.Float64()
		for _, t := range genTimes(r, from+r.Int64N(20*minute), to-r.Int64N(20*minute)) {
			for i, s := range ss {
				if r.IntN(100) == 0 {
					continue // a lost sample: the sum's buckets then disagree
				}
				s.points = append(s.points, promql.Point{T: t, V: counts[i]})
			}
			if r.IntN(50) == 0 { // a restart
				clear(counts)
			}
			if r.IntN(5) == 0 {
				continue // no new observations
			}
			for range r.IntN(12) {
				x := math.Exp(mu + sigma*r.NormFloat64())
				if r.IntN(4) == 0 {
					x = -x
				}
				for i, b := range bounds {
					if x <= b {
						counts[i]++
					}
				}
			}
		}
		h.buckets[pod] = ss
	}
	return h
}

// genStatics returns the odd histograms, Prometheus's own test cases
// first, then random ones.
func genStatics(r *rand.Rand) []*staticHistogram {
	nan := math.NaN()
	s := []*staticHistogram{
		// promql/testdata/histograms.test
		{"nonmonotonic", []string{"0.1", "1", "10", "100", "1000", "+Inf"}, []float64{20, 10, 50, 40, 90, 80}},
		{"positive", []string{"0.1", ".2", "1e0", "+Inf"}, []float64{50, 70, 110, 120}},
		{"negative", []string{"-.2", "-0.1", "0.3", "+Inf"}, []float64{10, 20, 20, 30}},
		// the special cases of bucketQuantile
		{"empty", []string{"0", "1", "+Inf"}, []float64{0, 0, 0}},
		{"noinf", []string{"0.1", "1", "10"}, []float64{1, 2, 3}},
		{"onlyinf", []string{"+Inf"}, []float64{5}},
		{"dupbounds", []string{"1", "1.0", "2", "+Inf"}, []float64{3, 4, 9, 10}},
		{"dupinf", []string{"1", "+Inf", "+inf"}, []float64{3, 4, 5}},
		{"firstnegative", []string{"-5", "-1", "+Inf"}, []float64{7, 8, 10}},
		{"firstzero", []string{"0", "1", "+Inf"}, []float64{7, 8, 10}},
		{"firstempty", []string{"0.5", "1", "+Inf"}, []float64{0, 8, 10}},
		{"neginf", []string{"-Inf", "1", "+Inf"}, []float64{2, 8, 10}},
		{"infdrop", []string{"1", "2", "+Inf"}, []float64{5, 10, 7}},
		{"nanmiddle", []string{"1", "2", "3", "+Inf"}, []float64{1, nan, 3, 4}},
		{"nanfirst", []string{"1", "2", "3", "+Inf"}, []float64{nan, 2, 3, 4}},
		{"naninf", []string{"1", "2", "+Inf"}, []float64{1, 2, nan}},
		{"nanbound", []string{"1", "NaN", "2", "+Inf"}, []float64{1, 2, 3, 4}},
		{"negcount", []string{"1", "2", "+Inf"}, []float64{-3, -2, -1}},
	}
	pool := []string{"-10", "-1", "-0.5", "0", "0.001", "0.1", "0.10", "0.25", "0.5", "1", "1.0", "2", "5", "10", "100", "1e3", "+Inf"}
	for i := range 40 {
		n := 1 + r.IntN(10)
		les := make([]string, 0, n+1)
		for range n {
			les = append(les, pool[r.IntN(len(pool))])
		}
		if r.IntN(8) != 0 {
			les = append(les, "+Inf")
		}
		les = slices.Compact(les) // a label set cannot repeat itself
		slices.Sort(les)
		les = slices.Compact(les)
		counts := make([]float64, len(les))
		c := 0.0
		for j := range counts {
			switch r.IntN(6) {
			case 0: // non-monotonic
				counts[j] = math.Floor(r.Float64() * c)
			case 1: // flat
				counts[j] = c
			default:
				c += math.Floor(r.ExpFloat64() * 10)
				counts[j] = c
			}
		}
		r.Shuffle(len(les), func(a, b int) { les[a], les[b] = les[b], les[a] })
		s = append(s, &staticHistogram{fmt.Sprintf("random-%d", i), les, counts})
	}
	return s
}

func genDataset(r *rand.Rand, base int64) *dataset {
	d := &dataset{base: base}
	from, to := base-20*minute, base+100*minute
	for i := range 10 {
		s := &series{name: "x_total", labels: map[string]string{"series": strconv.Itoa(i)}}
		s.points = genCounter(r, genTimes(r, from+r.Int64N(30*minute), to-r.Int64N(30*minute)))
		d.counters = append(d.counters, s)
	}
	// promql/testdata/functions.test's counters, at 5m steps from base:
	// 0+10x10, 0+10x5 0+10x5, 10+10x10 and 1+10x10.
	for _, f := range []struct {
		path        string
		first, step float64
		resetAt     int
	}{{"foo", 0, 10, -1}, {"bar", 0, 10, 6}, {"dings", 10, 10, -1}, {"bumms", 1, 10, -1}} {
		s := &series{name: "x_total", labels: map[string]string{"series": f.path}}
		v := f.first
		for i := range 11 {
			if i == f.resetAt {
				v = f.first
			}
			s.points = append(s.points, promql.Point{T: base + int64(i)*5*minute, V: v})
			v += f.step
		}
		d.counters = append(d.counters, s)
	}
	for i, les := range boundSets {
		d.hists = append(d.hists, genHistogram(r, fmt.Sprintf("h%d", i), les, 2+i%2, from, to))
	}
	d.statics = genStatics(r)
	d.staticT = base + 30*minute
	return d
}

// allSeries returns the counters and histogram buckets, the series that
// change over time.
func (d *dataset) allSeries() []*series {
	all := slices.Clone(d.counters)
	for _, h := range d.hists {
		for _, pod := range h.pods {
			all = append(all, h.buckets[pod]...)
		}
	}
	return all
}

// written returns every series in the file, the static ones too.
func (d *dataset) written() []*series {
	all := d.allSeries()
	for _, h := range d.statics {
		for i, le := range h.les {
			all = append(all, &series{name: "hs_bucket", labels: map[string]string{"case": h.name, "le": le},
				points: []promql.Point{{T: d.staticT, V: h.counts[i]}}})
		}
	}
	return all
}

// formatTS writes t (ms) as OpenMetrics seconds that promtool reads back
// as t: it multiplies the float by 1000 and truncates, so the seconds are
// written half a millisecond late, far from a truncation boundary.
func formatTS(t int64) string { return fmt.Sprintf("%d.%03d5", t/1000, t%1000) }

func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func (d *dataset) openMetrics() []byte {
	var b bytes.Buffer
	b.WriteString("# TYPE x counter\n")
	for _, s := range d.counters {
		for _, p := range s.points {
			fmt.Fprintf(&b, "x_total{series=%q} %s %s\n", s.labels["series"], formatValue(p.V), formatTS(p.T))
		}
	}
	b.WriteString("# TYPE h histogram\n")
	for _, h := range d.hists {
		for _, pod := range h.pods {
			for _, s := range h.buckets[pod] {
				for _, p := range s.points {
					fmt.Fprintf(&b, "h_bucket{hist=%q,le=%q,pod=%q} %s %s\n", h.name, s.labels["le"], pod, formatValue(p.V), formatTS(p.T))
				}
			}
		}
	}
	b.WriteString("# TYPE hs histogram\n")
	for _, h := range d.statics {
		for i, le := range h.les {
			fmt.Fprintf(&b, "hs_bucket{case=%q,le=%q} %s %s\n", h.name, le, formatValue(h.counts[i]), formatTS(d.staticT))
		}
	}
	b.WriteString("# EOF\n")
	return b.Bytes()
}

// oracle is a Prometheus serving a backfilled TSDB.
type oracle struct {
	addr    string
	client  *http.Client
	queries int
}

// startOracle backfills d into a TSDB and serves it. testutil's
// StartPrometheus makes its own empty TSDB, so the binary is run here,
// with StartPrometheus's retry on a port taken in the meantime.
func startOracle(t *testing.T, d *dataset) *oracle {
	t.Helper()
	prometheus, promtool := testutil.RequireTool(t, "prometheus", "prometheus"), testutil.RequireTool(t, "promtool", "prometheus")
	dir := t.TempDir()
	in, tsdb := filepath.Join(dir, "data.om"), filepath.Join(dir, "tsdb")
	if err := os.WriteFile(in, d.openMetrics(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), promtool, "tsdb", "create-blocks-from", "openmetrics", in, tsdb).CombinedOutput(); err != nil {
		t.Fatalf("promtool tsdb create-blocks-from openmetrics: %v\n%s", err, out)
	}
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte("global:\n  evaluation_interval: 1h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		addr := testutil.FreeAddrT(t)
		p := testutil.StartT(t, "prometheus", testutil.ProcOptions{}, prometheus,
			"--config.file="+config, "--storage.tsdb.path="+tsdb, "--web.listen-address="+addr)
		err := p.WaitHTTP(t.Context(), nil, "http://"+addr+"/-/ready", 30*time.Second)
		if err == nil {
			return &oracle{addr: addr, client: &http.Client{Timeout: 10 * time.Second}}
		}
		_ = p.Stop(testutil.StopTimeout)
		if attempt < 3 && strings.Contains(p.Output(), "address already in use") {
			continue
		}
		t.Fatal(err)
	}
}

// sample is one element of a query's result: labels and, for a range
// query, points, else one value.
type sample struct {
	Metric map[string]string    `json:"metric"`
	Value  [2]json.RawMessage   `json:"value"`
	Values [][2]json.RawMessage `json:"values"`
}

// query runs expr at time at (ms) and returns its vector or matrix.
func (o *oracle) query(ctx context.Context, expr string, at int64) ([]sample, error) {
	o.queries++
	u := fmt.Sprintf("http://%s/api/v1/query?query=%s&time=%s", o.addr, url.QueryEscape(expr),
		url.QueryEscape(time.UnixMilli(at).UTC().Format(time.RFC3339Nano)))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", expr, resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", expr, resp.Status, r.Error)
	}
	if r.Data.ResultType != "vector" && r.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("%s: a %s", expr, r.Data.ResultType)
	}
	var out []sample
	return out, json.Unmarshal(r.Data.Result, &out)
}

// byLabel runs expr at at and returns its values by the value of label.
func (o *oracle) byLabel(t *testing.T, expr string, at int64, label string) map[string]float64 {
	t.Helper()
	res, err := o.query(t.Context(), expr, at)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]float64, len(res))
	for _, s := range res {
		m[s.Metric[label]] = parseValue(t, s.Value[1])
	}
	return m
}

// parseValue parses a sample value: a JSON string, as the API prints
// numbers ("1.5", "NaN", "+Inf").
func parseValue(t *testing.T, n json.RawMessage) float64 {
	t.Helper()
	var s string
	if err := json.Unmarshal(n, &s); err != nil {
		t.Fatalf("value %s: %v", n, err)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("value %s: %v", n, err)
	}
	return v
}

// parseTS parses an API timestamp, seconds with up to three decimals,
// into milliseconds without going through a float.
func parseTS(t *testing.T, n json.RawMessage) int64 {
	t.Helper()
	s, frac, _ := strings.Cut(string(n), ".")
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil || len(frac) > 3 {
		t.Fatalf("timestamp %s: %v", n, err)
	}
	ms, _ := strconv.ParseInt((frac + "000")[:3], 10, 64)
	return sec*1000 + ms
}

// same says whether two results agree: both NaN, equal, or within 1e-9
// of each other relative to the larger.
func same(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	if a == b {
		return true
	}
	return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

// tally counts the comparisons made, and those that were bit-for-bit.
type tally struct{ cases, exact, absent int }

func (c *tally) check(t *testing.T, what string, got float64, gotOK bool, want float64, wantOK bool) {
	t.Helper()
	c.cases++
	switch {
	case gotOK != wantOK:
		t.Errorf("%s: got %v (present %v), Prometheus %v (present %v)", what, got, gotOK, want, wantOK)
	case !gotOK:
		c.absent++
	case !same(got, want):
		t.Errorf("%s: got %v, Prometheus %v", what, got, want)
	case got == want || math.IsNaN(got):
		c.exact++
	}
}

// rangeFuncs are the functions compared, by their PromQL names.
var rangeFuncs = []struct {
	name string
	f    func([]promql.Point, int64, time.Duration) (float64, bool)
}{{"increase", promql.Increase}, {"rate", promql.Rate}}

func TestOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(oracleSeed, 0))
	// A few hours back, whole minutes: in the TSDB's retention, before
	// its head.
	base := time.Now().Add(-4 * time.Hour).Truncate(time.Minute).UnixMilli()
	d := genDataset(r, base)
	o := startOracle(t, d)
	began := time.Now()
	checkBackfill(t, o, d)
	if t.Failed() {
		t.FailNow()
	}

	var c tally
	evals := evalPoints(r, d)
	for _, e := range evals {
		w := time.Duration(e.window) * time.Millisecond
		sel := fmt.Sprintf("x_total[%dms]", e.window)
		for _, fn := range rangeFuncs {
			expr := fmt.Sprintf("%s(%s)", fn.name, sel)
			want := o.byLabel(t, expr, e.at, "series")
			for _, s := range d.counters {
				got, ok := fn.f(s.points, e.at, w)
				wv, wok := want[s.labels["series"]]
				c.check(t, fmt.Sprintf("%s{series=%q} at %s", expr, s.labels["series"], e), got, ok, wv, wok)
			}
		}
		for _, q := range e.qs {
			for _, fn := range rangeFuncs {
				expr := fmt.Sprintf("histogram_quantile(%s, sum by (hist, le) (%s(h_bucket[%dms])))", formatValue(q), fn.name, e.window)
				want := o.byLabel(t, expr, e.at, "hist")
				for _, h := range d.hists {
					got, ok := scalerQuantile(q, h, fn.f, e.at, w)
					wv, wok := want[h.name]
					c.check(t, fmt.Sprintf("%s{hist=%q} at %s", expr, h.name, e), got, ok, wv, wok)
				}
			}
		}
	}
	for _, q := range []float64{-0.1, 0, 1e-9, 0.01, 0.2, 0.25, 0.5, 0.8, 0.9, 0.95, 0.99, 1, 1.01, math.NaN()} {
		expr := fmt.Sprintf("histogram_quantile(%s, hs_bucket)", formatValue(q))
		want := o.byLabel(t, expr, d.staticT, "case")
		for _, h := range d.statics {
			// In Prometheus's order, its series' (le as a string): the
			// order matters only to a NaN bound, which sorts nowhere.
			les := slices.Clone(h.les)
			slices.Sort(les)
			buckets := make([]promql.Bucket, len(les))
			for i, le := range les {
				ub, _ := strconv.ParseFloat(le, 64)
				buckets[i] = promql.Bucket{UpperBound: ub, Count: h.counts[slices.Index(h.les, le)]}
			}
			wv, wok := want[h.name]
			c.check(t, fmt.Sprintf("%s{case=%q}", expr, h.name), promql.HistogramQuantile(q, buckets), true, wv, wok)
		}
	}
	t.Logf("%d oracle cases (%d absent in both, %d of the rest bit-for-bit equal) in %d queries at %d evaluation times, %v",
		c.cases, c.absent, c.exact, o.queries, len(evals), time.Since(began).Round(time.Millisecond))
	if c.cases-c.absent < 1000 {
		t.Errorf("only %d cases with a value: the data set no longer exercises much", c.cases-c.absent)
	}
}

// scalerQuantile is what the scaler computes for
// histogram_quantile(q, sum by (le) (f(h_bucket[w]))): each pod's f per
// bucket, summed per le over the pods that have one (in Prometheus's
// order, so with its rounding), then the quantile. ok is false where no
// le has a value, so that sum by (le) has no series.
func scalerQuantile(q float64, h *histogram, f func([]promql.Point, int64, time.Duration) (float64, bool), at int64, w time.Duration) (float64, bool) {
	var buckets []promql.Bucket
	for i, le := range h.les {
		var sum float64
		n := 0
		for _, pod := range h.pods {
			if v, ok := f(h.buckets[pod][i].points, at, w); ok {
				if n == 0 {
					sum = v
				} else {
					sum += v
				}
				n++
			}
		}
		if n > 0 {
			ub, _ := strconv.ParseFloat(le, 64)
			buckets = append(buckets, promql.Bucket{UpperBound: ub, Count: sum})
		}
	}
	if len(buckets) == 0 {
		return 0, false
	}
	return promql.HistogramQuantile(q, buckets), true
}

// checkBackfill compares the TSDB's samples with the generated ones, so
// that a disagreement later is the arithmetic's and not the import's.
func checkBackfill(t *testing.T, o *oracle, d *dataset) {
	t.Helper()
	want := map[string][]promql.Point{}
	var last int64
	for _, s := range d.written() {
		want[s.key()] = s.points
		last = max(last, s.points[len(s.points)-1].T)
	}
	first := d.base - 30*minute
	res, err := o.query(t.Context(), fmt.Sprintf(`{__name__=~"x_total|h_bucket|hs_bucket"}[%dms]`, last-first), last)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(want) {
		t.Errorf("the TSDB holds %d series, %d written", len(res), len(want))
	}
	for _, s := range res {
		k := labelKey(s.Metric["__name__"], s.Metric)
		w, ok := want[k]
		if !ok {
			t.Errorf("the TSDB holds %s, not written", k)
			continue
		}
		got := make([]promql.Point, len(s.Values))
		for i, v := range s.Values {
			got[i] = promql.Point{T: parseTS(t, v[0]), V: parseValue(t, v[1])}
		}
		if !slices.EqualFunc(got, w, func(a, b promql.Point) bool { return a.T == b.T && same(a.V, b.V) }) {
			t.Errorf("%s: the TSDB holds %d samples %v..., %d written %v...", k, len(got), got[:min(3, len(got))], len(w), w[:min(3, len(w))])
		}
	}
}

// eval is one evaluation: a time and a window, in ms, and the quantiles
// asked for there.
type eval struct {
	at, window int64
	qs         []float64
	why        string
}

func (e eval) String() string {
	return fmt.Sprintf("%s window %dms (%s)", time.UnixMilli(e.at).UTC().Format("15:04:05.000"), e.window, e.why)
}

// evalPoints picks the evaluation times and windows: random ones, ones
// whose end or start falls exactly on a sample, windows reaching past the
// data's ends, and functions.test's own.
func evalPoints(r *rand.Rand, d *dataset) []eval {
	all := d.allSeries()
	var times []int64
	for _, s := range all {
		for _, p := range s.points {
			times = append(times, p.T)
		}
	}
	windows := []int64{15 * sec, 30 * sec, 45 * sec, minute, 90 * sec, 2 * minute, 5 * minute, 10 * minute, 30 * minute}
	window := func() int64 {
		if r.IntN(3) == 0 {
			return 1 + r.Int64N(20*minute)
		}
		return windows[r.IntN(len(windows))]
	}
	qs := func() []float64 {
		pick := []float64{0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1, r.Float64(), -0.5, 1.5, math.NaN()}
		return []float64{pick[r.IntN(9)], pick[r.IntN(len(pick))]}
	}
	var es []eval
	for i := range 90 {
		w := window()
		var e eval
		switch i % 3 {
		case 0:
			e = eval{at: d.base - 25*minute + r.Int64N(130*minute), window: w, why: "random"}
		case 1:
			e = eval{at: times[r.IntN(len(times))], window: w, why: "end on a sample"}
		case 2:
			e = eval{at: times[r.IntN(len(times))] + w, window: w, why: "start on a sample"}
		}
		e.qs = qs()
		es = append(es, e)
	}
	for _, w := range []int64{50 * minute, 100 * minute} {
		es = append(es, eval{at: d.base + 50*minute, window: w, qs: []float64{0.5}, why: "functions.test"})
	}
	es = append(es, eval{at: d.base + 51*minute, window: 50 * minute, qs: []float64{0.5}, why: "functions.test"})
	return es
}
