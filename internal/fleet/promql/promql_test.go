package promql_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

// load is promql test syntax's "load 5m" of values: a sample every step
// from 0.
func load(step time.Duration, values ...float64) []promql.Point {
	pts := make([]promql.Point, len(values))
	for i, v := range values {
		pts[i] = promql.Point{T: int64(i) * step.Milliseconds(), V: v}
	}
	return pts
}

// expand expands promql test syntax's a+bxn: a, a+b, ..., a+n*b.
func expand(a, b float64, n int) []float64 {
	vs := make([]float64, n+1)
	for i := range vs {
		vs[i] = a + float64(i)*b
	}
	return vs
}

// TestFunctionsTest takes its expectations from Prometheus's
// promql/testdata/functions.test, cases whose answer 2.x and 3.x share.
func TestFunctionsTest(t *testing.T) {
	foo := load(5*time.Minute, expand(0, 10, 10)...)                             // 0+10x10
	bar := load(5*time.Minute, append(expand(0, 10, 5), expand(0, 10, 5)...)...) // 0+10x5 0+10x5
	canary := load(5*time.Minute, expand(0, 80, 10)...)                          // 0+80x10
	at50m := (50 * time.Minute).Milliseconds()
	for _, c := range []struct {
		name string
		f    func([]promql.Point, int64, time.Duration) (float64, bool)
		pts  []promql.Point
		rng  time.Duration
		want float64
	}{
		{"increase(foo[50m])", promql.Increase, foo, 50 * time.Minute, 100},
		{"increase(bar[50m])", promql.Increase, bar, 50 * time.Minute, 90},
		{"increase(foo[100m])", promql.Increase, foo, 100 * time.Minute, 100},
		{"increase(bar[100m])", promql.Increase, bar, 100 * time.Minute, 90},
		{"rate(canary[50m])", promql.Rate, canary, 50 * time.Minute, 0.26666666666666666},
	} {
		got, ok := c.f(c.pts, at50m, c.rng)
		if !ok || math.Abs(got-c.want) > 1e-12*c.want {
			t.Errorf("%s at 50m = %v (ok %v), want %v", c.name, got, ok, c.want)
		}
	}
}

func TestIncreaseNoValue(t *testing.T) {
	stale := math.Float64frombits(0x7ff0000000000002)
	pts := load(15*time.Second, 1, 2, 3, 4) // at 0, 15s, 30s, 45s
	for _, c := range []struct {
		name string
		pts  []promql.Point
		end  int64
		rng  time.Duration
	}{
		{"no points", nil, 0, time.Minute},
		{"one point", pts[:1], 0, time.Minute},
		{"one point in the window", pts, 10_000, 10 * time.Second},
		{"window before the series", pts, -1, time.Minute},
		{"window after the series", pts, 106_000, time.Minute},
		{"a staleness marker as second point", []promql.Point{{0, 1}, {15_000, stale}}, 15_000, time.Minute},
		{"zero range", pts, 45_000, 0},
		{"negative range", pts, 45_000, -time.Minute},
		{"end at the int64 minimum", pts, math.MinInt64, time.Minute},
	} {
		for name, f := range map[string]func([]promql.Point, int64, time.Duration) (float64, bool){
			"Increase": promql.Increase, "Rate": promql.Rate,
		} {
			if v, ok := f(c.pts, c.end, c.rng); ok {
				t.Errorf("%s: %s = %v, want no value", c.name, name, v)
			}
		}
	}
}

// TestWindowIsClosed pins Prometheus 2.x's range selection: a sample
// exactly range before the evaluation time is in the window (3.x leaves
// it out).
func TestWindowIsClosed(t *testing.T) {
	pts := load(10*time.Second, 0, 10)
	if v, ok := promql.Increase(pts, 10_000, 10*time.Second); !ok || v != 10 {
		t.Errorf("samples at the window's start and end: %v, %v; want 10, true", v, ok)
	}
	if v, ok := promql.Increase(pts, 10_000, 10*time.Second-time.Millisecond); ok {
		t.Errorf("window a millisecond short of the first sample: %v, want no value", v)
	}
	if v, ok := promql.Increase(pts, 9_999, 10*time.Second); ok {
		t.Errorf("window ending a millisecond before the last sample: %v, want no value", v)
	}
}

