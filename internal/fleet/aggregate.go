package fleet

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// An aggregate is a query kept answered: every node's partial, recomputed
// when the node's snapshot arrives, and their running total, so that
// GetMetrics and IsActive read an answer instead of evaluating 8,000 pods
// (and, with a window, every sample of them) on every poll, and
// StreamIsActive learns of a crossing on the ingest that causes it.
//
// The cost moves to ingest: one partial per aggregate per snapshot, about
// a microsecond for a node of 8 pods. At 1,000 nodes at 4 Hz that is 4,000
// partials a second per aggregate, where Evaluate costs 1,000 partials per
// poll: the trade pays above 4 polls a second, and always in latency. The
// number of aggregates is bounded (maxAggregates); past it, Answer
// evaluates.
//
// Staleness is time's doing, not a snapshot's: an answer first moves the
// nodes silent past their timeout out of the total, which is a scan of the
// entries only when the earliest deadline has passed (bound), about once
// per sampling interval. Windows need nothing of the kind: a window ends
// at its node's last sample time, which moves only with a snapshot, so a
// partial computed on ingest is the one Evaluate would compute until the
// node's next snapshot or its staleness.

// maxAggregates bounds the polled queries kept answered: each costs a
// partial per snapshot of every node.
const maxAggregates = 128

// aggregateIdle is how long a polled aggregate outlives its last poll. The
// HPA polls every 15 s and KEDA's IsActive every 30 s by default; a
// trigger unpolled for this long was deleted or edited.
const aggregateIdle = 10 * time.Minute

// aggregateSet is the store's aggregates, one per distinct query
// (whatever its target), whether polled, watched or both.
type aggregateSet struct {
	mu    sync.Mutex
	byKey map[string]*aggregate
	list  atomic.Pointer[[]*aggregate] // read on every ingest, without mu
}

type aggregate struct {
	q *Query

	mu      sync.Mutex
	entries []entry // every node with a view
	index   map[*node]int
	// total sums the fresh entries' partials; its max is exact unless
	// maxDirty (the node that held it left or fell; recomputed on read).
	total        partial
	maxDirty     bool
	fresh        int // fresh entries (nodes)
	matchedFresh int
	matchedStale int
	bound        int64 // at most the earliest deadline of a fresh entry
	polled       bool
	lastPolled   int64     // ns since the store's base
	watches      []*watch  // StreamIsActive subscribers, by activation target
	scratch      []float64 // p95's values, reused
}

type entry struct {
	n        *node
	v        *view // the view p was computed from
	p        partial
	deadline int64 // ns since the store's base: stale after it
	stale    bool
	memo     podMatches
}

// podMatches is a query's verdict on a node's pods, kept with the node's
// entry. A node's pods are the same snapshot after snapshot, and comparing
// their names costs a fraction of asking the query: its sync.Map lookup
// was 70% of an aggregate's ingest in BenchmarkFanIn's profile.
type podMatches struct {
	pods  []pod
	match []bool
}

// of returns the verdict on pods: m's when they have m's names.
func (m podMatches) of(q *Query, pods []pod) podMatches {
	if len(m.pods) == len(pods) && m.match != nil {
		same := true
		for i := range pods {
			if pods[i].name != m.pods[i].name || pods[i].namespace != m.pods[i].namespace {
				same = false
				break
			}
		}
		if same {
			return m
		}
	}
	m = podMatches{pods: pods, match: make([]bool, len(pods))}
	for i := range pods {
		m.match[i] = q.Matches(pods[i].namespace, pods[i].name)
	}
	return m
}

// watch is the StreamIsActive subscribers of one activation target.
type watch struct {
	activation float64
	active     bool
	subs       map[chan bool]struct{}
	// le counts the fresh entries' values at or below activation (p95
	// only): the nearest rank k is above activation exactly when fewer
	// than k values are at or below it, so a p95 watcher needs no
	// selection over every value on every snapshot.
	le int
}

// countLE counts the values at or below t in sort's order (NaN first),
// the order p95 selects in.
func countLE(vals []float64, t float64) int {
	n := 0
	for _, v := range vals {
		if cmp.Compare(v, t) <= 0 {
			n++
		}
	}
	return n
}

func (as *aggregateSet) init() {
	as.byKey = make(map[string]*aggregate)
	as.list.Store(&[]*aggregate{})
}

func (as *aggregateSet) publish() {
	l := make([]*aggregate, 0, len(as.byKey))
	for _, a := range as.byKey {
		l = append(l, a)
	}
	as.list.Store(&l)
}

