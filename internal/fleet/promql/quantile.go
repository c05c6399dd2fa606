package promql

import (
	"math"
	"slices"
)

// Bucket is one classic histogram bucket: the le label's value and the
// cumulative count of observations at or below it (or, as the scaler
// uses it, that count's increase or rate over a window).
type Bucket struct {
	UpperBound, Count float64
}

// smallBuckets is how many buckets HistogramQuantile sorts on the stack;
// more are copied to the heap. Classic histograms rarely pass 30.
const smallBuckets = 32

// HistogramQuantile is PromQL's histogram_quantile(q, ...) over the
// classic buckets of one histogram: one bucket per le, counts cumulative,
// as sum by (le) (rate(x_bucket[w])) gives them. buckets need not be
// sorted and are not modified; buckets with the same upper bound (le="1"
// and le="1.0" are the same number) are added together, as Prometheus
// does.
//
// It is bucketQuantile of Prometheus 2.42, with its special cases:
//
//   - q NaN: NaN; q < 0: -Inf; q > 1: +Inf (whatever the buckets).
//   - no +Inf bucket, fewer than two distinct upper bounds, or no
//     observations (the +Inf count is 0): NaN.
//   - counts that fall with a rising bound (two series of a sum scraped at
//     different times) are raised to the running maximum first.
//   - a rank in the +Inf bucket: the second-highest upper bound.
//   - a rank in the first bucket: interpolated from 0 if its bound is
//     positive, else that bound itself.
//
// Otherwise the quantile is interpolated linearly within its bucket.
// No buckets at all is NaN here; PromQL has no series to answer then.
func HistogramQuantile(q float64, buckets []Bucket) float64 {
	switch {
	case math.IsNaN(q):
		return math.NaN()
	case q < 0:
		return math.Inf(-1)
	case q > 1:
		return math.Inf(+1)
	case len(buckets) == 0:
		return math.NaN()
	}
	// Prometheus sorts, coalesces and fixes the buckets in place; a copy
	// keeps the caller's slice as it was, on the stack where it fits.
	var stack [smallBuckets]Bucket
	var b []Bucket
	if len(buckets) <= len(stack) {
		b = stack[:len(buckets)]
	} else {
		b = make([]Bucket, len(buckets))
	}
	copy(b, buckets)
	sortBuckets(b)
	if !math.IsInf(b[len(b)-1].UpperBound, +1) {
		return math.NaN()
	}
	b = coalesceBuckets(b)
	ensureMonotonic(b)
	if len(b) < 2 {
		return math.NaN()
	}
	observations := b[len(b)-1].Count
	if observations == 0 {
		return math.NaN()
	}
	rank := q * observations
	i := searchRank(b[:len(b)-1], rank)
	if i == len(b)-1 {
		return b[len(b)-2].UpperBound
	}
	if i == 0 && b[0].UpperBound <= 0 {
		return b[0].UpperBound
	}
	var (
		bucketStart float64
		bucketEnd   = b[i].UpperBound
		count       = b[i].Count
	)
	if i > 0 {
		bucketStart = b[i-1].UpperBound
		count -= b[i-1].Count
		rank -= b[i-1].Count
	}
	return bucketStart + (bucketEnd-bucketStart)*(rank/count)
}

// sortBuckets sorts by upper bound with Prometheus's comparison (<, so a
// NaN bound lands wherever the sort leaves it). Insertion sort, stable
// and without allocation, is the fast one for the few buckets of a
// classic histogram, which the scaler moreover keeps sorted already.
func sortBuckets(b []Bucket) {
	if len(b) > smallBuckets {
		slices.SortStableFunc(b, func(x, y Bucket) int {
			switch {
			case x.UpperBound < y.UpperBound:
				return -1
			case y.UpperBound < x.UpperBound:
				return +1
			}
			return 0
		})
		return
	}
	for i := 1; i < len(b); i++ {
		for j := i; j > 0 && b[j].UpperBound < b[j-1].UpperBound; j-- {
			b[j], b[j-1] = b[j-1], b[j]
		}
	}
}

// coalesceBuckets adds up the counts of sorted buckets with the same
// upper bound (promql.coalesceBuckets).
func coalesceBuckets(b []Bucket) []Bucket {
	last := b[0]
	i := 0
	for _, x := range b[1:] {
		if x.UpperBound == last.UpperBound {
			last.Count += x.Count
		} else {
			b[i] = last
			last = x
			i++
		}
	}
	b[i] = last
	return b[:i+1]
}

// ensureMonotonic raises each count to the largest before it
// (promql.ensureMonotonic of 2.42): the envelope of a histogram whose
// buckets were summed from series sampled at different times.
func ensureMonotonic(b []Bucket) {
	max := b[0].Count
	for i := 1; i < len(b); i++ {
		switch {
		case b[i].Count > max:
			max = b[i].Count
		case b[i].Count < max:
			b[i].Count = max
		}
	}
}

// searchRank is sort.Search(len(b), func(i) bool { return b[i].Count >=
// rank }) with the same probes, so that NaN counts, which break the
// order the search assumes, give Prometheus's answer too.
func searchRank(b []Bucket, rank float64) int {
	i, j := 0, len(b)
	for i < j {
		h := int(uint(i+j) >> 1)
		if !(b[h].Count >= rank) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i
}
