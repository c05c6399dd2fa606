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

	mu     sync.Mutex
	parts  map[*node]partial // nodes with matching pods
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
		if p.matched == 0 {
			delete(w.parts, n)
		} else {
			w.parts[n] = p
		}
		w.evaluate(s)
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

// rebuild recomputes the parts from the store's nodes; w.mu held (or w
// not yet shared).
func (w *watcher) rebuild(s *Store) {
	clear(w.parts)
	for _, n := range *s.nodes.Load() {
		if v := n.view.Load(); v != nil {
			if p := s.partial(w.q, v); p.matched > 0 {
				w.parts[n] = p
			}
		}
	}
	w.evaluate(s)
}

// evaluate combines the parts and tells the subscribers of a transition;
// w.mu held. No data behind the answer is inactive: KEDA acts only on
// true, and scale-in goes through GetMetrics, which reports the error.
func (w *watcher) evaluate(s *Store) {
	res, err := combine(w.q, func(yield func(*partial) bool) {
		for _, p := range w.parts {
			if !yield(&p) {
				return
			}
		}
	}, s.now(), false)
	active := err == nil && w.q.Active(res.Value)
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
