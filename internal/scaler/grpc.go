package scaler

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// The KEDA service's limits.
//
// KEDA's messages are a ScaledObjectRef with its trigger's metadata and
// the answers a metric or two: a few hundred bytes, so 1 MiB each way.
//
// KEDA dials one connection per scaler address and carries every
// ScaledObject's StreamIsActive and every GetMetrics and IsActive on it
// (its external scaler's connection pool), so the cap on streams per
// connection must exceed the push triggers through this scaler: a stream
// past it waits (gRPC's client queues it) until one ends, and a
// GetMetrics that waits is an HPA that does not scale. 10,000 streams
// hold about 100 MiB; a client that opens streams in a loop stops there.
//
// Keepalive: the scaler pings a connection idle for grpcKeepaliveTime and
// drops it without an answer within grpcKeepaliveTimeout (a KEDA operator
// pod gone without closing); a client may ping every grpcMinClientPing at
// most (KEDA sets no keepalive), and is sent GOAWAY
// (ENHANCE_YOUR_CALM, "too_many_pings") for pinging more often.
const (
	grpcMaxMessageBytes      = 1 << 20
	grpcMaxConcurrentStreams = 10_000

	grpcKeepaliveTime    = 30 * time.Second
	grpcKeepaliveTimeout = 10 * time.Second
	grpcMinClientPing    = 5 * time.Second
)

// newGRPCServer is the KEDA service's server: creds, keepalive, the
// message limits and at most maxStreams streams per connection.
func newGRPCServer(creds credentials.TransportCredentials, maxStreams uint32) *grpc.Server {
	return grpc.NewServer(
		grpc.Creds(creds),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcMinClientPing, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(grpcMaxMessageBytes),
		grpc.MaxSendMsgSize(grpcMaxMessageBytes),
		grpc.MaxConcurrentStreams(maxStreams),
	)
}
