package agent

import (
	"context"
	"net"
	"strconv"
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

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// hugeWatch answers every Watch with one snapshot of the size its
// namespace asks for (a number of bytes), as an agent with a huge app set
// would.
type hugeWatch struct {
	telemetryv1.UnimplementedTelemetryServer
}

func (hugeWatch) Watch(req *telemetryv1.WatchRequest, s grpc.ServerStreamingServer[telemetryv1.NodeSnapshot]) error {
	n, _ := strconv.Atoi(req.GetNamespace())
	return s.Send(&telemetryv1.NodeSnapshot{Node: strings.Repeat("x", n)})
}

// serveGRPC serves the agent's gRPC server (newGRPCServer, no TLS) with
// hugeWatch and gRPC health on loopback and returns a client connection
// that accepts any message size, so that the server's limits are the
// ones that apply.
func serveGRPC(t *testing.T) (string, *grpc.ClientConn) {
	t.Helper()
	gs := newGRPCServer(nil)
	telemetryv1.RegisterTelemetryServer(gs, hugeWatch{})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ln.Addr().String(), conn
}

// The agent refuses a request over 1 MiB and sends no message over what
// the scaler accepts: the Watch ends with RESOURCE_EXHAUSTED instead.
func TestGRPCMessageLimits(t *testing.T) {
	if grpcMaxSendBytes != agents.MaxMessageBytes {
		t.Errorf("the agent sends up to %d bytes, the scaler takes %d", grpcMaxSendBytes, agents.MaxMessageBytes)
	}
	_, conn := serveGRPC(t)
	client := telemetryv1.NewTelemetryClient(conn)
	// watch asks for an answer of answer bytes with a request of about
	// request bytes.
	watch := func(request, answer int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := client.Watch(ctx, &telemetryv1.WatchRequest{Namespace: strconv.Itoa(answer), PodPattern: strings.Repeat("p", request)})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	if err := watch(grpcMaxRecvBytes-100, grpcMaxSendBytes-100); err != nil {
		t.Fatalf("a request under 1 MiB, an answer under %d bytes: %v", grpcMaxSendBytes, err)
	}
	if err := watch(grpcMaxRecvBytes, 10); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a request over %d bytes: %v, want RESOURCE_EXHAUSTED", grpcMaxRecvBytes, err)
	}
	if err := watch(10, grpcMaxSendBytes); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("an answer over %d bytes: %v, want RESOURCE_EXHAUSTED", grpcMaxSendBytes, err)
	}
}

// Past 16 streams on one connection a new stream waits until one ends.
func TestGRPCStreamsPerConnection(t *testing.T) {
	_, conn := serveGRPC(t)
	client := healthpb.NewHealthClient(conn)
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	open := func() (healthpb.Health_WatchClient, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		s, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return s, cancel
	}
	var first context.CancelFunc
	for i := range grpcMaxStreamsPerConn {
		s, cancel := open()
		if _, err := s.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		if i == 0 {
			first = cancel
		}
	}
	got := make(chan error, 1)
	go func() {
		s, _ := open()
		_, err := s.Recv()
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("stream %d answered (%v) while %d were open", grpcMaxStreamsPerConn+1, err, grpcMaxStreamsPerConn)
	case <-time.After(300 * time.Millisecond):
	}
	first()
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
// ENHANCE_YOUR_CALM ("too_many_pings").
func TestGRPCKeepaliveEnforcement(t *testing.T) {
	addr, _ := serveGRPC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, debug, err := testutil.PingFlood(ctx, addr, 10*time.Millisecond)
	if err != nil || code != http2.ErrCodeEnhanceYourCalm || debug != "too_many_pings" {
		t.Errorf("ping flood: %v %q %v, want GOAWAY ENHANCE_YOUR_CALM too_many_pings", code, debug, err)
	}
}
