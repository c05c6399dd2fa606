// Package latencyapp is a service of the node with its own /metrics, as
// the agent's app scraping finds one: a request latency histogram
// (app_request_latency_seconds) observed at a fixed rate around a mean
// that steps at run time, and a request counter (app_requests_total).
// Observations are uniform in [0.5, 1.5] x the mean, so that they spread
// within and across buckets.
package latencyapp

import (
	"context"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
)

// Family is the latency histogram's name; Buckets its bounds, seconds.
const Family = "app_request_latency_seconds"

// Buckets are the histogram's upper bounds, in seconds.
var Buckets = []float64{0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6}

// App is a running latency app.
type App struct {
	Addr   string // host:port of its /metrics
	mean   atomic.Uint64
	cancel context.CancelFunc
	srv    *http.Server
}

// Start serves the app on a loopback port, observing rate times a second.
func Start(rate int, mean time.Duration) (*App, error) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: Family, Help: "Request latency.", Buckets: Buckets})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests."})
	reg.MustRegister(h, c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &App{Addr: ln.Addr().String(), cancel: cancel,
		srv: &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}}
	a.Set(mean)
	go func() { _ = a.srv.Serve(ln) }()
	go func() {
		r := rand.New(rand.NewPCG(1, 2))
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				h.Observe(math.Float64frombits(a.mean.Load()) * (0.5 + r.Float64()))
				c.Inc()
			}
		}
	}()
	return a, nil
}

// Set steps the mean latency; observations after it use the new mean.
func (a *App) Set(mean time.Duration) { a.mean.Store(math.Float64bits(mean.Seconds())) }

// Close stops the app.
func (a *App) Close() {
	a.cancel()
	a.srv.Close()
}

// Pod is the fake API server's pod of the app: media/sfu-0 on node,
// Running at 127.0.0.1, opted in by annotation with the given scrape
// interval.
func (a *App) Pod(node string, interval time.Duration) corev1.Pod {
	_, port, _ := net.SplitHostPort(a.Addr)
	n, _ := strconv.Atoi(port)
	p := fakeapi.Pod(node, "media", "sfu-0", "5f0c2a3e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", "sfu=0000000000000000000000000000000000000000000000000000000000000001")
	p.Status.PodIP = "127.0.0.1"
	p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: int32(n)}}
	p.Annotations = map[string]string{
		app.AnnotationScrape:   "true",
		app.AnnotationPort:     "metrics",
		app.AnnotationFamilies: "app_.*",
		app.AnnotationInterval: interval.String(),
	}
	return p
}
