package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// appRegistry is an app's own registry, as client_golang serves it: a
// latency histogram with two label sets, a counter, a gauge, a summary.
func appRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "app_latency_seconds", Help: "x", Buckets: []float64{0.05, 0.1, 0.2, 0.4}}, []string{"route"})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "x"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "app_rooms", Help: "x"})
	s := prometheus.NewSummary(prometheus.SummaryOpts{Name: "app_summary_seconds", Help: "x"})
	reg.MustRegister(h, c, g, s)
	for _, v := range []float64{0.01, 0.07, 0.3, 0.3, 1} {
		h.WithLabelValues("join").Observe(v)
	}
	h.WithLabelValues("leave").Observe(0.15)
	c.Add(42)
	g.Set(7)
	s.Observe(1)
	return reg
}

func target(t *testing.T, url, families string) *Target {
	t.Helper()
	return &Target{Namespace: "media", Name: "sfu-0", UID: "u1", URL: url, Families: regexp.MustCompile(`^(?:` + families + `)$`), Interval: time.Second}
}

func lim(body int64, series, slots int) *limits {
	return &limits{maxBody: body, maxSeries: series, slots: make(chan struct{}, slots)}
}

func doScrape(t *testing.T, url, families string, l *limits) (*result, *ScrapeError) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return scrape(ctx, newHTTPClient(), target(t, url, families), 2*time.Second, l)
}

// checkApp asserts the families of appRegistry, whatever the format.
func checkApp(t *testing.T, res *result) {
	t.Helper()
	var names []string
	for _, f := range res.families {
		names = append(names, f.Name+":"+f.Type.String())
	}
	if got, want := strings.Join(names, " "), "app_latency_seconds:histogram app_requests_total:counter app_rooms:gauge"; got != want {
		t.Fatalf("families %s, want %s", got, want)
	}
	h := res.families[0]
	if len(h.Series) != 2 || h.Series[0].Labels[0] != (Label{"route", "join"}) {
		t.Fatalf("histogram series %+v", h.Series)
	}
	hv := h.Series[0].Hist
	if fmt.Sprint(hv.Bounds) != "[0.05 0.1 0.2 0.4]" || fmt.Sprint(hv.Counts) != "[1 2 2 4]" || hv.Count != 5 || hv.Sum < 1.67 || hv.Sum > 1.69 {
		t.Fatalf("histogram %+v", hv)
	}
	if res.families[1].Series[0].Value != 42 || res.families[2].Series[0].Value != 7 {
		t.Fatalf("counter/gauge %+v", res.families[1:])
	}
	if res.series != 4 || res.dropped[DropUnsupportedType] != 1 {
		t.Fatalf("series %d, dropped %v", res.series, res.dropped)
	}
}

