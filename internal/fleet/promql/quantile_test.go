package promql_test

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

var inf = math.Inf(1)

// buckets pairs bounds and counts.
func buckets(bounds []float64, counts ...float64) []promql.Bucket {
	b := make([]promql.Bucket, len(bounds))
	for i := range b {
		b[i] = promql.Bucket{UpperBound: bounds[i], Count: counts[i]}
	}
	return b
}

// TestHistogramQuantilePrometheusCases takes its expectations from
// Prometheus's promql/testdata/histograms.test: the histograms' buckets
// at 50m (or their rates over 5m), and what histogram_quantile gives.
func TestHistogramQuantilePrometheusCases(t *testing.T) {
	// testhistogram_bucket{start="positive"}: le 0.1, .2, 1e0, +Inf at
	// 0+5x10, 0+7x10, 0+11x10, 0+12x10; {start="negative"}: le -.2,
	// -0.1, 0.3, +Inf at 0+1x10, 0+2x10, 0+2x10, 0+3x10.
	positive := buckets([]float64{0.1, 0.2, 1, inf}, 50, 70, 110, 120)
	negative := buckets([]float64{-0.2, -0.1, 0.3, inf}, 10, 20, 20, 30)
	// request_duration_seconds_bucket, le 0.1, 0.2, +Inf, rate over 5m of
	// a 5m load: sum by (le) and sum by (le, job).
	all := buckets([]float64{0.1, 0.2, inf}, 10.0/300, 19.0/300, 25.0/300)
	job1 := buckets([]float64{0.1, 0.2, inf}, 3.0/300, 8.0/300, 10.0/300)
	job2 := buckets([]float64{0.1, 0.2, inf}, 7.0/300, 11.0/300, 15.0/300)
	// nonmonotonic_bucket: le 0.1, 1, 10, 100, 1000, +Inf at 0+2x10,
	// 0+1x10, 0+5x10, 0+4x10, 0+9x10, 0+8x10.
	nonmonotonic := buckets([]float64{0.1, 1, 10, 100, 1000, inf}, 20, 10, 50, 40, 90, 80)
	for _, c := range []struct {
		name string
		q    float64
		b    []promql.Bucket
		want float64
	}{
		{"positive", -0.1, positive, math.Inf(-1)},
		{"negative", -0.1, negative, math.Inf(-1)},
		{"positive", 1.01, positive, inf},
		{"negative", 1.01, negative, inf},
		{"positive", 0, positive, 0},
		{"negative", 0, negative, -0.2},
		{"positive", 1, positive, 1},
		{"negative", 1, negative, 0.3},
		{"positive", 0.2, positive, 0.048},
		{"negative", 0.2, negative, -0.2},
		{"positive", 0.5, positive, 0.15},
		{"negative", 0.5, negative, -0.15},
		{"positive", 0.8, positive, 0.72},
		{"negative", 0.8, negative, 0.3},
		{"sum by (le)", 0.3, all, 0.075},
		{"sum by (le)", 0.5, all, 0.1277777777777778},
		{"sum by (le, job) job1", 0.3, job1, 0.1},
		{"sum by (le, job) job1", 0.5, job1, 0.14},
		{"sum by (le, job) job2", 0.3, job2, 0.0642857142857143},
		{"sum by (le, job) job2", 0.5, job2, 0.1125},
		{"nonmonotonic", 0.01, nonmonotonic, 0.0045},
		{"nonmonotonic", 0.5, nonmonotonic, 8.5},
		{"nonmonotonic", 0.99, nonmonotonic, 979.75},
	} {
		got := promql.HistogramQuantile(c.q, c.b)
		if got != c.want && math.Abs(got-c.want) > 1e-12*math.Abs(c.want) {
			t.Errorf("histogram_quantile(%v, %s) = %v, want %v", c.q, c.name, got, c.want)
		}
	}
}

