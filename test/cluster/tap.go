package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Tap is a gRPC proxy between KEDA and the scaler: a ScaledObject whose
// scalerAddress is the tap's is served by the scaler through it, and the
// tap keeps, with the local time, every StreamIsActive message and every
// GetMetrics answer it forwards. Those are the moments KEDA receives the
// push path's answers, which neither KEDA nor the scaler logs: where the
// push path ends and KEDA's or the HPA's share of a step begins.
//
// The tap adds one loopback hop each way (tens of microseconds; its own
// forwarding time is kept, see tapEvent.Asked).
type Tap struct {
	externalscaler.UnimplementedExternalScalerServer
	Addr string

	up   externalscaler.ExternalScalerClient
	conn *grpc.ClientConn
	srv  *grpc.Server

	mu     sync.Mutex
	events []tapEvent
}

// tapEvent is one answer the tap forwarded to KEDA.
type tapEvent struct {
	// Asked is when KEDA's call reached the tap (for a stream message,
	// when the scaler's message did); At when the scaler's answer did,
	// just before it went on to KEDA.
	Asked, At   time.Time
	Method      string // "GetMetrics", "IsActive" or "StreamIsActive"
	ScaledObj   string // the ScaledObjectRef's name
	Active      bool   // IsActive, StreamIsActive
	Value       float64
	Unavailable bool // the scaler answered an error
}

var _ externalscaler.ExternalScalerServer = (*Tap)(nil)

// StartTap listens on a free loopback port and forwards to the scaler at
// upstream; it stops with ctx.
func StartTap(ctx context.Context, upstream string) (*Tap, error) {
	conn, err := grpc.NewClient(upstream, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		conn.Close()
		return nil, err
	}
	t := &Tap{Addr: ln.Addr().String(), up: externalscaler.NewExternalScalerClient(conn), conn: conn, srv: grpc.NewServer()}
	externalscaler.RegisterExternalScalerServer(t.srv, t)
	go func() { _ = t.srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		t.srv.Stop()
		conn.Close()
	}()
	return t, nil
}

func (t *Tap) add(e tapEvent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.events = append(t.events, e)
}

// Events returns the answers forwarded for the ScaledObject name by
// method, in the order they reached the tap.
func (t *Tap) Events(name, method string) []tapEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []tapEvent
	for _, e := range t.events {
		if e.ScaledObj == name && e.Method == method {
			out = append(out, e)
		}
	}
	return out
}

// First returns the first answer for name by method that reached the tap
// at or after since and satisfies ok.
func (t *Tap) First(name, method string, since time.Time, ok func(tapEvent) bool) (tapEvent, bool) {
	for _, e := range t.Events(name, method) {
		if !e.At.Before(since) && ok(e) {
			return e, true
		}
	}
	return tapEvent{}, false
}

func (t *Tap) GetMetricSpec(ctx context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.GetMetricSpecResponse, error) {
	return t.up.GetMetricSpec(ctx, ref)
}

func (t *Tap) GetMetrics(ctx context.Context, req *externalscaler.GetMetricsRequest) (*externalscaler.GetMetricsResponse, error) {
	asked := time.Now()
	resp, err := t.up.GetMetrics(ctx, req)
	e := tapEvent{Asked: asked, At: time.Now(), Method: "GetMetrics", ScaledObj: req.GetScaledObjectRef().GetName(), Unavailable: err != nil}
	if err == nil && len(resp.GetMetricValues()) == 1 {
		e.Value = metricValue(resp.GetMetricValues()[0])
	}
	t.add(e)
	return resp, err
}

func (t *Tap) IsActive(ctx context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.IsActiveResponse, error) {
	asked := time.Now()
	resp, err := t.up.IsActive(ctx, ref)
	t.add(tapEvent{Asked: asked, At: time.Now(), Method: "IsActive", ScaledObj: ref.GetName(), Active: resp.GetResult(), Unavailable: err != nil})
	return resp, err
}

func (t *Tap) StreamIsActive(ref *externalscaler.ScaledObjectRef, down grpc.ServerStreamingServer[externalscaler.IsActiveResponse]) error {
	up, err := t.up.StreamIsActive(down.Context(), ref)
	if err != nil {
		return err
	}
	for {
		m, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		now := time.Now()
		t.add(tapEvent{Asked: now, At: now, Method: "StreamIsActive", ScaledObj: ref.GetName(), Active: m.GetResult()})
		if err := down.Send(m); err != nil {
			return err
		}
	}
}

// metricValue is a metric as KEDA reads it: the float when above 0, else
// the integer.
func metricValue(m *externalscaler.MetricValue) float64 {
	if f := m.GetMetricValueFloat(); f > 0 {
		return f
	}
	return float64(m.GetMetricValue())
}
