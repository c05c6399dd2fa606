package promql_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

// benchCounter is an hour of a counter scraped every 15 s, resets and all:
// what the scaler holds of one series.
func benchCounter(seed uint64) []promql.Point {
	return randomCounter(rand.New(rand.NewPCG(seed, 0)), false)
}

// BenchmarkIncrease is one increase(x[5m]) over an hour of samples.
func BenchmarkIncrease(b *testing.B) {
	pts := benchCounter(1)
	end := pts[len(pts)-1].T
	for b.Loop() {
		promql.Increase(pts, end, 5*time.Minute)
	}
}

// BenchmarkRate is one rate(x[5m]) over an hour of samples.
func BenchmarkRate(b *testing.B) {
	pts := benchCounter(1)
	end := pts[len(pts)-1].T
	for b.Loop() {
		promql.Rate(pts, end, 5*time.Minute)
	}
}

// benchBuckets is a 12-bucket histogram (the client libraries' default
// bounds), sorted or not.
func benchBuckets(shuffle bool) []promql.Bucket {
	bounds := []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.Inf(1)}
	bs := make([]promql.Bucket, len(bounds))
	for i, ub := range bounds {
		bs[i] = promql.Bucket{UpperBound: ub, Count: float64(10 * (i + 1) * (i + 1))}
	}
	if shuffle {
		rand.New(rand.NewPCG(2, 0)).Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
	}
	return bs
}

func BenchmarkHistogramQuantile(b *testing.B) {
	for _, c := range []struct {
		name    string
		buckets []promql.Bucket
	}{{"sorted", benchBuckets(false)}, {"shuffled", benchBuckets(true)}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				promql.HistogramQuantile(0.95, c.buckets)
			}
		})
	}
}

// BenchmarkPoll is what one KEDA poll of histogram_quantile(0.95, sum by
// (le) (rate(x_bucket[5m]))) costs the scaler over two pods' 12 buckets:
// 24 rates, the sums and the quantile, into buffers it keeps.
func BenchmarkPoll(b *testing.B) {
	bounds := slices.Clone(benchBuckets(false))
	var pods [2][][]promql.Point
	for p := range pods {
		for i := range bounds {
			pods[p] = append(pods[p], benchCounter(uint64(100*p+i)))
		}
	}
	end := pods[0][0][len(pods[0][0])-1].T
	buckets := make([]promql.Bucket, 0, len(bounds))
	for b.Loop() {
		buckets = buckets[:0]
		for i, bk := range bounds {
			var sum float64
			for p := range pods {
				if v, ok := promql.Rate(pods[p][i], end, 5*time.Minute); ok {
					sum += v
				}
			}
			buckets = append(buckets, promql.Bucket{UpperBound: bk.UpperBound, Count: sum})
		}
		promql.HistogramQuantile(0.95, buckets)
	}
}
