// Package scaler wires the scaler: the agents' streams into the store, the
// store behind KEDA's external scaler service, and the scaler's own
// /metrics and /healthz. cmd/scaler only parses and calls Main.
package scaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
	"github.com/gpu-telemetry/agent/internal/fleet/keda"
	"github.com/gpu-telemetry/agent/internal/webserver"
)

// Set at build time with -ldflags "-X ...".
var (
	Version  = "dev"
	Revision = "unknown"
)

// ShutdownTimeout bounds the drain after SIGTERM.
const ShutdownTimeout = 4 * time.Second

// QueryCacheSize bounds the parsed triggers kept (one per distinct trigger).
const QueryCacheSize = 4096

// Main runs the scaler until ctx is done and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseFlags(args, stderr)
	if err != nil {
		return 2
	}
	if cfg.ShowVersion {
		fmt.Fprintf(stdout, "gpu-scaler %s (revision %s)\n", Version, Revision)
		return 0
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%v\n", err)
		return 2
	}
	log := cfg.NewLogger(stderr)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(fleet.DefaultGCPercent)
		log.Info("Go runtime", "GOGC", fleet.DefaultGCPercent)
	}
	if err := Run(ctx, cfg, log, Listeners{}); err != nil {
		log.Error("scaler failed", "err", err)
		return 1
	}
	return 0
}

// Listeners lets a test hand in listeners (port 0) instead of addresses,
// and a resolver instead of DNS.
type Listeners struct {
	GRPC, Web net.Listener
	Resolver  agents.Resolver
}

// Run runs the scaler with a validated config until ctx is done.
func Run(ctx context.Context, cfg *Config, log *slog.Logger, l Listeners) error {
	log.Info("starting gpu-scaler", "version", Version, "revision", Revision)
	serverCreds, agentCreds, tlsFiles, err := tlsCredentials(cfg, log)
	if err != nil {
		return err
	}

	store := fleet.NewStore(fleet.Options{
		StaleAfter:  cfg.StaleAfter,
		ForgetAfter: cfg.ForgetAfter,
		MaxWindow:   cfg.WindowMax,
		Logger:      log.With("component", "store"),

		MaxUnattributedLoad: cfg.MaxUnattributedLoad,
	})
	queries := fleet.NewQueryCache(cfg.WindowMax, QueryCacheSize, store.Retain)
	answerDuration := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace,
		Name:      "agent_subscription_answer_duration_seconds",
		Help:      "Time from a re-subscription of the agents to the last connected agent's answer: how long a trigger new to the subscription answers Unavailable, after the resubscribe delay.",
		Buckets:   []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	pool, err := agents.New(store, agents.Options{
		Static:      cfg.Agents,
		DNS:         cfg.AgentsDNS,
		DNSRefresh:  cfg.DNSRefresh,
		Resolver:    l.Resolver,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(agentCreds)},
		IdleTimeout: cfg.IdleTimeout,
		BackoffMax:  cfg.BackoffMax,
		Logger:      log.With("component", "agents"),

		AnswerDuration: answerDuration,
	})
	if err != nil {
		return err
	}
	// The agents are asked for what the live triggers need: nothing until
	// KEDA's first call, then re-subscribed as triggers come and go.
	store.SetAnswered(pool.Answered)
	pool.SetRequest(store.Subscription())
	getMetrics := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace,
		Name:      "get_metrics_duration_seconds",
		Help:      "Time the scaler took to answer one GetMetrics call, from memory.",
		Buckets:   []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025},
	})
	ks := keda.New(store, queries, keda.Options{Logger: log.With("component", "keda"), GetMetricsDuration: getMetrics})
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		getMetrics,
		answerDuration,
		newCollector(store, pool, queries),
		tlsFiles,
	)

	gs := newGRPCServer(serverCreds, grpcMaxConcurrentStreams)
	ks.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	// Listen before anything runs, so a taken port fails the start.
	grpcLn, webLn := l.GRPC, l.Web
	if grpcLn == nil {
		if grpcLn, err = net.Listen("tcp", cfg.GRPCListenAddress); err != nil {
			return fmt.Errorf("--grpc.listen-address=%s: %w", cfg.GRPCListenAddress, err)
		}
	}
	if webLn == nil {
		if webLn, err = net.Listen("tcp", cfg.WebListenAddress); err != nil {
			_ = grpcLn.Close()
			return fmt.Errorf("--web.listen-address=%s: %w", cfg.WebListenAddress, err)
		}
	}
	// The agent's HTTP limits (internal/webserver): timeouts, a header
	// bound, --web.max-connections and --web.max-requests.
	webLn = webserver.LimitListener(webLn, cfg.WebLimits.MaxConnections)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: cfg.WebLimits.MaxRequests}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	hsrv := webserver.NewServer(mux, webserver.Limits{})

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return pool.Run(gctx) })
	g.Go(func() error {
		store.RunDemand(gctx, fleet.DemandOptions{}, pool.SetRequest)
		return nil
	})
	g.Go(func() error {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				store.Sweep()
			}
		}
	})
	g.Go(func() error {
		log.Info("serving KEDA external scaler", "address", grpcLn.Addr().String(), "tls", cfg.GRPCTLSCert != "")
		if err := gs.Serve(grpcLn); err != nil {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		log.Info("serving metrics", "address", webLn.Addr().String())
		if err := hsrv.Serve(webLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// End StreamIsActive streams with EOF first: GracefulStop waits
		// for every handler.
		hs.Shutdown()
		ks.Shutdown()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		timer := time.NewTimer(ShutdownTimeout)
		defer timer.Stop()
		select {
		case <-stopped:
		case <-timer.C:
			log.Warn("gRPC drain timed out; closing connections")
			gs.Stop()
		}
		// The parent context is cancelled: drain with a fresh one.
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		return hsrv.Shutdown(sctx)
	})
	err = g.Wait()
	log.Info("stopped")
	return err
}
