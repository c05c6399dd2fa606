package exporter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof" // #nosec G108 -- mounted on the agent's own mux only with --web.enable-pprof; http.DefaultServeMux is never served
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/webserver"
)

// StallIntervals is how many sampling intervals may pass without a new
// snapshot before /readyz reports the agent unready.
const StallIntervals = 3

// Readiness says whether the agent is ready to serve: a first snapshot
// exists and sampling has not stalled. It returns the reason when not.
func Readiness(src attribution.Snapshots, interval time.Duration, now time.Time) (bool, string) {
	snap := src.Latest()
	if snap == nil {
		return false, "no GPU sample yet"
	}
	if age := now.Sub(snap.Time); age > StallIntervals*interval {
		return false, fmt.Sprintf("sampling stalled: last sample %s ago, interval %s", age.Round(time.Millisecond), interval)
	}
	return true, "ok"
}

// Starting is the agent's HTTP handler from the moment its port is open:
// until Ready hands it the real handler, /healthz answers 200 (the
// process is alive, however long NVML takes to come up, so a liveness
// probe does not restart a pod that waits on a slow GPU) and every other
// path, /readyz and /metrics included, 503 "starting". /health is
// dcgm-exporter's liveness path, which its Helm chart probes for liveness
// and readiness alike: it answers as /healthz, so that a DaemonSet with
// only its image swapped is not restarted.
type Starting struct {
	h atomic.Pointer[http.Handler]
}

// dcgmHealthPath is dcgm-exporter's health endpoint (always 200 there).
const dcgmHealthPath = "/health"

// StartingReason is what Starting answers before Ready.
const StartingReason = "starting: NVML start-up in progress"

// Ready makes h serve every request from now on.
func (s *Starting) Ready(h http.Handler) { s.h.Store(&h) }

func (s *Starting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := s.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	if r.URL.Path == "/healthz" || r.URL.Path == dcgmHealthPath {
		fmt.Fprintln(w, "ok")
		return
	}
	http.Error(w, StartingReason, http.StatusServiceUnavailable)
}

// HandlerOptions configures NewHandler.
type HandlerOptions struct {
	Interval time.Duration
	Logger   *slog.Logger
	Version  string
	// ExporterMetrics adds promhttp's own families of the /metrics
	// handler (promhttp_metric_handler_*) to reg, as dcgm-exporter does
	// with --enable-exporter-metrics; off, the handler is not instrumented.
	ExporterMetrics bool
	// MaxRequests is how many /metrics scrapes run at once; one more is
	// answered 503 at once (--web.max-requests, node_exporter's). 0: no
	// limit. Counted as promhttp_metric_handler_requests_total{code="503"}
	// with ExporterMetrics.
	MaxRequests int
	// Pprof serves net/http/pprof's profiles under /debug/pprof/.
	Pprof bool
}

// NewHandler serves /metrics (Prometheus text and OpenMetrics), /healthz
// (the process is alive), /readyz (see Readiness) and a landing page.
// A scrape of /metrics pins one view of c's: it writes what reg gathers
// (the subsystems' own collectors, registered in one place by the agent)
// with the agent's own families of that view, then that view's device
// families (Collector.WriteDevices).
func NewHandler(reg *prometheus.Registry, c *Collector, opts HandlerOptions) (http.Handler, error) {
	src := c.views.Snapshots()
	mux := http.NewServeMux()
	metrics := webserver.LimitRequests(&metricsHandler{reg: reg, c: c, log: opts.Logger}, opts.MaxRequests)
	if opts.ExporterMetrics {
		metrics = promhttp.InstrumentMetricHandler(reg, metrics)
	}
	mux.Handle("/metrics", metrics)
	live := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux.HandleFunc("/healthz", live)
	mux.HandleFunc(dcgmHealthPath, live)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := Readiness(src, opts.Interval, time.Now())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
	})
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "GPU telemetry agent",
		Description: "Sub-second NVML telemetry with pod attribution, dcgm-exporter compatible",
		Version:     opts.Version,
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/healthz", Text: "Liveness"},
			{Address: "/readyz", Text: "Readiness"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("building landing page: %w", err)
	}
	mux.Handle("/", landing)
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux, nil
}

// metricsHandler writes a scrape: the registry's families and the agent's
// own through expfmt, then the device families straight from the same
// view.
type metricsHandler struct {
	reg prometheus.Gatherer
	c   *Collector
	log *slog.Logger

	renders renders
	// lastGzip is the size of the last compressed body, the next one's
	// first guess.
	lastGzip atomic.Int64
}

// textFormats are the formats /metrics offers, by preference: the text
// ones, since the device families are written as text. Clients that
// prefer protobuf (Prometheus with native histograms) accept text too.
var textFormats = []expfmt.Format{expfmt.FmtOpenMetrics_1_0_0, expfmt.FmtOpenMetrics_0_0_1, expfmt.FmtText}

