// Package webserver holds the limits of the agent's and the scaler's HTTP
// servers (/metrics, /healthz, /readyz): how long a client may take to
// send a request, to read a response or to keep an idle connection, how
// large its headers may be, how many connections it may hold and how many
// scrapes may run at once. Each limit bounds what one client can make the
// process hold (goroutines, file descriptors, buffers), so that a slow or
// hostile client cannot starve the probes and the scrapes that matter.
package webserver

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// The defaults, which the flags and Limits' zero values mean.
const (
	// ReadHeaderTimeout bounds the time to send a request's headers
	// (slowloris): a probe or a scrape sends them in one packet.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds the time to send a whole request, headers and
	// body (none of the endpoints reads a body; Go discards a small one
	// to keep the connection).
	ReadTimeout = 30 * time.Second
	// WriteStallTimeout bounds how long a response write may make no
	// progress: a client that stops reading is cut, one that reads
	// slowly but steadily is not. Go's WriteTimeout is one deadline for
	// the whole response, so a long scrape on a slow link would be cut
	// however well it progressed; here each write pushes the deadline on.
	WriteStallTimeout = 30 * time.Second
	// IdleTimeout closes a keep-alive connection idle for this long:
	// longer than Prometheus's default scrape interval (1m), so a
	// scraper keeps its connection between scrapes; bounded, so idle
	// connections do not hold --web.max-connections slots for ever.
	IdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds a request's header block, as nginx's default
	// large_client_header_buffers do (4 x 8k): room for a long bearer
	// token; beyond it Go answers 431 Request Header Fields Too Large.
	MaxHeaderBytes = 32 << 10

	// DefaultMaxConnections is --web.max-connections.
	DefaultMaxConnections = 64
	// DefaultMaxRequests is --web.max-requests: node_exporter's default.
	DefaultMaxRequests = 40
)

// Limits are a server's timeouts and header bound; a zero field means the
// package's default. Tests shorten them.
type Limits struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteStallTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
}

func (l Limits) withDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&l.ReadHeaderTimeout, ReadHeaderTimeout)
	def(&l.ReadTimeout, ReadTimeout)
	def(&l.WriteStallTimeout, WriteStallTimeout)
	def(&l.IdleTimeout, IdleTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = MaxHeaderBytes
	}
	return l
}

// NewServer returns an http.Server of h with l's limits. Its WriteTimeout
// is the stall timeout: every response gets that long from the end of its
// request, and each write through h's ResponseWriter pushes the deadline
// on by as much, so only a response that stops progressing is cut (the
// client then reads a truncated body, or a reset).
func NewServer(h http.Handler, l Limits) *http.Server {
	l = l.withDefaults()
	return &http.Server{
		Handler:           progress(h, l.WriteStallTimeout),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteStallTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
}

func progress(h http.Handler, stall time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&progressWriter{ResponseWriter: w, rc: http.NewResponseController(w), stall: stall}, r)
	})
}

// progressWriter pushes the connection's write deadline on before each
// write. Unwrap lets http.ResponseController (and promhttp's delegator)
// reach the server's writer.
type progressWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (w *progressWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.stall)) // unsupported: the server's WriteTimeout stays
	return w.ResponseWriter.Write(p)
}

func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Listen listens on addr (TCP) and serves at most maxConns connections at
// once (0: no limit). A connection past the limit is accepted by the
// kernel and waits in its backlog until one of the others closes: the
// client sees a slow answer, or its own timeout, never a refusal.
func Listen(addr string, maxConns int) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return LimitListener(ln, maxConns), nil
}

// LimitListener is ln serving at most maxConns connections at once (0:
// ln itself).
func LimitListener(ln net.Listener, maxConns int) net.Listener {
	if maxConns <= 0 {
		return ln
	}
	return netutil.LimitListener(ln, maxConns)
}

// LimitRequests serves at most n requests of h at once (0: no limit);
// one more is answered 503 at once, as node_exporter's --web.max-requests
// (promhttp's MaxRequestsInFlight) answers, so that a scraper retries at
// its next interval rather than piling up.
func LimitRequests(h http.Handler, n int) http.Handler {
	if n <= 0 {
		return h
	}
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", n), http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Flags are the connection and request caps, the same flags on the
// agent and the scaler.
type Flags struct {
	MaxConnections int
	MaxRequests    int
}

// Register adds --web.max-connections and --web.max-requests to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.IntVar(&f.MaxConnections, "web.max-connections", DefaultMaxConnections,
		"Most HTTP connections served at once; more wait, accepted, until one closes. 0: no limit.")
	fs.IntVar(&f.MaxRequests, "web.max-requests", DefaultMaxRequests,
		"Most /metrics scrapes served at once; one more is answered 503 at once (node_exporter's flag). 0: no limit.")
}

// Validate reports each bad value, naming its flag.
func (f *Flags) Validate() []error {
	var errs []error
	if f.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("--web.max-connections=%d: must not be negative (0: no limit)", f.MaxConnections))
	}
	if f.MaxRequests < 0 {
		errs = append(errs, fmt.Errorf("--web.max-requests=%d: must not be negative (0: no limit)", f.MaxRequests))
	}
	return errs
}
