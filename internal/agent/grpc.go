package agent

import (
	"context"
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// GRPCStopTimeout bounds GracefulStop on shutdown; then the remaining
// connections are closed. Watch streams end at once (stream.Server.Close),
// so only a stuck client or a long health Watch waits this long.
const GRPCStopTimeout = 2 * time.Second

// Keepalive: the server pings an idle connection after grpcKeepaliveTime
// and drops it if the ping is not answered within grpcKeepaliveTimeout,
// so a vanished subscriber (node gone, network cut) frees its stream.
// Clients may ping as often as every grpcMinClientPing (a scaler that
// wants to notice a dead agent quickly), not more, even without streams.
const (
	grpcKeepaliveTime    = 30 * time.Second
	grpcKeepaliveTimeout = 10 * time.Second
	grpcMinClientPing    = 5 * time.Second
)

// Message and stream limits. A WatchRequest is a few filters and at most
// 256 family names, a health request a service name: 1 MiB is ample. A
// NodeSnapshot's devices are at most about 1.4 MB (64 devices of 10 pods
// each, with 1,024 snapshots' driver samples of 8 GPUs after a long
// skip); the rest is app scrapes, about 300 bytes a histogram series of
// the families a subscriber names: grpcMaxSendBytes leaves room for some
// 50,000 of them, and is what the scaler accepts
// (agents.MaxMessageBytes). A larger message ends the Watch with
// RESOURCE_EXHAUSTED rather than reach a client that would refuse it. One
// connection carries one Watch per subscriber (the scaler opens one per
// agent); 16 streams leave room for tools, and a client that opens more
// waits for one to end.
const (
	grpcMaxRecvBytes      = 1 << 20
	grpcMaxSendBytes      = 16 << 20
	grpcMaxStreamsPerConn = 16
)

// newGRPCServer returns the gRPC server with keepalive, the message and
// stream limits and, if tlsConf is set, TLS.
func newGRPCServer(tlsConf *tls.Config) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcMinClientPing, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(grpcMaxRecvBytes),
		grpc.MaxSendMsgSize(grpcMaxSendBytes),
		grpc.MaxConcurrentStreams(grpcMaxStreamsPerConn),
	}
	if tlsConf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConf)))
	}
	return grpc.NewServer(opts...)
}

// healthServices are the names gRPC health answers for: the server as a
// whole ("") and the Telemetry service.
var healthServices = []string{"", telemetryv1.Telemetry_ServiceDesc.ServiceName}

// serveHealthOnce marks healthServices SERVING once the first snapshot
// exists (they start NOT_SERVING), as /readyz does.
func serveHealthOnce(ctx context.Context, hs *health.Server, store *telemetry.Store) {
	if _, err := store.Wait(ctx, 0); err != nil {
		return
	}
	for _, svc := range healthServices {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
}

// stopGRPC ends the server: open Watch streams have been closed already;
// GracefulStop lets in-flight calls finish, bounded by GRPCStopTimeout.
func stopGRPC(gs *grpc.Server) {
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(GRPCStopTimeout):
		gs.Stop()
		<-stopped
	}
}