func TestHistogramQuantileNaN(t *testing.T) {
	ok := buckets([]float64{1, 2, inf}, 1, 2, 3)
	for _, c := range []struct {
		name string
		q    float64
		b    []promql.Bucket
	}{
		{"q NaN", math.NaN(), ok},
		{"no buckets", 0.5, nil},
		{"no +Inf bucket", 0.5, buckets([]float64{1, 2, 3}, 1, 2, 3)},
		{"only +Inf", 0.5, buckets([]float64{inf}, 3)},
		{"only +Inf twice", 0.5, buckets([]float64{inf, inf}, 3, 4)},
		{"no observations", 0.5, buckets([]float64{1, 2, inf}, 0, 0, 0)},
	} {
		if got := promql.HistogramQuantile(c.q, c.b); !math.IsNaN(got) {
			t.Errorf("%s: %v, want NaN", c.name, got)
		}
	}
	// Out of range quantiles are ±Inf before the buckets are looked at.
	if got := promql.HistogramQuantile(-1, nil); !math.IsInf(got, -1) {
		t.Errorf("q < 0 without buckets: %v, want -Inf", got)
	}
	if got := promql.HistogramQuantile(2, buckets([]float64{1}, 1)); !math.IsInf(got, +1) {
		t.Errorf("q > 1 without a +Inf bucket: %v, want +Inf", got)
	}
}

func TestHistogramQuantileInput(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 500 {
		n := 1 + r.IntN(100) // past the stack buffer now and then
		var b []promql.Bucket
		c := 0.0
		for j := range n {
			c += math.Floor(r.ExpFloat64() * 10)
			b = append(b, promql.Bucket{UpperBound: float64(j) - 3, Count: c})
		}
		b[n-1].UpperBound = inf
		q := r.Float64()
		sorted := promql.HistogramQuantile(q, b)

		shuffled := slices.Clone(b)
		r.Shuffle(n, func(x, y int) { shuffled[x], shuffled[y] = shuffled[y], shuffled[x] })
		kept := slices.Clone(shuffled)
		if got := promql.HistogramQuantile(q, shuffled); got != sorted && !(math.IsNaN(got) && math.IsNaN(sorted)) {
			t.Fatalf("case %d: shuffled buckets give %v, sorted %v", i, got, sorted)
		}
		if !slices.Equal(shuffled, kept) {
			t.Fatalf("case %d: HistogramQuantile changed its input", i)
		}
		// A bucket split in two with the same bound is the same bucket.
		j := r.IntN(n)
		split := slices.Insert(slices.Clone(b), j, promql.Bucket{UpperBound: b[j].UpperBound, Count: 0})
		if got := promql.HistogramQuantile(q, split); got != sorted && !(math.IsNaN(got) && math.IsNaN(sorted)) {
			t.Fatalf("case %d: a duplicate bound gives %v, without %v", i, got, sorted)
		}
	}
}

// decodeBuckets makes buckets of fuzz input. With mode even, 3 bytes a
// bucket: a bound byte (int8/8, with 127 +Inf, -128 -Inf, 126 NaN) and a
// uint16 count (0xffff NaN); the small values give real histograms often.
// With mode odd, 16 bytes a bucket of raw float64s, anything at all.
func decodeBuckets(mode byte, data []byte) []promql.Bucket {
	var b []promql.Bucket
	if mode%2 == 1 {
		for ; len(data) >= 16; data = data[16:] {
			b = append(b, promql.Bucket{
				UpperBound: math.Float64frombits(binary.LittleEndian.Uint64(data)),
				Count:      math.Float64frombits(binary.LittleEndian.Uint64(data[8:])),
			})
		}
		return b
	}
	for ; len(data) >= 3; data = data[3:] {
		var x promql.Bucket
		switch v := int8(data[0]); v {
		case 127:
			x.UpperBound = inf
		case -128:
			x.UpperBound = math.Inf(-1)
		case 126:
			x.UpperBound = math.NaN()
		default:
			x.UpperBound = float64(v) / 8
		}
		if c := binary.LittleEndian.Uint16(data[1:]); c == 0xffff {
			x.Count = math.NaN()
		} else {
			x.Count = float64(c)
		}
		b = append(b, x)
	}
	return b
}

