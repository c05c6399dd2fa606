package cluster

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// fakeScaler answers GetMetrics for "m" with 255, Unavailable for any
// other metric, and streams the activity sent on active.
type fakeScaler struct {
	externalscaler.UnimplementedExternalScalerServer
	active chan bool
}

func (f *fakeScaler) GetMetrics(_ context.Context, req *externalscaler.GetMetricsRequest) (*externalscaler.GetMetricsResponse, error) {
	if req.GetMetricName() != "m" {
		return nil, status.Error(codes.Unavailable, "no data")
	}
	return &externalscaler.GetMetricsResponse{MetricValues: []*externalscaler.MetricValue{{MetricName: "m", MetricValueFloat: 255}}}, nil
}

func (f *fakeScaler) StreamIsActive(_ *externalscaler.ScaledObjectRef, s grpc.ServerStreamingServer[externalscaler.IsActiveResponse]) error {
	for a := range f.active {
		if err := s.Send(&externalscaler.IsActiveResponse{Result: a}); err != nil {
			return err
		}
	}
	return nil
}

// TestTap: the tap forwards KEDA's calls and their errors unchanged and
// keeps each answer, timed, under its ScaledObject.
func TestTap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := &fakeScaler{active: make(chan bool)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	externalscaler.RegisterExternalScalerServer(srv, fake)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	tap, err := StartTap(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(tap.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	keda := externalscaler.NewExternalScalerClient(conn)
	ref := &externalscaler.ScaledObjectRef{Name: "so", Namespace: ns}

	before := time.Now()
	resp, err := keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "m"})
	if err != nil || metricValue(resp.GetMetricValues()[0]) != 255 {
		t.Fatalf("GetMetrics through the tap: %v %v", resp, err)
	}
	if _, err := keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "gone"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetMetrics through the tap: %v, want the scaler's Unavailable", err)
	}
	evs := tap.Events("so", "GetMetrics")
	if len(evs) != 2 || evs[0].Value != 255 || evs[0].Unavailable || !evs[1].Unavailable {
		t.Fatalf("the tap kept %+v, want 255 then Unavailable", evs)
	}
	for _, e := range evs {
		if e.Asked.Before(before) || e.At.Before(e.Asked) {
			t.Errorf("event %+v: asked before the call or answered before asked", e)
		}
	}

	stream, err := keda.StreamIsActive(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []bool{false, true} {
		fake.active <- a
		m, err := stream.Recv()
		if err != nil || m.GetResult() != a {
			t.Fatalf("StreamIsActive through the tap: %v %v, want %v", m, err, a)
		}
	}
	first, ok := tap.First("so", "StreamIsActive", before, func(e tapEvent) bool { return e.Active })
	if !ok || len(tap.Events("so", "StreamIsActive")) != 2 {
		t.Fatalf("the tap kept %+v", tap.Events("so", "StreamIsActive"))
	}
	if _, ok := tap.First("so", "StreamIsActive", first.At.Add(time.Nanosecond), func(tapEvent) bool { return true }); ok {
		t.Error("First returned an event before since")
	}
	if len(tap.Events("other", "StreamIsActive")) != 0 {
		t.Error("events kept under another ScaledObject's name")
	}
	close(fake.active)
}
