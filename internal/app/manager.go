package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults and bounds of the --app.* flags.
const (
	MinInterval            = 100 * time.Millisecond
	DefaultInterval        = time.Second
	DefaultMaxBodyBytes    = 4 << 20
	DefaultMaxSeriesPerPod = 2000
	DefaultMaxTargets      = 256
	DefaultConcurrency     = 4
)

// Options configure a Manager. Zero values take the defaults.
type Options struct {
	Interval        time.Duration // a target's default interval, and discovery's period
	Timeout         time.Duration // per scrape; 0: the target's interval
	MaxBodyBytes    int64
	MaxSeriesPerPod int
	MaxTargets      int
	Concurrency     int
	Logger          *slog.Logger
	Client          *http.Client // nil: the scrapers' own (no redirects)
	Now             func() time.Time
}

func (o *Options) defaults() {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxSeriesPerPod <= 0 {
		o.MaxSeriesPerPod = DefaultMaxSeriesPerPod
	}
	if o.MaxTargets <= 0 {
		o.MaxTargets = DefaultMaxTargets
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Client == nil {
		o.Client = newHTTPClient()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Manager discovers the node's opted-in pods and scrapes each on its own
// schedule, never on the GPU tick: a slow, hung, huge or garbage endpoint
// costs its own loop and, while its body is read, one of the slots, and
// delays nobody else. The latest scrape of every target is published as
// one Set, which the stream reads.
type Manager struct {
	pods Pods
	opts Options
	log  *slog.Logger
	lim  *limits
	met  *Metrics

	*Board // the latest scrapes, as one Set

	mu     sync.Mutex
	loops  map[string]*loop // by pod UID
	logged map[string]string
}

// New returns a manager of pods' targets. Run starts it.
func New(pods Pods, opts Options) *Manager {
	opts.defaults()
	m := &Manager{
		pods:   pods,
		opts:   opts,
		log:    opts.Logger,
		lim:    &limits{maxBody: opts.MaxBodyBytes, maxSeries: opts.MaxSeriesPerPod, slots: make(chan struct{}, opts.Concurrency)},
		met:    newMetrics(),
		Board:  NewBoard(),
		loops:  make(map[string]*loop),
		logged: make(map[string]string),
	}
	return m
}

// Metrics returns the manager's own metrics, for the agent's registry.
func (m *Manager) Metrics() *Metrics { return m.met }

// Run discovers targets every interval until ctx ends, starting a loop
// for each new target and stopping the loops of those gone, so that a pod
// that goes away leaves the set within one interval.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer func() {
		m.mu.Lock()
		for uid, l := range m.loops {
			l.cancel()
			delete(m.loops, uid)
		}
		m.mu.Unlock()
		wg.Wait()
	}()
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		m.reconcile(ctx, &wg)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// reconcile turns the pod list into targets and the loops into those.
func (m *Manager) reconcile(ctx context.Context, wg *sync.WaitGroup) {
	pods := m.pods.AppPods()
	slices.SortFunc(pods, func(a, b PodInfo) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	want := make(map[string]*Target)
	var invalid, over int
	seen := make(map[string]bool)
	for _, p := range pods {
		t, err := ParseTarget(p, MinInterval, m.opts.Interval)
		switch {
		case errors.Is(err, errNotOptedIn), errors.Is(err, errNotRunning):
			continue
		case err != nil:
			invalid++
			seen[p.UID] = true
			m.logOnce(p.UID, err.Error(), func() {
				m.met.errors.WithLabelValues(ReasonConfig).Inc()
				m.log.Warn("app target not scraped", "err", err)
			})
			continue
		}
		if len(want) >= m.opts.MaxTargets {
			over++
			seen[p.UID] = true
			m.logOnce(p.UID, "over", func() {
				m.log.Warn("app target not scraped: --app.max-targets reached", "pod", p.Namespace+"/"+p.Name, "max", m.opts.MaxTargets)
			})
			continue
		}
		want[p.UID] = t
		seen[p.UID] = true
		m.logOnce(p.UID, "", func() {})
	}
	m.met.targets.WithLabelValues("scraping").Set(float64(len(want)))
	m.met.targets.WithLabelValues("invalid").Set(float64(invalid))
	m.met.targets.WithLabelValues("over_limit").Set(float64(over))

	m.mu.Lock()
	for uid := range m.logged {
		if !seen[uid] {
			delete(m.logged, uid)
		}
	}
	changed := false
	for uid, l := range m.loops {
		if t, ok := want[uid]; !ok || t.key() != l.target.key() {
			l.cancel()
			delete(m.loops, uid)
			changed = true
		}
	}
	for uid, t := range want {
		if _, ok := m.loops[uid]; ok {
			continue
		}
		lctx, cancel := context.WithCancel(ctx)
		l := &loop{m: m, target: t, cancel: cancel}
		m.loops[uid] = l
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run(lctx)
		}()
	}
	if changed {
		m.publishLocked()
	}
	m.mu.Unlock()
}

// logOnce runs f when a pod's message differs from the last one logged
// for it (a bad annotation is reported once, not every interval).
func (m *Manager) logOnce(uid, msg string, f func()) {
	m.mu.Lock()
	prev, ok := m.logged[uid]
	m.logged[uid] = msg
	m.mu.Unlock()
	if !ok && msg == "" || ok && prev == msg {
		return
	}
	f()
}

// publishLocked publishes every loop's latest scrape; m.mu held.
func (m *Manager) publishLocked() {
	scrapes := make([]*Scrape, 0, len(m.loops))
	for _, l := range m.loops {
		if s := l.latest; s != nil {
			scrapes = append(scrapes, s)
		}
	}
	m.Publish(scrapes)
}

// loop scrapes one target every interval until cancelled.
type loop struct {
	m      *Manager
	target *Target
	cancel context.CancelFunc
	latest *Scrape // under m.mu
}

func (l *loop) run(ctx context.Context) {
	t := time.NewTicker(l.target.Interval)
	defer t.Stop()
	for {
		l.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// timeout is the scrape timeout: --app.timeout, at most the interval, so
// that a target never has two scrapes in flight.
func (l *loop) timeout() time.Duration {
	d := l.m.opts.Timeout
	if d <= 0 || d > l.target.Interval {
		d = l.target.Interval
	}
	return d
}

func (l *loop) once(ctx context.Context) {
	m, t := l.m, l.target
	timeout := l.timeout()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	start := m.opts.Now()
	res, serr := scrape(sctx, m.opts.Client, t, timeout, m.lim)
	cancel()
	if ctx.Err() != nil {
		return // stopped: the target is gone or the agent is stopping
	}
	m.met.duration.Observe(m.opts.Now().Sub(start).Seconds())
	for reason, n := range resultDrops(res) {
		m.met.dropped.WithLabelValues(reason).Add(float64(n))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loops[t.UID] != l {
		return // replaced meanwhile
	}
	prev := l.latest
	s := &Scrape{Namespace: t.Namespace, Name: t.Name}
	if serr != nil {
		m.met.errors.WithLabelValues(serr.Reason).Inc()
		// Keep the last good values and their time, as a consumer of
		// counters over a window wants; the error says they are old.
		if prev != nil {
			s.Time, s.Families, s.Series = prev.Time, prev.Families, prev.Series
		}
		s.Err = serr
		if prev == nil || prev.Err == nil || prev.Err.Error() != serr.Error() {
			m.log.Debug("app scrape failed", "pod", t.Namespace+"/"+t.Name, "url", t.URL, "err", serr)
		}
	} else {
		s.Time, s.Families, s.Series = start, res.families, res.series
	}
	l.latest = s
	m.publishLocked()
}

func resultDrops(r *result) map[string]int {
	if r == nil {
		return nil
	}
	return r.dropped
}

// String names a target for logs.
func (t *Target) String() string { return fmt.Sprintf("%s/%s %s", t.Namespace, t.Name, t.URL) }
