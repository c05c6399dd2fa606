package scaler

import (
	"strconv"
	"sync"
	"sync/atomic"
)

// watcherSet holds the queries that StreamIsActive subscribers wait on,
// one watcher per distinct query however many streams share it.
type watcherSet struct {
	mu    sync.Mutex
	byKey map[string]*watcher
	list  atomic.Pointer[[]*watcher] // read on every ingest, without mu
}

type watcher struct {
	q   *Query
	key string

	mu    sync.Mutex
	parts map[*node]partial // fresh nodes with matching pods
	// total is the parts' running sum, count and max, updated by the
	// difference on every ingest: combining a thousand nodes' parts on
	// every snapshot would cost more than the rest of the ingest. The
	// sweep recomputes it from scratch (float drift, stale nodes).
	total  partial
	active bool
	subs   map[chan bool]struct{}
}

func (ws *watcherSet) init() {
	ws.byKey = make(map[string]*watcher)
	ws.list.Store(&[]*watcher{})
}

func (ws *watcherSet) publish() {
	l := make([]*watcher, 0, len(ws.byKey))
	for _, w := range ws.byKey {
		l = append(l, w)
	}
	ws.list.Store(&l)
}

// Watch subscribes to q's activity: active is its state now, and ch gets
// every later transition, latest first (a reader that falls behind gets
// the newest state, never a stale one). Call cancel when done.
func (s *Store) Watch(q *Query) (active bool, ch <-chan bool, cancel func()) {
	ws := &s.watchers
	key := q.MetricName() + "\x00" + strconv.FormatFloat(q.ActivationTarget, 'g', -1, 64)
	ws.mu.Lock()
	w, ok := ws.byKey[key]
	if !ok {
		w = &watcher{q: q, key: key, parts: make(map[*node]partial), subs: make(map[chan bool]struct{})}
		w.rebuild(s)
		ws.byKey[key] = w
		ws.publish()
	}
	c := make(chan bool, 1)
	w.mu.Lock()
	w.subs[c] = struct{}{}
	active = w.active
	w.mu.Unlock()
	ws.mu.Unlock()
	return active, c, func() {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		w.mu.Lock()
		delete(w.subs, c)
		empty := len(w.subs) == 0
		w.mu.Unlock()
		if empty && ws.byKey[key] == w {
			delete(ws.byKey, key)
			ws.publish()
		}
	}
}

// Watchers is the number of distinct queries StreamIsActive waits on.
func (s *Store) Watchers() int { return len(*s.watchers.list.Load()) }

// onIngest re-evaluates the watchers that n concerns: those with a
// matching pod on it now or before. This is the push path: the crossing is
// seen by the goroutine that received the snapshot.
func (ws *watcherSet) onIngest(s *Store, n *node) {
	v := n.view.Load()
	for _, w := range *ws.list.Load() {
		p := s.partial(w.q, v)
		w.mu.Lock()
		_, had := w.parts[n]
		if p.matched == 0 && !had {
			w.mu.Unlock()
			continue
		}
		old := w.parts[n]
		if p.matched == 0 {
			delete(w.parts, n)
		} else {
			w.parts[n] = p
		}
		w.update(&old, &p)
		w.evaluate()
		w.mu.Unlock()
	}
}

// sweep recomputes every watcher from every node: silence alone changes
// answers (a stale node leaves), and forgotten nodes leave the parts.
func (ws *watcherSet) sweep(s *Store) {
	for _, w := range *ws.list.Load() {
		w.mu.Lock()
		w.rebuild(s)
		w.mu.Unlock()
	}
}

// rebuild recomputes the parts of the fresh nodes and their total; w.mu
// held (or w not yet shared).
func (w *watcher) rebuild(s *Store) {
	clear(w.parts)
	now := s.now()
	for _, n := range *s.nodes.Load() {
		if v := n.view.Load(); v != nil && now.Sub(v.received) <= s.staleAfter(v) {
			if p := s.partial(w.q, v); p.matched > 0 {
				w.parts[n] = p
			}
		}
	}
	w.recompute()
	w.evaluate()
}

func (w *watcher) recompute() {
	w.total = partial{}
	for _, p := range w.parts {
		w.total.withValue += p.withValue
		w.total.sum += p.sum
		if p.n > 0 && (w.total.n == 0 || p.max > w.total.max) {
			w.total.max = p.max
		}
		w.total.n += p.n
		w.total.vals = append(w.total.vals, p.vals...)
	}
}

// update replaces one node's part old by p in the total.
func (w *watcher) update(old, p *partial) {
	switch {
	case w.q.Aggregation == P95,
		// The node held the max and its max fell: another node may hold it.
		w.q.Aggregation == Max && old.n > 0 && old.max >= w.total.max && (p.n == 0 || p.max < old.max):
		w.recompute()
		return
	}
	w.total.withValue += p.withValue - old.withValue
	w.total.sum += p.sum - old.sum
	if p.n > 0 && (w.total.n-old.n == 0 || p.max > w.total.max) {
		w.total.max = p.max
	}
	w.total.n += p.n - old.n
}

// evaluate tells the subscribers of a transition; w.mu held. No data
// behind the answer is inactive: KEDA acts only on true, and scale-in goes
// through GetMetrics, which reports the error.
func (w *watcher) evaluate() {
	active := false
	if w.total.withValue > 0 && w.total.n > 0 {
		t := w.total
		t.vals = append([]float64(nil), w.total.vals...) // reduce sorts
		active = w.q.Active(reduce(w.q.Aggregation, &t))
	}
	if active == w.active {
		return
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
