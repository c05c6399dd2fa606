package scaler

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// serveGRPC serves the KEDA service's server (newGRPCServer) with gRPC
// health, at most maxStreams streams a connection, on loopback; the
// client connection sends any size, so the server's limits apply.
func serveGRPC(t *testing.T, maxStreams uint32) (string, healthpb.HealthClient) {
	t.Helper()
	gs := newGRPCServer(insecure.NewCredentials(), maxStreams)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ln.Addr().String(), healthpb.NewHealthClient(conn)
}

// A request over 1 MiB is refused with RESOURCE_EXHAUSTED.
func TestGRPCMessageLimit(t *testing.T) {
	_, client := serveGRPC(t, grpcMaxConcurrentStreams)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: strings.Repeat("s", grpcMaxMessageBytes)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a request over %d bytes: %v, want RESOURCE_EXHAUSTED", grpcMaxMessageBytes, err)
	}
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("a small request after it: %v", err)
	}
}

// Past the stream cap a new stream on the connection waits until one
// ends (the cap is 10,000 in production; 2 here).
func TestGRPCStreamsPerConnection(t *testing.T) {
	_, client := serveGRPC(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstCtx, endFirst := context.WithCancel(ctx)
	for i, c := range []context.Context{firstCtx, ctx} {
		s, err := client.Watch(c, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	got := make(chan error, 1)
	go func() {
		s, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third stream answered (%v) while 2 were open", err)
	case <-time.After(300 * time.Millisecond):
	}
	endFirst()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("the waiting stream, once one ended: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting stream never started after one ended")
	}
}

// A client that pings more often than every 5 s is sent GOAWAY
// ENHANCE_YOUR_CALM ("too_many_pings"), as by the agent.
func TestGRPCKeepaliveEnforcement(t *testing.T) {
	addr, _ := serveGRPC(t, grpcMaxConcurrentStreams)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, debug, err := testutil.PingFlood(ctx, addr, 10*time.Millisecond)
	if err != nil || code != http2.ErrCodeEnhanceYourCalm || debug != "too_many_pings" {
		t.Errorf("ping flood: %v %q %v, want GOAWAY ENHANCE_YOUR_CALM too_many_pings", code, debug, err)
	}
}
