// Package keda serves KEDA's external scaler contract (package
// externalscaler, service ExternalScaler, KEDA's own generated code) over
// the scaler's store: every answer comes from memory.
package keda

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpu-telemetry/agent/internal/fleet"
)

// Observer records a duration in seconds (a Prometheus histogram).
type Observer interface{ Observe(float64) }

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// GetMetricsDuration, if not nil, observes every GetMetrics call.
	GetMetricsDuration Observer
}

// Server implements externalscaler.ExternalScalerServer.
type Server struct {
	externalscaler.UnimplementedExternalScalerServer

	store   *fleet.Store
	queries *fleet.QueryCache
	opts    Options
	log     *slog.Logger

	done     chan struct{}
	stopOnce sync.Once
}

var _ externalscaler.ExternalScalerServer = (*Server)(nil)

// New returns a server over store, parsing triggers through queries.
func New(store *fleet.Store, queries *fleet.QueryCache, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{store: store, queries: queries, opts: o, log: o.Logger, done: make(chan struct{})}
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { externalscaler.RegisterExternalScalerServer(g, s) }

// Shutdown ends every StreamIsActive stream cleanly: KEDA sees EOF and
// reopens in 2 s, where after an error it would back off up to a minute.
// Call it before grpc.Server.GracefulStop, which waits for the handlers
// and would otherwise wait on streams that never end by themselves.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() { close(s.done) })
}

func (s *Server) query(ref *externalscaler.ScaledObjectRef) (*fleet.Query, error) {
	if ref == nil {
		return nil, status.Error(codes.InvalidArgument, "scaledObjectRef is missing")
	}
	q, err := s.queries.Parse(ref.GetScalerMetadata(), ref.GetNamespace())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return q, nil
}

func (s *Server) evaluate(q *fleet.Query) (fleet.Result, error) {
	res, err := s.store.Answer(q)
	if err != nil {
		// Unavailable, never a silent 0: KEDA's fallback applies.
		return res, status.Errorf(codes.Unavailable, "%s: %v", q.MetricName(), err)
	}
	return res, nil
}

// GetMetricSpec names the trigger's metric and its target. The int field
// is the target rounded up (at least 1), for KEDA versions before
// targetSizeFloat; KEDA reads the float when it is above 0, which it is.
func (s *Server) GetMetricSpec(_ context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.GetMetricSpecResponse, error) {
	q, err := s.query(ref)
	if err != nil {
		return nil, err
	}
	return &externalscaler.GetMetricSpecResponse{MetricSpecs: []*externalscaler.MetricSpec{{
		MetricName:      q.MetricName(),
		TargetSize:      max(1, roundUp(q.Target)),
		TargetSizeFloat: q.Target,
	}}}, nil
}

// GetMetrics answers the HPA's poll. metricValue is the value rounded up;
// metricValueFloat is exact (KEDA uses it when above 0, and when it is 0
// so is metricValue).
func (s *Server) GetMetrics(_ context.Context, req *externalscaler.GetMetricsRequest) (*externalscaler.GetMetricsResponse, error) {
	if o := s.opts.GetMetricsDuration; o != nil {
		start := time.Now()
		defer func() { o.Observe(time.Since(start).Seconds()) }()
	}
	q, err := s.query(req.GetScaledObjectRef())
	if err != nil {
		return nil, err
	}
	res, err := s.evaluate(q)
	if err != nil {
		return nil, err
	}
	name := req.GetMetricName()
	if name == "" {
		name = q.MetricName()
	}
	return &externalscaler.GetMetricsResponse{MetricValues: []*externalscaler.MetricValue{{
		MetricName:       name,
		MetricValue:      roundUp(res.Value),
		MetricValueFloat: res.Value,
	}}}, nil
}

// IsActive is KEDA's activation: the value above activationTarget. With no
// data behind it, it fails like GetMetrics, which KEDA calls just before.
func (s *Server) IsActive(_ context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.IsActiveResponse, error) {
	q, err := s.query(ref)
	if err != nil {
		return nil, err
	}
	res, err := s.evaluate(q)
	if err != nil {
		return nil, err
	}
	return &externalscaler.IsActiveResponse{Result: q.Active(res.Value)}, nil
}

// StreamIsActive sends the current state, then every transition, as the
// snapshot that causes it arrives. It ends with nil (EOF for KEDA) on
// Shutdown.
func (s *Server) StreamIsActive(ref *externalscaler.ScaledObjectRef, stream grpc.ServerStreamingServer[externalscaler.IsActiveResponse]) error {
	q, err := s.query(ref)
	if err != nil {
		return err
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	active, ch, cancel := s.store.Watch(q)
	defer cancel()
	s.log.Debug("StreamIsActive opened", "scaledobject", ref.GetNamespace()+"/"+ref.GetName(), "metric", q.MetricName(), "active", active)
	if err := stream.Send(&externalscaler.IsActiveResponse{Result: active}); err != nil {
		return err
	}
	for {
		select {
		case <-s.done:
			return nil
		case <-stream.Context().Done():
			return stream.Context().Err()
		case a := <-ch:
			if a == active {
				continue // a transition and its reversal, both unread
			}
			active = a
			if err := stream.Send(&externalscaler.IsActiveResponse{Result: a}); err != nil {
				return err
			}
		}
	}
}

func roundUp(v float64) int64 {
	if math.IsNaN(v) || v <= 0 {
		return 0
	}
	if v >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(math.Ceil(v))
}
