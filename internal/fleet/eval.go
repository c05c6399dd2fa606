package fleet

import (
	"slices"
	"time"
)

// How a trigger's value is made, documented in docs/stream-and-scaler.md:
//
//   - A pod's value on a device is its own share (the agent's per-process
//     attribution: the sums over the pod's processes, 0 for a pod with no
//     process there) where the agent sent one, the device's reading where
//     it did not. Two pods time-sharing a GPU at 30% and 50% SM are at 30
//     and 50, not both at the device's 80.
//   - A pod's latest value is the mean of its values on the devices it
//     holds (a pod with two GPUs at 40 and 80 is at 60).
//   - avg, max and p95 reduce the matching pods' values; sum adds them.
//   - With a window, avg, max and p95 reduce every sample of the matching
//     pods within the last window of each node's clock (a 300 ms spike
//     between two snapshots counts for max), and sum adds each pod's mean
//     over the window. A device's utilizations use the driver's hardware
//     samples when the agent sent them, the snapshots' values otherwise;
//     the framebuffer and encoder fps and latency use the snapshots'
//     values; a pod's own share has one point per snapshot.

// partial is one node's share of a query: computed from the node's view
// alone, so an aggregate recomputes only the node that changed.
type partial struct {
	matched   int // matching pods
	withValue int // of which with a value
	sum       float64
	n         int
	max       float64
	vals      []float64 // p95 only
	valsHint  int       // vals' first capacity

	received   time.Time
	staleAfter time.Duration
}

func (p *partial) add(a Aggregation, v float64) {
	if p.n == 0 || v > p.max {
		p.max = v
	}
	p.sum += v
	p.n++
	if a == P95 {
		if p.vals == nil {
			// Sized once: a p95 partial is made for every snapshot of every
			// node, and growing it from nothing took four allocations.
			p.vals = make([]float64, 0, p.valsHint)
		}
		p.vals = append(p.vals, v)
	}
}

func (s *Store) partial(q *Query, v *view) partial { return s.partialMatching(q, v, nil) }

// partialMatching is partial with q's verdict on v's pods known: match[i]
// for v.pods[i], or nil to ask q.
func (s *Store) partialMatching(q *Query, v *view, match []bool) partial {
	p := partial{received: v.received, staleAfter: s.staleAfter(v)}
	horizon := v.sampleTime - int64(q.Window/time.Microsecond)
	if q.Aggregation == P95 {
		p.valsHint = len(v.pods) // a value per pod; a window's samples grow it
	}
	for i := range v.pods {
		pd := &v.pods[i]
		if match != nil && !match[i] || match == nil && !q.Matches(pd.namespace, pd.name) {
			continue
		}
		p.matched++
		var sum float64
		var n int
		for k, di := range pd.devices {
			d := &v.devices[di]
			// The pod's own share where the agent sent one, the device's
			// value where not (no per-process data).
			val, has, series := d.values[q.Metric], d.has&(1<<q.Metric) != 0, d.series[q.Metric]
			if pd.shares != nil {
				if sh := &pd.shares[k]; sh.has&(1<<q.Metric) != 0 {
					val, has, series = sh.values[q.Metric], true, sh.series[q.Metric]
				}
			}
			if q.Window > 0 {
				if pts := window(series, horizon); len(pts) > 0 {
					for _, pt := range pts {
						sum += pt.v
						n++
						if q.Aggregation != Sum {
							p.add(q.Aggregation, pt.v)
						}
					}
					continue
				}
				// No history yet (the window was just asked for): the
				// latest reading stands for the window.
				if has && q.Aggregation != Sum {
					p.add(q.Aggregation, val)
				}
			}
			if has {
				sum += val
				n++
			}
		}
		if n == 0 {
			continue
		}
		p.withValue++
		if q.Window == 0 || q.Aggregation == Sum {
			p.add(q.Aggregation, sum/float64(n))
		}
	}
	return p
}

// window returns the points at or after horizon; series are sorted by
// time, so a binary search finds the start.
func window(ps []point, horizon int64) []point {
	i, _ := slices.BinarySearchFunc(ps, horizon, func(p point, t int64) int {
		switch {
		case p.t < t:
			return -1
		case p.t > t:
			return 1
		}
		return 0
	})
	return ps[i:]
}

// combine reduces the nodes' partials to the answer, dropping the stale
// ones.
func combine(q *Query, parts func(yield func(*partial) bool), now time.Time) (Result, error) {
	var total partial
	var fresh, matchedFresh, matchedStale int
	for p := range parts {
		if now.Sub(p.received) > p.staleAfter {
			matchedStale += p.matched
			continue
		}
		fresh++
		matchedFresh += p.matched
		if p.n == 0 {
			continue
		}
		total.withValue += p.withValue
		if total.n == 0 || p.max > total.max {
			total.max = p.max
		}
		total.sum += p.sum
		total.n += p.n
		total.vals = append(total.vals, p.vals...)
	}
	switch {
	case fresh == 0:
		return Result{}, ErrNoAgents
	case total.withValue > 0:
		return Result{Value: reduce(q.Aggregation, &total), Pods: total.withValue, Nodes: fresh}, nil
	case matchedFresh > 0:
		return Result{}, ErrNoReading
	case matchedStale > 0:
		return Result{}, ErrStale
	}
	return Result{Nodes: fresh}, nil // no matching pod, healthy agents: a real 0
}

func reduce(a Aggregation, p *partial) float64 {
	switch a {
	case Max:
		return p.max
	case Sum:
		return p.sum
	case P95:
		return p95(p.vals)
	}
	return p.sum / float64(p.n)
}

// Evaluate answers a query from memory: no I/O, no lock shared with
// ingest. It fails with ErrNoAgents, ErrStale or ErrNoReading when the
// data behind the answer is missing; 0 with no error means no pod
// matches while agents are reporting.
func (s *Store) Evaluate(q *Query) (Result, error) {
	if q.App != nil {
		return s.evalApp(q)
	}
	nodes := *s.nodes.Load()
	now := s.now()
	var p partial // one, reused: combine reads each part before the next
	res, err := combine(q, func(yield func(*partial) bool) {
		for _, n := range nodes {
			v := n.view.Load()
			if v == nil {
				continue
			}
			p = s.partial(q, v)
			if !yield(&p) {
				return
			}
		}
	}, now)
	return res, err
}