// gzipWriters compress at BestSpeed: /metrics is long and repetitive (a
// 500 kB scrape compresses to 20 kB at any level), so the default level
// would only spend more CPU per scrape for a few kB.
// One is kept: concurrent scrapes of a view share one rendering, and a
// compressor at BestSpeed still holds over half a MiB.
var gzipWriters = newFreeList(1, func() *gzip.Writer {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
})

var bufWriters = newFreeList(1, func() *bufio.Writer { return bufio.NewWriterSize(nil, 64<<10) })

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	format := expfmt.NegotiateAccept(r.Header, textFormats...)
	view := h.c.views.Latest()
	w.Header().Set("Content-Type", string(format))
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.write(w, view, format)
		return
	}
	// Scrapes of one view in one format that arrive while it is being
	// rendered share that rendering (see renders): 20 Prometheus servers
	// scraping at the same instant cost one rendering, not 20 in turn.
	body := h.renders.do(renderKey{view: view, format: format}, func() []byte {
		var buf bytes.Buffer
		buf.Grow(int(h.lastGzip.Load()))
		gz := gzipWriters.get()
		gz.Reset(&buf)
		h.write(gz, view, format)
		_ = gz.Close()
		gz.Reset(nil)
		gzipWriters.put(gz)
		h.lastGzip.Store(int64(buf.Len()))
		return buf.Bytes()
	})
	w.Header().Set("Content-Encoding", "gzip")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if _, err := w.Write(body); err != nil {
		h.log.Debug("writing metrics", "err", err) // the client went away
	}
}

// write writes the scrape of view in format to out: the registry's
// families and the agent's own, then the device families.
func (h *metricsHandler) write(out io.Writer, view *attribution.View, format expfmt.Format) {
	// The registry's families and the view's have names of their own,
	// so they are merged by name here rather than by prometheus.Gatherers,
	// which would check every series of both again.
	mfs, err := h.reg.Gather()
	if err != nil {
		// A failing collector leaves the rest served (promhttp's
		// ContinueOnError).
		h.log.Error("gathering metrics", "err", err)
	}
	own, err := h.c.gatherAgent(view)
	if err != nil {
		h.log.Error("gathering metrics", "err", err)
	}
	mfs = mergeFamilies(mfs, own)
	bw := bufWriters.get()
	bw.Reset(out)
	defer func() { bw.Reset(nil); bufWriters.put(bw) }()

	enc := expfmt.NewEncoder(bw, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			h.log.Debug("writing metrics", "err", err) // the client went away
			return
		}
	}
	if err := h.c.WriteDevices(bw, view, format.FormatType() == expfmt.TypeOpenMetrics); err != nil {
		h.log.Debug("writing metrics", "err", err)
		return
	}
	if closer, ok := enc.(expfmt.Closer); ok {
		_ = closer.Close() // OpenMetrics' "# EOF"
	}
	_ = bw.Flush()
}

// renderKey is what a compressed scrape depends on: the view (one
// snapshot joined with the pods) and the format.
type renderKey struct {
	view   *attribution.View
	format expfmt.Format
}

// renders lets concurrent scrapes of one key share one rendering: the
// first renders, those that arrive meanwhile wait for its body. A body is
// never kept past its rendering: a scrape that arrives after it gets its
// own, with the registry's counters as they are then.
type renders struct {
	mu       sync.Mutex
	inFlight map[renderKey]*rendering
}

type rendering struct {
	done    chan struct{}
	body    []byte
	waiters int // scrapes sharing it, beyond the first; for tests
}

func (r *renders) do(key renderKey, render func() []byte) []byte {
	r.mu.Lock()
	if c, ok := r.inFlight[key]; ok {
		c.waiters++
		r.mu.Unlock()
		<-c.done
		return c.body
	}
	if r.inFlight == nil {
		r.inFlight = map[renderKey]*rendering{}
	}
	c := &rendering{done: make(chan struct{})}
	r.inFlight[key] = c
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.inFlight, key)
		r.mu.Unlock()
		close(c.done)
	}()
	c.body = render()
	return c.body
}

// waiting is how many scrapes wait on key's rendering in flight.
func (r *renders) waiting(key renderKey) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.inFlight[key]; ok {
		return c.waiters
	}
	return 0
}

// mergeFamilies merges two lists of families sorted by name into one; a
// name in both (none is) keeps both families' series.
func mergeFamilies(a, b []*dto.MetricFamily) []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch c := strings.Compare(a[0].GetName(), b[0].GetName()); {
		case c < 0:
			out, a = append(out, a[0]), a[1:]
		case c > 0:
			out, b = append(out, b[0]), b[1:]
		default:
			mf := &dto.MetricFamily{Name: a[0].Name, Help: a[0].Help, Type: a[0].Type, Unit: a[0].Unit,
				Metric: append(slices.Clip(a[0].Metric), b[0].Metric...)}
			out, a, b = append(out, mf), a[1:], b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if strings.TrimSpace(coding) != "gzip" {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}
