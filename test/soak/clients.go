package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// timings collects the latencies of one kind of call, and its failures
// by reason, from a measured point on (reset).
type timings struct {
	mu       sync.Mutex
	lats     []time.Duration
	failures map[string]int
	refused  int // answered 503 by --web.max-requests: the limit working
}

func newTimings() *timings { return &timings{failures: map[string]int{}} }

func (t *timings) ok(d time.Duration) {
	t.mu.Lock()
	t.lats = append(t.lats, d)
	t.mu.Unlock()
}

func (t *timings) fail(reason string) {
	t.mu.Lock()
	t.failures[reason]++
	t.mu.Unlock()
}

func (t *timings) refuse() {
	t.mu.Lock()
	t.refused++
	t.mu.Unlock()
}

func (t *timings) reset() {
	t.mu.Lock()
	t.lats, t.failures, t.refused = nil, map[string]int{}, 0
	t.mu.Unlock()
}

func (t *timings) snapshot() (lats []time.Duration, failures map[string]int, refused int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := make(map[string]int, len(t.failures))
	for k, v := range t.failures {
		f[k] = v
	}
	return append([]time.Duration(nil), t.lats...), f, t.refused
}

// promAccept is a Prometheus 2.x scrape's Accept header.
const promAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// refusedPause is how long a scraper answered 503 waits before it asks
// again: a closed loop that retried at once would spin on the refusal.
const refusedPause = 100 * time.Millisecond

// scrapers runs n scrapers of url, each on a keep-alive connection of its
// own as Prometheus scrapes, until ctx ends. period 0 is a closed loop:
// the next scrape as soon as the last one is read. It returns the
// transport, whose idle connections the caller closes once they are done.
func scrapers(ctx context.Context, wg *sync.WaitGroup, url string, n int, period time.Duration, t *timings) *http.Transport {
	tr := &http.Transport{MaxIdleConns: n + 1, MaxIdleConnsPerHost: n + 1, MaxConnsPerHost: n, DisableCompression: true}
	client := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	for range n {
		wg.Go(func() {
			var tick <-chan time.Time
			if period > 0 {
				tk := time.NewTicker(period)
				defer tk.Stop()
				tick = tk.C
			}
			for ctx.Err() == nil {
				if tick != nil {
					select {
					case <-ctx.Done():
						return
					case <-tick:
					}
				}
				code, d, err := scrape(ctx, client, url)
				switch {
				case ctx.Err() != nil:
					return // cut short by the end of the run
				case err != nil:
					t.fail(err.Error())
				case code == http.StatusServiceUnavailable:
					t.refuse()
					if period == 0 {
						sleepCtx(ctx, refusedPause)
					}
				case code != http.StatusOK:
					t.fail(fmt.Sprintf("HTTP %d", code))
				default:
					t.ok(d)
				}
			}
		})
	}
	return tr
}

// scrape fetches url as Prometheus does (OpenMetrics, gzip), timed to
// its last byte.
func scrape(ctx context.Context, client *http.Client, url string) (int, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Accept", promAccept)
	req.Header.Set("Accept-Encoding", "gzip")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), err
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// dial opens a connection of its own, as a separate client would.
func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// reader is a Watch subscriber that reads every message as it comes and
// keeps what the sequence check needs.
type reader struct {
	mu   sync.Mutex
	msgs []msg
	err  error // why the stream ended before ctx did
}

func (r *reader) messages() []msg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]msg(nil), r.msgs...)
}

// readers opens n prompt subscribers of the agent's Watch (every device).
func readers(ctx context.Context, wg *sync.WaitGroup, addr string, n int) ([]*reader, error) {
	var rs []*reader
	for range n {
		conn, err := dial(addr)
		if err != nil {
			return rs, err
		}
		stream, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{IncludeUnattributed: true})
		if err != nil {
			conn.Close()
			return rs, err
		}
		r := &reader{}
		rs = append(rs, r)
		wg.Go(func() {
			defer conn.Close()
			for {
				m, err := stream.Recv()
				now := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						r.mu.Lock()
						r.err = err
						r.mu.Unlock()
					}
					return
				}
				if m.GetAppsOnly() {
					continue
				}
				r.mu.Lock()
				r.msgs = append(r.msgs, msg{seq: m.GetSequence(), skipped: m.GetSkipped(), sampled: m.GetSampleTime().AsTime(), received: now})
				r.mu.Unlock()
			}
		})
	}
	return rs, nil
}

