package fleet

import (
	"slices"
	"sync"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// appWatches are the StreamIsActive subscribers of app triggers. An app
// answer is not kept as a running aggregate (a quantile over merged
// bucket increases does not decompose into per-node partials as cheaply):
// it is evaluated on every app update of any node and on every sweep,
// and a change of state is sent at once.
type appWatches struct {
	mu      sync.Mutex
	watches []*appWatch
}

type appWatch struct {
	q      *Query
	active bool
	subs   map[chan bool]struct{}
}

// activeNow is the trigger's state: its answer above the activation
// target; no answer is inactive (GetMetrics reports why).
func (s *Store) activeNow(q *Query) bool {
	res, err := s.evalApp(q)
	return err == nil && res.Value > q.ActivationTarget
}

func (s *Store) watchApp(q *Query) (bool, <-chan bool, func()) {
	aw := &s.appWatch
	aw.mu.Lock()
	defer aw.mu.Unlock()
	i := slices.IndexFunc(aw.watches, func(w *appWatch) bool {
		return w.q.key == q.key && w.q.ActivationTarget == q.ActivationTarget
	})
	if i < 0 {
		i = len(aw.watches)
		aw.watches = append(aw.watches, &appWatch{q: q, active: s.activeNow(q), subs: make(map[chan bool]struct{})})
	}
	w := aw.watches[i]
	c := make(chan bool, 1)
	w.subs[c] = struct{}{}
	return w.active, c, func() {
		aw.mu.Lock()
		defer aw.mu.Unlock()
		delete(w.subs, c)
		if len(w.subs) == 0 {
			aw.watches = slices.DeleteFunc(aw.watches, func(x *appWatch) bool { return x == w })
		}
	}
}

// notifyApps re-evaluates the watched app triggers that snap concerns
// (one of its scrapes is of a matching pod and names the trigger's
// family; nil: every trigger, as a sweep does) and sends the ones whose
// state changed.
func (s *Store) notifyApps(snap *telemetryv1.NodeSnapshot) {
	aw := &s.appWatch
	aw.mu.Lock()
	defer aw.mu.Unlock()
	for _, w := range aw.watches {
		if snap != nil && !concerns(w.q, snap) {
			continue
		}
		active := s.activeNow(w.q)
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

func concerns(q *Query, snap *telemetryv1.NodeSnapshot) bool {
	for _, sc := range snap.GetApps() {
		if !q.Matches(sc.GetNamespace(), sc.GetPod()) {
			continue
		}
		for _, f := range sc.GetFamilies() {
			if f.GetName() == q.App.Family {
				return true
			}
		}
	}
	return false
}

// appWatchers is the number of app triggers StreamIsActive waits on.
func (s *Store) appWatchers() int {
	s.appWatch.mu.Lock()
	defer s.appWatch.mu.Unlock()
	return len(s.appWatch.watches)
}
