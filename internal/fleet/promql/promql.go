// Package promql is the arithmetic of the PromQL functions the scaler
// answers KEDA with — increase(), rate() and histogram_quantile() over
// classic buckets — done on the counter samples the scaler already holds,
// so that its answer is the number a Prometheus holding the same samples
// would give.
//
// # Which Prometheus
//
// The semantics are those of Prometheus 2.42 (Debian bookworm's
// prometheus 2.42.0+ds, the binary the oracle test runs), and the oracle
// test proves them against that binary. Prometheus 3.x differs in four
// places; a scaler that must agree with a 3.x server needs these changed:
//
//   - Range selection. 2.x selects the samples in the closed window
//     [end-range, end]; 3.0 made it left-open, (end-range, end], so a
//     sample exactly range before the evaluation time is no longer in it.
//   - Extrapolation towards zero. For a counter, 2.42 first shortens the
//     extrapolation at the window's start to where the counter would have
//     been zero, and then compares that shortened duration with the 1.1
//     average-interval threshold, so a series that starts mid-window is
//     extrapolated all the way to its zero point when that lies within
//     1.1 intervals. Later versions (3.x) first cap a start beyond the
//     threshold at half an interval and then apply the zero point to the
//     capped value. Prometheus's own test shows it: 10+10x10 at 5m steps,
//     increase(x[100m]) at 50m is 110 here and 105 in 3.x.
//   - Start timestamps. 3.x can also detect a counter reset from a
//     sample's created (start) timestamp; 2.42 only sees a reset where the
//     value drops, as here.
//   - histogram_quantile. 2.42 forces the buckets monotonic with a plain
//     running maximum (ensureMonotonic); 3.x first snaps bucket counts that
//     differ by a relative 1e-12 or less to the one below
//     (correctPrecisionErrors), which can change the chosen bucket when
//     float sums of rates almost tie. 3.x also sums with Kahan
//     compensation in sum(); 2.42, like the scaler, adds in order.
//
// Native histograms, offset and @ are not handled: the scaler does not
// use them.
package promql

import (
	"math"
	"time"
)

// Point is one sample: T in milliseconds since the Unix epoch, V its value.
type Point struct {
	T int64
	V float64
}

// staleNaN is Prometheus's staleness marker (value.StaleNaN): a NaN with
// this bit pattern ends a series and is never part of a range.
const staleNaN uint64 = 0x7ff0000000000002

// Increase is PromQL's increase(s[rng]) evaluated at end (milliseconds since
// the epoch) over the samples points of the series s. ok is false where
// PromQL has no value: fewer than two samples in the window.
//
// points must be sorted by T, each T once, as a TSDB series is (they are
// not copied, and an unsorted slice gives a meaningless answer: the window
// is found by binary search). They may extend beyond the window on either
// side. The window is the closed [end-rng, end] of Prometheus 2.x (see the
// package comment); staleness markers in it are skipped, as the engine
// skips them. rng is taken in whole milliseconds, as PromQL durations are;
// rng <= 0 has no value (PromQL rejects such a range).
//
// The counter-reset correction and the extrapolation to the window's
// edges are extrapolatedRate's, operation for operation, so the result is
// the same float64, not merely a close one.
func Increase(points []Point, end int64, rng time.Duration) (v float64, ok bool) {
	return extrapolatedRate(points, end, rng, false)
}

// Rate is PromQL's rate(s[rng]): Increase divided by rng in seconds, with
// the division folded into the extrapolation factor as Prometheus does it.
// Its arguments and ok are Increase's.
func Rate(points []Point, end int64, rng time.Duration) (v float64, ok bool) {
	return extrapolatedRate(points, end, rng, true)
}

// extrapolatedRate is promql.extrapolatedRate of Prometheus 2.42 for a
// float counter (isCounter true), given the whole series rather than the
// engine's selected range.
func extrapolatedRate(points []Point, end int64, rng time.Duration, isRate bool) (float64, bool) {
	if rng <= 0 {
		return 0, false
	}
	start := end - rng.Milliseconds() // durationMilliseconds truncates as this does
	lo, hi := search(points, start, false), search(points, end, true)
	if hi < lo { // start wrapped around: an end near the int64 minimum
		return 0, false
	}
	in := points[lo:hi]

	// The first and last samples that are not staleness markers, and how
	// many samples there are.
	first, last := -1, -1
	n := 0
	for i := range in {
		if math.Float64bits(in[i].V) == staleNaN {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
		n++
	}
	if n < 2 {
		return 0, false
	}
	f, l := in[first], in[last]

	// resultValue starts as last - first and then gains each reset's
	// previous value in order: the same additions as Prometheus, in the
	// same order, so the same rounding.
	result := l.V - f.V
	prev := f.V
	for _, p := range in[first+1 : last+1] {
		if math.Float64bits(p.V) == staleNaN {
			continue
		}
		if p.V < prev {
			result += prev
		}
		prev = p.V
	}

	durationToStart := float64(f.T-start) / 1000
	durationToEnd := float64(end-l.T) / 1000
	sampledInterval := float64(l.T-f.T) / 1000
	averageDurationBetweenSamples := sampledInterval / float64(n-1)

	if result > 0 && f.V >= 0 {
		// A counter is not negative: extrapolate no further back than
		// where it would have been zero. In 2.42 this comes before the
		// threshold test (see the package comment).
		durationToZero := sampledInterval * (f.V / result)
		if durationToZero < durationToStart {
			durationToStart = durationToZero
		}
	}

	// Extrapolate to an edge that is within 1.1 average intervals of the
	// first or last sample; otherwise the series starts or ends inside the
	// window, and only half an interval is added.
	extrapolationThreshold := averageDurationBetweenSamples * 1.1
	extrapolateToInterval := sampledInterval
	if durationToStart < extrapolationThreshold {
		extrapolateToInterval += durationToStart
	} else {
		extrapolateToInterval += averageDurationBetweenSamples / 2
	}
	if durationToEnd < extrapolationThreshold {
		extrapolateToInterval += durationToEnd
	} else {
		extrapolateToInterval += averageDurationBetweenSamples / 2
	}
	factor := extrapolateToInterval / sampledInterval
	if isRate {
		factor /= rng.Seconds()
	}
	return result * factor, true
}

// search returns the index of the first point with T >= t (T > t if
// after), len(points) if none: sort.Search without the closure.
func search(points []Point, t int64, after bool) int {
	lo, hi := 0, len(points)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if points[m].T < t || after && points[m].T == t {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
