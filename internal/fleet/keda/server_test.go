package keda

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
)

func serve(t *testing.T) (*fleet.Store, *Server, externalscaler.ExternalScalerClient, *grpc.Server) {
	t.Helper()
	store := fleet.NewStore(fleet.Options{MaxWindow: time.Minute})
	srv := New(store, fleet.NewQueryCache(time.Minute, 16, store.Retain), Options{})
	gs := grpc.NewServer()
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return store, srv, externalscaler.NewExternalScalerClient(conn), gs
}

func latencySnapshot(lat float64) *telemetryv1.NodeSnapshot {
	d := scalertest.Device("GPU-1", 10, "media/webrtc-0")
	d.EncoderLatencySeconds = &lat
	return &telemetryv1.NodeSnapshot{Node: "n", Sequence: 1, SampleTime: timestamppb.Now(),
		Interval: durationpb.New(250 * time.Millisecond), AgentStart: timestamppb.Now(), Devices: []*telemetryv1.Device{d}}
}

// Fractional values and targets (seconds of latency) keep both fields:
// the float exact, the int rounded up, the target's int at least 1.
func TestFractionalValues(t *testing.T) {
	store, _, client, _ := serve(t)
	ref := &externalscaler.ScaledObjectRef{Name: "so", Namespace: "media",
		ScalerMetadata: map[string]string{"metric": "encoder_latency", "target": "0.05", "activationTarget": "0.02"}}
	ctx := context.Background()
	if _, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref}); status.Code(err) != codes.Unavailable {
		t.Errorf("no agent: err = %v, want Unavailable", err)
	}
	if _, err := client.IsActive(ctx, ref); status.Code(err) != codes.Unavailable {
		t.Errorf("no agent: IsActive err = %v, want Unavailable", err)
	}
	if err := store.Ingest(latencySnapshot(0.012)); err != nil {
		t.Fatal(err)
	}
	spec, err := client.GetMetricSpec(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if s := spec.MetricSpecs[0]; s.TargetSizeFloat != 0.05 || s.TargetSize != 1 {
		t.Errorf("spec %v: want targetSizeFloat 0.05, targetSize 1", s)
	}
	m, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "as-keda-sends-it"})
	if err != nil {
		t.Fatal(err)
	}
	if v := m.MetricValues[0]; v.MetricValueFloat != 0.012 || v.MetricValue != 1 || v.MetricName != "as-keda-sends-it" {
		t.Errorf("value %v: want 0.012, 1, the requested name", v)
	}
	if a, err := client.IsActive(ctx, ref); err != nil || a.Result {
		t.Errorf("IsActive = %v, %v; want false (0.012 <= 0.02)", a, err)
	}
	if _, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no ref: %v, want InvalidArgument", err)
	}
}

// Shutdown ends open streams with EOF, and a stream opened after it ends
// at once, cleanly too.
func TestStreamEndsCleanlyOnShutdown(t *testing.T) {
	store, srv, client, gs := serve(t)
	if err := store.Ingest(latencySnapshot(0.03)); err != nil {
		t.Fatal(err)
	}
	ref := &externalscaler.ScaledObjectRef{Name: "so", Namespace: "media",
		ScalerMetadata: map[string]string{"metric": "encoder_latency", "target": "0.05", "activationTarget": "0.02"}}
	stream, err := client.StreamIsActive(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || !m.Result {
		t.Fatalf("first message %v, %v; want the current state, true", m, err)
	}
	srv.Shutdown()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after Shutdown: %v, want EOF", err)
	}
	late, err := client.StreamIsActive(context.Background(), ref)
	if err == nil {
		_, err = late.Recv()
	}
	if !errors.Is(err, io.EOF) {
		t.Errorf("stream opened after Shutdown: %v, want EOF", err)
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Error("GracefulStop waits on a stream after Shutdown")
	}
}
