package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/stream"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
)

// pushServer is the gRPC side of the agent: the Watch stream and gRPC
// health on --grpc.listen-address.
type pushServer struct {
	grpc   *grpc.Server
	health *health.Server
	stream *stream.Server
	tls    *tlsfiles.Set // the TLS files' metrics; none without TLS
	store  *telemetry.Store
	ln     net.Listener
	log    *slog.Logger
}

func newPushServer(cfg *Config, store *telemetry.Store, views *attribution.Attributor, apps *app.Manager, log *slog.Logger) (*pushServer, error) {
	files := tlsfiles.NewSet(tlsfiles.Options{Namespace: exporter.Namespace, Logger: log.With("component", "tls")})
	tlsConf, err := cfg.GRPCTLSConfig(files)
	if err != nil {
		return nil, err
	}
	var appSrc stream.AppSource // nil, not a nil *app.Manager
	if apps != nil {
		appSrc = apps
	}
	p := &pushServer{
		grpc:   newGRPCServer(tlsConf),
		health: health.NewServer(),
		tls:    files,
		store:  store,
		log:    log,
		stream: stream.New(store, stream.Options{
			Node:     cfg.NodeName,
			Interval: cfg.Interval,
			Start:    time.Now(),
			Views:    views,
			Logger:   log,
			Apps:     appSrc,
		}),
	}
	p.stream.Register(p.grpc)
	healthpb.RegisterHealthServer(p.grpc, p.health)
	for _, svc := range healthServices {
		p.health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	return p, nil
}

// listenGRPC binds the push API's address before anything runs, so a
// taken port fails the start; the server is made once NVML is up.
func listenGRPC(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--grpc.listen-address=%s: %w", addr, err)
	}
	return ln, nil
}

// run serves until ctx ends, then closes every Watch stream (clients read
// EOF) and stops the server within GRPCStopTimeout.
func (p *pushServer) run(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error { return p.stream.Run(ctx) })
	g.Go(func() error {
		serveHealthOnce(ctx, p.health, p.store)
		return nil
	})
	g.Go(func() error {
		p.log.Info("serving the push API", "address", p.ln.Addr().String())
		if err := p.grpc.Serve(p.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		p.stream.Close()
		p.health.Shutdown()
		stopGRPC(p.grpc)
		return nil
	})
}