// stalled opens n subscribers that never read: the agent's sends to them
// block once gRPC's flow-control window is full.
func stalled(ctx context.Context, wg *sync.WaitGroup, addr string, n int) error {
	for range n {
		conn, err := dial(addr)
		if err != nil {
			return err
		}
		if _, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{IncludeUnattributed: true}); err != nil {
			conn.Close()
			return err
		}
		wg.Go(func() {
			<-ctx.Done()
			conn.Close()
		})
	}
	return nil
}

// churners runs n loops that connect, subscribe and drop: every other
// time after the first message, else at once. It counts the rounds.
func churners(ctx context.Context, wg *sync.WaitGroup, addr string, n int, rounds *atomic.Int64, t *timings) {
	for range n {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				if err := churn(ctx, addr, i%2 == 0); err != nil && ctx.Err() == nil {
					t.fail(err.Error())
					sleepCtx(ctx, 100*time.Millisecond)
					continue
				}
				rounds.Add(1)
			}
		})
	}
}

func churn(ctx context.Context, addr string, read bool) error {
	conn, err := dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{})
	if err != nil {
		return err
	}
	if read {
		_, err = stream.Recv()
	}
	return err
}

// triggers are the KEDA clients' ScaledObjects: the fake fleet's
// inference pods and the agent's WebRTC pods, polled and windowed.
var triggers = []map[string]string{
	{"metric": "gpu_util", "podPattern": "inference-.*", "namespace": "default", "aggregation": "avg", "target": "70", "activationTarget": "50"},
	{"metric": "gpu_util", "podPattern": "inference-.*", "namespace": "default", "aggregation": "p95", "target": "70", "activationTarget": "50"},
	{"metric": "enc_util", "podPattern": "inference-.*", "namespace": "default", "aggregation": "max", "window": "5s", "target": "70", "activationTarget": "50"},
	{"metric": "gpu_util", "podPattern": "webrtc-sfu-.*", "namespace": "media", "aggregation": "sum", "target": "70", "activationTarget": "5"},
	{"metric": "enc_util", "podPattern": "webrtc-sfu-.*", "namespace": "media", "aggregation": "max", "window": "2s", "target": "70", "activationTarget": "70"},
}

// kedaClients runs n of KEDA's own external scaler clients, each on a
// connection of its own with one StreamIsActive stream open and
// GetMetrics every period, as KEDA's operator and metrics adapter call.
func kedaClients(ctx context.Context, wg *sync.WaitGroup, addr string, n int, period time.Duration, t *timings, streamed *atomic.Int64) error {
	for i := range n {
		conn, err := dial(addr)
		if err != nil {
			return err
		}
		client := externalscaler.NewExternalScalerClient(conn)
		ref := &externalscaler.ScaledObjectRef{Name: fmt.Sprintf("so-%02d", i), Namespace: triggers[i%len(triggers)]["namespace"], ScalerMetadata: triggers[i%len(triggers)]}
		spec, err := client.GetMetricSpec(ctx, ref)
		if err != nil {
			conn.Close()
			return fmt.Errorf("GetMetricSpec: %w", err)
		}
		name := spec.GetMetricSpecs()[0].GetMetricName()
		stream, err := client.StreamIsActive(ctx, ref)
		if err != nil {
			conn.Close()
			return fmt.Errorf("StreamIsActive: %w", err)
		}
		wg.Go(func() {
			for {
				if _, err := stream.Recv(); err != nil {
					if ctx.Err() == nil {
						t.fail("StreamIsActive: " + status.Code(err).String())
					}
					return
				}
				streamed.Add(1)
			}
		})
		wg.Go(func() {
			defer conn.Close()
			tk := time.NewTicker(period)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
				start := time.Now()
				_, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: name})
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					t.fail("GetMetrics: " + status.Code(err).String())
				default:
					t.ok(time.Since(start))
				}
			}
		})
	}
	return nil
}
