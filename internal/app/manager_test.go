package app

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	internaltestutil "github.com/gpu-telemetry/agent/internal/testutil"
)

type fakePods struct {
	mu   sync.Mutex
	pods []PodInfo
}

func (f *fakePods) AppPods() []PodInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]PodInfo(nil), f.pods...)
}

func (f *fakePods) set(p ...PodInfo) {
	f.mu.Lock()
	f.pods = p
	f.mu.Unlock()
}

// podAt is an opted-in pod whose IP and port are srv's.
func podAt(t *testing.T, name, rawURL, path string) PodInfo {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(u.Host)
	return PodInfo{Namespace: "media", Name: name, UID: "uid-" + name, Phase: "Running", IP: host,
		Annotations: map[string]string{AnnotationScrape: "true", AnnotationPort: port, AnnotationPath: path, AnnotationFamilies: "app_.*", AnnotationInterval: "100ms"}}
}

func scrapeOf(s *Set, name string) *Scrape {
	for _, sc := range s.Scrapes {
		if sc.Name == name {
			return sc
		}
	}
	return nil
}

func TestManager(t *testing.T) {
	hang := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(appRegistry(t), promhttp.HandlerOpts{}))
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer close(hang)

	pods := &fakePods{}
	good, hung := podAt(t, "good", srv.URL, "/metrics"), podAt(t, "hung", srv.URL, "/hang")
	bad := podAt(t, "bad", srv.URL, "/metrics")
	bad.Annotations = map[string]string{AnnotationScrape: "true", AnnotationPort: "nope"}
	pending := podAt(t, "pending", srv.URL, "/metrics")
	pending.Phase = "Pending"
	other := podAt(t, "other", srv.URL, "/metrics")
	other.Annotations = nil
	pods.set(good, hung, bad, pending, other)

	// One slot: the hung target holds none while it waits, so the good
	// one is never delayed by it.
	m := New(pods, Options{Interval: 100 * time.Millisecond, Concurrency: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var seq uint64
	goodScrapes := map[time.Time]bool{}
	internaltestutil.Eventually(t, 10*time.Second, "the good target scraped 5 times while the hung one timed out", func() bool {
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		defer wcancel()
		s, err := m.Wait(wctx, seq)
		if err != nil {
			return false
		}
		seq = s.Seq
		if g := scrapeOf(s, "good"); g != nil && g.Err == nil {
			checkApp(t, &result{families: g.Families, series: g.Series, dropped: map[string]int{DropUnsupportedType: 1}})
			goodScrapes[g.Time] = true
		}
		h := scrapeOf(s, "hung")
		return len(goodScrapes) >= 5 && h != nil && h.Err != nil && strings.HasPrefix(h.Err.Error(), ReasonTimeout)
	})
	if s := m.Latest(); len(s.Scrapes) != 2 {
		t.Fatalf("set has %d scrapes, want good and hung only", len(s.Scrapes))
	}
	if got := testutil.ToFloat64(m.met.targets.WithLabelValues("scraping")); got != 2 {
		t.Errorf("targets{scraping} = %v", got)
	}
	if got := testutil.ToFloat64(m.met.targets.WithLabelValues("invalid")); got != 1 {
		t.Errorf("targets{invalid} = %v", got)
	}
	if got := testutil.ToFloat64(m.met.errors.WithLabelValues(ReasonConfig)); got != 1 {
		t.Errorf("errors{config} = %v, want 1 (once per distinct error)", got)
	}
	if got := testutil.ToFloat64(m.met.errors.WithLabelValues(ReasonTimeout)); got < 1 {
		t.Errorf("errors{timeout} = %v", got)
	}
	if probs, err := testutil.CollectAndLint(m.Metrics()); err != nil || len(probs) > 0 {
		t.Fatalf("lint: %v %v", probs, err)
	}
	if n, err := testutil.GatherAndCount(register(t, m.Metrics())); err != nil || n == 0 {
		t.Fatalf("gather: %d, %v", n, err)
	}

	// The good pod goes: it leaves the set at the next discovery.
	pods.set(hung)
	internaltestutil.Eventually(t, 5*time.Second, "the gone pod left the set", func() bool {
		return scrapeOf(m.Latest(), "good") == nil
	})
}

func TestManagerMaxTargets(t *testing.T) {
	srv := httptest.NewServer(promhttp.HandlerFor(appRegistry(t), promhttp.HandlerOpts{}))
	defer srv.Close()
	pods := &fakePods{}
	pods.set(podAt(t, "a", srv.URL, "/"), podAt(t, "b", srv.URL, "/"), podAt(t, "c", srv.URL, "/"))
	m := New(pods, Options{Interval: 100 * time.Millisecond, MaxTargets: 2})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	internaltestutil.Eventually(t, 5*time.Second, "two targets scraped", func() bool {
		s := m.Latest()
		return len(s.Scrapes) == 2 && s.Scrapes[0].Name == "a" && s.Scrapes[1].Name == "b"
	})
	if got := testutil.ToFloat64(m.met.targets.WithLabelValues("over_limit")); got != 1 {
		t.Errorf("targets{over_limit} = %v", got)
	}
}

func register(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	return reg
}