func TestScrapeFormats(t *testing.T) {
	reg := appRegistry(t)
	proto := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer proto.Close()
	var text strings.Builder
	text.WriteString("# HELP app_rooms x\n# TYPE app_rooms gauge\napp_rooms 7\n")
	text.WriteString("# TYPE app_requests_total counter\napp_requests_total 42\n")
	text.WriteString("# TYPE app_summary_seconds summary\napp_summary_seconds{quantile=\"0.5\"} 1\napp_summary_seconds_sum 1\napp_summary_seconds_count 1\n")
	text.WriteString("# TYPE app_latency_seconds histogram\n")
	for _, route := range []string{"join", "leave"} {
		counts := map[string][]string{"join": {"1", "2", "2", "4", "5"}, "leave": {"0", "0", "1", "1", "1"}}[route]
		for i, le := range []string{"0.05", "0.1", "0.2", "0.4", "+Inf"} {
			fmt.Fprintf(&text, "app_latency_seconds_bucket{route=%q,le=%q} %s\n", route, le, counts[i])
		}
		sum, n := map[string]string{"join": "1.68", "leave": "0.15"}[route], map[string]string{"join": "5", "leave": "1"}[route]
		fmt.Fprintf(&text, "app_latency_seconds_sum{route=%q} %s\napp_latency_seconds_count{route=%q} %s\n", route, sum, route, n)
	}
	textSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, text.String())
	}))
	defer textSrv.Close()
	om := strings.ReplaceAll(text.String(), "# TYPE app_requests_total counter\napp_requests_total 42\n", "# TYPE app_requests counter\napp_requests_total 42\n") + "# EOF\n"
	omSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
		fmt.Fprint(w, om)
	}))
	defer omSrv.Close()

	for name, url := range map[string]string{"protobuf": proto.URL, "text": textSrv.URL} {
		t.Run(name, func(t *testing.T) {
			res, err := doScrape(t, url, "app_.*", lim(1<<20, 100, 1))
			if err != nil {
				t.Fatal(err)
			}
			checkApp(t, res)
		})
	}
	t.Run("openmetrics", func(t *testing.T) {
		// OpenMetrics names a counter's family without _total.
		res, err := doScrape(t, omSrv.URL, "app_.*", lim(1<<20, 100, 1))
		if err != nil {
			t.Fatal(err)
		}
		for i := range res.families {
			if res.families[i].Name == "app_requests" {
				res.families[i].Name = "app_requests_total"
			}
		}
		checkApp(t, res)
	})
	t.Run("allowlist", func(t *testing.T) {
		res, err := doScrape(t, proto.URL, "app_rooms", lim(1<<20, 100, 1))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.families) != 1 || res.families[0].Name != "app_rooms" || len(res.dropped) != 0 {
			t.Fatalf("kept %+v, dropped %v", res.families, res.dropped)
		}
	})
	t.Run("series cap keeps whole families", func(t *testing.T) {
		res, err := doScrape(t, proto.URL, "app_.*", lim(1<<20, 2, 1))
		if err != nil {
			t.Fatal(err)
		}
		// latency (2 series) fits; requests would make 3: dropped whole,
		// and so is rooms.
		if len(res.families) != 1 || res.families[0].Name != "app_latency_seconds" || res.dropped[DropSeriesLimit] != 2 {
			t.Fatalf("kept %+v, dropped %v", res.families, res.dropped)
		}
	})
}

func TestScrapeHostile(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	var bodyWritten atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/trickle", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "# TYPE app_x gauge\n")
		w.(http.Flusher).Flush()
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		line := []byte("app_x{i=\"0000000000\"} 1\n")
		for i := 0; i < 1<<20; i++ { // 25 MiB if all of it were read
			n, err := w.Write(line)
			bodyWritten.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/garbage", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "<html>not metrics{{{\n")
	})
	mux.HandleFunc("/500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	cases := map[string]struct{ url, reason string }{
		"hang":     {srv.URL + "/hang", ReasonTimeout},
		"trickle":  {srv.URL + "/trickle", ReasonTimeout},
		"huge":     {srv.URL + "/huge", ReasonBodyTooLarge},
		"redirect": {srv.URL + "/redirect", ReasonRedirect},
		"garbage":  {srv.URL + "/garbage", ReasonParse},
		"500":      {srv.URL + "/500", ReasonStatus},
		"refused":  {closedURL, ReasonConnect},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			// Only the hung endpoints need the timeout; the others get
			// time to spare on a loaded machine.
			timeout := 5 * time.Second
			if c.reason == ReasonTimeout {
				timeout = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_, err := scrape(ctx, newHTTPClient(), target(t, c.url, ".*"), timeout, lim(64<<10, 100, 1))
			var se *ScrapeError
			if !errors.As(err, &se) || se.Reason != c.reason {
				t.Fatalf("err = %v, want reason %s", err, c.reason)
			}
		})
	}
	// The cap is enforced while reading: the server could not have sent
	// its 25 MiB (TCP buffers hold a few MiB at most).
	if n := bodyWritten.Load(); n >= 25<<20 {
		t.Errorf("the server wrote its whole body (%d bytes): the cap was applied after reading", n)
	}
}

func TestScrapeBusy(t *testing.T) {
	srv := httptest.NewServer(promhttp.HandlerFor(appRegistry(t), promhttp.HandlerOpts{}))
	defer srv.Close()
	l := lim(1<<20, 100, 1)
	l.slots <- struct{}{} // the only slot is taken
	// The slot is never freed: busy whatever the timeout, which is long
	// enough for the answer's headers on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := scrape(ctx, newHTTPClient(), target(t, srv.URL, ".*"), 2*time.Second, l)
	var se *ScrapeError
	if !errors.As(err, &se) || se.Reason != ReasonBusy {
		t.Fatalf("err = %v, want busy", err)
	}
}