func FuzzHistogramQuantile(f *testing.F) {
	f.Add(0.5, byte(0), []byte{1, 10, 0, 8, 20, 0, 127, 30, 0})
	f.Add(0.99, byte(0), []byte{1, 20, 0, 8, 10, 0, 80, 50, 0, 127, 40, 0})
	f.Add(0.0, byte(0), []byte{0xf8, 5, 0, 0, 6, 0, 127, 9, 0})
	f.Add(1.0, byte(0), []byte{127, 0, 0, 127, 3, 0})
	f.Add(0.3, byte(0), []byte{8, 0xff, 0xff, 16, 2, 0, 127, 3, 0})
	f.Add(0.5, byte(1), make([]byte, 32))
	f.Add(math.NaN(), byte(0), []byte{127, 1, 0})
	f.Fuzz(func(t *testing.T, q float64, mode byte, data []byte) {
		b := decodeBuckets(mode, data)
		kept := slices.Clone(b)
		got := promql.HistogramQuantile(q, b)
		if !slices.EqualFunc(b, kept, func(x, y promql.Bucket) bool {
			return math.Float64bits(x.UpperBound) == math.Float64bits(y.UpperBound) && math.Float64bits(x.Count) == math.Float64bits(y.Count)
		}) {
			t.Fatal("HistogramQuantile changed its input")
		}
		switch {
		case math.IsNaN(q):
			if !math.IsNaN(got) {
				t.Fatalf("q NaN: %v", got)
			}
			return
		case q < 0:
			if !math.IsInf(got, -1) {
				t.Fatalf("q %v: %v, want -Inf", q, got)
			}
			return
		case q > 1:
			if !math.IsInf(got, +1) {
				t.Fatalf("q %v: %v, want +Inf", q, got)
			}
			return
		}
		checkRange(t, q, b, got)
	})
}

// checkRange checks what the rules say of a histogram without NaN,
// negative or huge counts and without NaN, -Inf or huge bounds (beyond
// those, Prometheus's arithmetic gives what it gives, and only the
// absence of a panic is asked for): NaN exactly where they say, else a
// value between the lowest bound (or 0) and the highest finite one.
func checkRange(t *testing.T, q float64, b []promql.Bucket, got float64) {
	t.Helper()
	const huge = 1e300
	sums := map[float64]float64{} // counts by bound, coalesced
	for _, x := range b {
		if math.IsNaN(x.Count) || x.Count < 0 || x.Count > huge ||
			math.IsNaN(x.UpperBound) || math.IsInf(x.UpperBound, -1) || math.Abs(x.UpperBound) > huge && !math.IsInf(x.UpperBound, 1) {
			return
		}
		sums[x.UpperBound] += x.Count
	}
	bounds := make([]float64, 0, len(sums))
	for ub := range sums {
		bounds = append(bounds, ub)
	}
	slices.Sort(bounds)
	observations := 0.0 // the envelope's last count: the largest
	for _, c := range sums {
		observations = max(observations, c)
	}
	var (
		hasInf = len(bounds) > 0 && math.IsInf(bounds[len(bounds)-1], 1)
		// Rank 0 in an empty first bucket interpolates 0/0.
		emptyFirst = len(bounds) > 1 && q*observations == 0 && sums[bounds[0]] == 0 && bounds[0] > 0
		wantNaN    = !hasInf || len(bounds) < 2 || observations == 0 || emptyFirst
	)
	if wantNaN != math.IsNaN(got) {
		t.Fatalf("q %v, buckets %v: %v; NaN expected: %v", q, b, got, wantNaN)
	}
	if wantNaN {
		return
	}
	lo, hi := math.Min(0, bounds[0]), bounds[len(bounds)-2]
	if !(got >= lo && got <= hi) {
		t.Fatalf("q %v, buckets %v: %v, outside [%v, %v]", q, b, got, lo, hi)
	}
}