// randomCounter returns a counter scraped about every 15 s for an hour,
// with resets, and a staleness marker or two.
func randomCounter(r *rand.Rand, stale bool) []promql.Point {
	var pts []promql.Point
	v := math.Floor(r.Float64() * 100)
	for t := r.Int64N(15_000); t < 3_600_000; t += 10_000 + r.Int64N(10_000) {
		if stale && r.IntN(30) == 0 {
			pts = append(pts, promql.Point{T: t, V: math.Float64frombits(0x7ff0000000000002)})
			continue
		}
		pts = append(pts, promql.Point{T: t, V: v})
		if r.IntN(20) == 0 {
			v = 0
		} else {
			v += r.ExpFloat64() * 5
		}
	}
	return pts
}

// window returns the points within [end-rng, end].
func window(pts []promql.Point, end int64, rng time.Duration) []promql.Point {
	var in []promql.Point
	for _, p := range pts {
		if p.T >= end-rng.Milliseconds() && p.T <= end {
			in = append(in, p)
		}
	}
	return in
}

func TestIncreaseProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		pts := randomCounter(r, i%2 == 0)
		end := r.Int64N(3_700_000)
		rng := time.Duration(1+r.Int64N(600_000)) * time.Millisecond
		inc, ok := promql.Increase(pts, end, rng)

		// Only the window counts.
		if v, wok := promql.Increase(window(pts, end, rng), end, rng); wok != ok || ok && v != inc {
			t.Fatalf("case %d: the window alone gives %v, %v; the series %v, %v", i, v, wok, inc, ok)
		}
		// Staleness markers are not samples.
		var fresh []promql.Point
		for _, p := range pts {
			if math.Float64bits(p.V) != 0x7ff0000000000002 {
				fresh = append(fresh, p)
			}
		}
		if v, fok := promql.Increase(fresh, end, rng); fok != ok || ok && v != inc {
			t.Fatalf("case %d: without staleness markers %v, %v; with %v, %v", i, v, fok, inc, ok)
		}
		if !ok {
			continue
		}
		// A reset counts as the counter going on from where it was: the
		// window's samples made monotonic give the same increase.
		w := window(fresh, end, rng)
		corrected := make([]promql.Point, len(w))
		offset, prev := 0.0, w[0].V
		for j, p := range w {
			if p.V < prev {
				offset += prev
			}
			prev = p.V
			corrected[j] = promql.Point{T: p.T, V: p.V + offset}
		}
		if v, _ := promql.Increase(corrected, end, rng); math.Abs(v-inc) > 1e-9*math.Abs(inc) {
			t.Fatalf("case %d: the reset-corrected series gives %v, the series %v", i, v, inc)
		}
		if inc < 0 {
			t.Fatalf("case %d: a non-negative counter's increase is %v", i, inc)
		}
		// rate is increase per second of the range.
		if rate, _ := promql.Rate(pts, end, rng); math.Abs(rate-inc/rng.Seconds()) > 1e-12*math.Abs(rate) {
			t.Fatalf("case %d: rate %v, increase/range %v", i, rate, inc/rng.Seconds())
		}
	}
}

func TestNoAllocations(t *testing.T) {
	pts := randomCounter(rand.New(rand.NewPCG(3, 4)), true)
	buckets := make([]promql.Bucket, 12)
	for i := range buckets {
		buckets[i] = promql.Bucket{UpperBound: float64(i), Count: float64(i * i)}
	}
	buckets[11].UpperBound = math.Inf(1)
	if n := testing.AllocsPerRun(100, func() {
		promql.Rate(pts, 1_800_000, 5*time.Minute)
		promql.HistogramQuantile(0.95, buckets)
	}); n != 0 {
		t.Errorf("%v allocations per Rate and HistogramQuantile, want 0", n)
	}
}