// acquire returns q's aggregate, built from every node's view if new, or
// nil when bounded is set and maxAggregates are kept; as.mu held. Building
// holds a.mu before a is published, so an ingest that sees a waits for it
// and then applies its node's latest view.
func (as *aggregateSet) acquire(s *Store, q *Query, bounded bool) *aggregate {
	if a, ok := as.byKey[q.key]; ok {
		return a
	}
	if bounded && len(as.byKey) >= maxAggregates {
		return nil
	}
	now := s.nanos(s.now())
	a := &aggregate{q: q, index: make(map[*node]int), bound: math.MaxInt64, lastPolled: now}
	a.mu.Lock()
	defer a.mu.Unlock()
	as.byKey[q.key] = a
	as.publish()
	for _, n := range *s.nodes.Load() {
		if v := n.view.Load(); v != nil {
			a.set(n, v, s.partial(q, v), s.deadline(v), now)
		}
	}
	return a
}

// Answer is Evaluate's answer, read from q's aggregate (made on the first
// call). Staleness is judged now, as Evaluate judges it.
//
// Every call keeps q's trigger live (demand.go): a trigger new to the
// agents' subscription fails with ErrPending until they have answered
// the one that serves it.
func (s *Store) Answer(q *Query) (Result, error) {
	now := s.nanos(s.now())
	lt := s.demand.use(q, now, 0)
	if q.App != nil {
		if !s.demand.ready(lt) {
			return Result{}, ErrPending
		}
		return s.evalApp(q)
	}
	as := &s.aggs
	as.mu.Lock()
	a := as.acquire(s, q, true) // kept from now, pending or not
	as.mu.Unlock()
	if !s.demand.ready(lt) {
		return Result{}, ErrPending
	}
	if a == nil {
		return s.Evaluate(q)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.polled, a.lastPolled = true, now
	return a.answer(now)
}

// Aggregates is the number of queries kept answered.
func (s *Store) Aggregates() int { return len(*s.aggs.list.Load()) }

// nanos is t on the store's own scale: int64 nanoseconds from its base,
// so that deadlines fit in an entry and compare as Evaluate's Sub does.
func (s *Store) nanos(t time.Time) int64 { return int64(t.Sub(s.base)) }

// deadline is the last instant at which v's node is fresh: stale when
// now - received > staleAfter, as in combine.
func (s *Store) deadline(v *view) int64 { return s.nanos(v.received) + int64(s.staleAfter(v)) }

// onIngest brings every aggregate up to n's new view, and tells the
// watchers of a transition: the crossing is seen by the goroutine that
// received the snapshot.
func (as *aggregateSet) onIngest(s *Store, n *node) {
	for _, a := range *as.list.Load() {
		a.ingest(s, n)
	}
}

func (a *aggregate) ingest(s *Store, n *node) {
	v := n.view.Load()
	a.mu.Lock()
	var memo podMatches
	if i, ok := a.index[n]; ok {
		memo = a.entries[i].memo
	}
	a.mu.Unlock()
	var p partial
	for {
		memo = memo.of(a.q, v.pods)
		p = s.partialMatching(a.q, v, memo.match) // outside the lock: the expensive part
		a.mu.Lock()
		cur := n.view.Load()
		if cur == v {
			break
		}
		// A newer snapshot of the node (a second address) raced this one:
		// apply the newest, never an older one over it.
		a.mu.Unlock()
		v = cur
	}
	defer a.mu.Unlock()
	i, ok := a.index[n]
	switch {
	case n.forgotten.Load():
		// Swept while this snapshot was in flight: the node is gone, and
		// its name's next snapshot makes a new node.
		if ok {
			a.remove(n)
		}
		return
	case ok && a.entries[i].v == v:
		return // applied by the ingest it raced
	}
	// The node was just heard from: fresh, whatever now is.
	a.set(n, v, p, s.deadline(v), s.nanos(v.received))
	a.entries[a.index[n]].memo = memo
	if len(a.watches) > 0 {
		a.notify(s.nanos(s.now()))
	}
}

// set makes n's entry v's partial p; a.mu held.
func (a *aggregate) set(n *node, v *view, p partial, deadline, now int64) {
	i, ok := a.index[n]
	if ok {
		a.leave(&a.entries[i])
	} else {
		i = len(a.entries)
		a.entries = append(a.entries, entry{n: n})
		a.index[n] = i
	}
	e := &a.entries[i]
	e.v, e.p, e.deadline, e.stale = v, p, deadline, now > deadline
	a.join(e)
}

// remove drops n's entry; a.mu held.
func (a *aggregate) remove(n *node) {
	i, ok := a.index[n]
	if !ok {
		return
	}
	a.leave(&a.entries[i])
	last := len(a.entries) - 1
	if i != last {
		a.entries[i] = a.entries[last]
		a.index[a.entries[i].n] = i
	}
	a.entries[last] = entry{}
	a.entries = a.entries[:last]
	delete(a.index, n)
}

// join adds e to the counts, as fresh or stale.
func (a *aggregate) join(e *entry) {
	p := &e.p
	if e.stale {
		a.matchedStale += p.matched
		return
	}
	a.fresh++
	a.matchedFresh += p.matched
	a.bound = min(a.bound, e.deadline)
	if p.n == 0 {
		return
	}
	a.total.withValue += p.withValue
	a.total.sum += p.sum
	for _, w := range a.watches {
		w.le += countLE(p.vals, w.activation) // p95 only: vals is nil otherwise
	}
	// A max at or above the total's is the max even when the total's is
	// dirty: the dirty one is at least every remaining entry's.
	if a.total.n == 0 || p.max >= a.total.max {
		a.total.max = p.max
		a.maxDirty = false
	}
	a.total.n += p.n
}

// leave takes e out of the counts.
func (a *aggregate) leave(e *entry) {
	p := &e.p
	if e.stale {
		a.matchedStale -= p.matched
		return
	}
	a.fresh--
	a.matchedFresh -= p.matched
	if p.n == 0 {
		return
	}
	a.total.withValue -= p.withValue
	a.total.sum -= p.sum
	for _, w := range a.watches {
		w.le -= countLE(p.vals, w.activation)
	}
	a.total.n -= p.n
	switch {
	case a.total.n == 0:
		a.maxDirty = false
	case p.max >= a.total.max:
		a.maxDirty = true // it held the max: another entry may hold it now
	}
}

// expire moves the entries silent past their deadline out of the total,
// and sets bound to the earliest deadline left; a.mu held.
func (a *aggregate) expire(now int64) {
	a.bound = math.MaxInt64
	for i := range a.entries {
		e := &a.entries[i]
		if e.stale {
			continue
		}
		if now > e.deadline {
			a.leave(e)
			e.stale = true
			a.join(e)
			continue
		}
		a.bound = min(a.bound, e.deadline)
	}
}

// recompute rebuilds the counts from the entries: the running sum drifts
// by a rounding error per snapshot, and the sweep calls this every second.
func (a *aggregate) recompute(now int64) {
	a.total, a.maxDirty = partial{}, false
	a.fresh, a.matchedFresh, a.matchedStale = 0, 0, 0
	for _, w := range a.watches {
		w.le = 0
	}
	a.bound = math.MaxInt64
	for i := range a.entries {
		e := &a.entries[i]
		e.stale = now > e.deadline
		a.join(e)
	}
}

// answer is combine's, from the counts; a.mu held.
func (a *aggregate) answer(now int64) (Result, error) {
	if now > a.bound {
		a.expire(now)
	}
	switch {
	case a.fresh == 0:
		return Result{}, ErrNoAgents
	case a.total.withValue > 0:
		return Result{Value: a.value(), Pods: a.total.withValue, Nodes: a.fresh}, nil
	case a.matchedFresh > 0:
		return Result{}, ErrNoReading
	case a.matchedStale > 0:
		return Result{}, ErrStale
	}
	return Result{Nodes: a.fresh}, nil
}

func (a *aggregate) value() float64 {
	switch a.q.Aggregation {
	case Max:
		if a.maxDirty {
			a.total.max, a.maxDirty = math.Inf(-1), false
			first := true
			for i := range a.entries {
				if e := &a.entries[i]; !e.stale && e.p.n > 0 && (first || e.p.max > a.total.max) {
					a.total.max, first = e.p.max, false
				}
			}
		}
		return a.total.max
	case P95:
		// The one reduction that needs every value: a selection, linear
		// in the matching pods (or samples), not a sort.
		a.scratch = a.scratch[:0]
		for i := range a.entries {
			if e := &a.entries[i]; !e.stale {
				a.scratch = append(a.scratch, e.p.vals...)
			}
		}
		return p95(a.scratch)
	}
	return reduce(a.q.Aggregation, &a.total)
}

// notify tells the watchers of a transition; a.mu held. No data behind
// the answer is inactive: KEDA acts only on true, and scale-in goes
// through GetMetrics, which reports the error.
func (a *aggregate) notify(now int64) {
	for _, w := range a.watches {
		active := a.active(now, w)
		if active == w.active {
			continue
		}
		w.active = active
		for c := range w.subs {
			select { // replace an unread state with the newest
			case <-c:
			default:
			}
			c <- active
		}
	}
}

// active is whether w's trigger is active now: its answer above the
// activation target, as Answer would give it; a.mu held.
func (a *aggregate) active(now int64, w *watch) bool {
	if a.q.Aggregation != P95 {
		res, err := a.answer(now)
		return err == nil && res.Value > w.activation
	}
	if now > a.bound {
		a.expire(now)
	}
	// As answer, without the selection: no fresh node or no value is
	// inactive (an error, or a real 0, which no target >= 0 is below).
	if a.fresh == 0 || a.total.withValue == 0 {
		return false
	}
	return w.le < int(math.Ceil(0.95*float64(a.total.n)))
}

// Watch subscribes to q's activity: active is its state now, and ch gets
// every later transition, latest first (a reader that falls behind gets
// the newest state, never a stale one). Call cancel when done.
//
// While it is open, q's trigger is live, and pushed: the agents are asked
// for every snapshot.
func (s *Store) Watch(q *Query) (active bool, ch <-chan bool, cancel func()) {
	s.demand.use(q, s.nanos(s.now()), 1)
	var once sync.Once
	done := func() { once.Do(func() { s.demand.use(q, s.nanos(s.now()), -1) }) }
	active, ch, stop := s.watch(q)
	return active, ch, func() { stop(); done() }
}

func (s *Store) watch(q *Query) (active bool, ch <-chan bool, cancel func()) {
	if q.App != nil {
		return s.watchApp(q)
	}
	as := &s.aggs
	as.mu.Lock()
	defer as.mu.Unlock()
	a := as.acquire(s, q, false) // a stream is not refused: it would retry forever
	a.mu.Lock()
	defer a.mu.Unlock()
	i := slices.IndexFunc(a.watches, func(w *watch) bool { return w.activation == q.ActivationTarget })
	if i < 0 {
		i = len(a.watches)
		w := &watch{activation: q.ActivationTarget, subs: make(map[chan bool]struct{})}
		for j := range a.entries {
			if e := &a.entries[j]; !e.stale && e.p.n > 0 {
				w.le += countLE(e.p.vals, w.activation)
			}
		}
		a.watches = append(a.watches, w)
		w.active = a.active(s.nanos(s.now()), w)
	}
	w := a.watches[i]
	c := make(chan bool, 1)
	w.subs[c] = struct{}{}
	return w.active, c, func() {
		as.mu.Lock()
		defer as.mu.Unlock()
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := w.subs[c]; !ok {
			return
		}
		delete(w.subs, c)
		if len(w.subs) == 0 {
			a.watches = slices.DeleteFunc(a.watches, func(x *watch) bool { return x == w })
		}
		if len(a.watches) == 0 && !a.polled && as.byKey[q.key] == a {
			delete(as.byKey, q.key)
			as.publish()
		}
	}
}

// Watchers is the number of distinct triggers (query and activation
// target) StreamIsActive waits on.
func (s *Store) Watchers() int {
	n := s.appWatchers()
	for _, a := range *s.aggs.list.Load() {
		a.mu.Lock()
		n += len(a.watches)
		a.mu.Unlock()
	}
	return n
}

// sweep drops the forgotten nodes and the aggregates neither watched nor
// polled for aggregateIdle, recomputes the totals (drift), and tells the
// watchers of transitions by silence alone.
func (as *aggregateSet) sweep(s *Store, forgotten []*node, now time.Time) {
	t := s.nanos(now)
	as.mu.Lock()
	defer as.mu.Unlock()
	dropped := false
	for key, a := range as.byKey {
		a.mu.Lock()
		if len(a.watches) == 0 && t-a.lastPolled > int64(aggregateIdle) {
			delete(as.byKey, key)
			dropped = true
			a.mu.Unlock()
			continue
		}
		for _, n := range forgotten {
			a.remove(n)
		}
		a.recompute(t)
		if len(a.watches) > 0 {
			a.notify(t)
		}
		a.mu.Unlock()
	}
	if dropped {
		as.publish()
	}
}

// p95 is the nearest rank: the smallest value with at least 95% at or
// below it. It reorders vs.
func p95(vs []float64) float64 {
	return kth(vs, int(math.Ceil(0.95*float64(len(vs))))-1)
}

// kth returns what slices.Sort would put at vs[k] (NaN first), by
// Hoare's selection: linear on average where the sort is n log n. It
// reorders vs.
func kth(vs []float64, k int) float64 {
	lo, hi := 0, len(vs)-1
	for lo < hi {
		mid := lo + (hi-lo)/2
		// Median of three: sorted input, common here, stays linear.
		if cmp.Less(vs[mid], vs[lo]) {
			vs[lo], vs[mid] = vs[mid], vs[lo]
		}
		if cmp.Less(vs[hi], vs[lo]) {
			vs[lo], vs[hi] = vs[hi], vs[lo]
		}
		if cmp.Less(vs[hi], vs[mid]) {
			vs[mid], vs[hi] = vs[hi], vs[mid]
		}
		pivot := vs[mid]
		i, j := lo, hi
		for i <= j {
			for cmp.Less(vs[i], pivot) {
				i++
			}
			for cmp.Less(pivot, vs[j]) {
				j--
			}
			if i <= j {
				vs[i], vs[j] = vs[j], vs[i]
				i++
				j--
			}
		}
		// vs[lo..j] <= pivot <= vs[i..hi], and between them the pivot.
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return vs[k]
		}
	}
	return vs[k]
}
