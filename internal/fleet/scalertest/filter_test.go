package scalertest

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/stream/watchreq"
)

func uuids(m *telemetryv1.NodeSnapshot) []string {
	var out []string
	for _, d := range m.GetDevices() {
		out = append(out, d.GetUuid())
	}
	return out
}

func TestFilterPods(t *testing.T) {
	devs := []*telemetryv1.Device{
		Device("GPU-web", 10, "a/web-1"),
		Device("GPU-db", 10, "a/db-1"),
		Device("GPU-b", 10, "b/anything"),
		Device("GPU-shared", 10, "c/x", "a/web-2"),
		Device("GPU-idle", 10),
	}
	snap := &telemetryv1.NodeSnapshot{Node: "n", Sequence: 1, Devices: devs, Interval: durationpb.New(250 * time.Millisecond)}
	sel := func(ns, p string) *telemetryv1.PodSelector {
		return &telemetryv1.PodSelector{Namespace: ns, PodPattern: p}
	}
	for _, tc := range []struct {
		name string
		req  *telemetryv1.WatchRequest
		want []string
	}{
		{"no filter", &telemetryv1.WatchRequest{}, []string{"GPU-web", "GPU-db", "GPU-b", "GPU-shared"}},
		{"no filter, unattributed", &telemetryv1.WatchRequest{IncludeUnattributed: true}, []string{"GPU-web", "GPU-db", "GPU-b", "GPU-shared", "GPU-idle"}},
		{"legacy", &telemetryv1.WatchRequest{Namespace: "a", PodPattern: "web-.*", IncludeUnattributed: true}, []string{"GPU-web", "GPU-shared"}},
		{"legacy namespace", &telemetryv1.WatchRequest{Namespace: "a"}, []string{"GPU-web", "GPU-db", "GPU-shared"}},
		{"legacy pattern is whole-name", &telemetryv1.WatchRequest{PodPattern: "web"}, nil},
		{"selectors OR-ed", &telemetryv1.WatchRequest{PodFilter: &telemetryv1.PodFilter{Selectors: []*telemetryv1.PodSelector{sel("a", "web-.*"), sel("b", "")}}},
			[]string{"GPU-web", "GPU-b", "GPU-shared"}},
		{"selectors replace legacy", &telemetryv1.WatchRequest{Namespace: "b", PodFilter: &telemetryv1.PodFilter{Selectors: []*telemetryv1.PodSelector{sel("a", "db-.*")}}},
			[]string{"GPU-db"}},
		{"any namespace", &telemetryv1.WatchRequest{PodFilter: &telemetryv1.PodFilter{Selectors: []*telemetryv1.PodSelector{sel("", "x|db-1")}}},
			[]string{"GPU-db", "GPU-shared"}},
		{"no selector: nothing", &telemetryv1.WatchRequest{PodFilter: &telemetryv1.PodFilter{}, IncludeUnattributed: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := newFilter(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := uuids(f.message(snap, nil, nil, 250*time.Millisecond)); !slices.Equal(got, tc.want) {
				t.Errorf("devices %v, want %v", got, tc.want)
			}
		})
	}
	for _, req := range []*telemetryv1.WatchRequest{
		{PodPattern: "a)|(b"},
		{PodFilter: &telemetryv1.PodFilter{Selectors: []*telemetryv1.PodSelector{sel("a", "(")}}},
		{MinPeriod: durationpb.New(-time.Second)},
		{Heartbeat: durationpb.New(-time.Second)},
		{AppFamilies: []string{"not a name"}},
	} {
		if _, err := newFilter(req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}

func TestFilterFields(t *testing.T) {
	d := Device("GPU-0", 40, "a/p", "a/q")
	used, total, sessions, lat := uint64(1), uint64(2), uint32(3), 0.25
	d.FbUsedBytes, d.FbTotalBytes, d.EncoderSessions, d.EncoderLatencySeconds = &used, &total, &sessions, &lat
	share := 20.0
	d.Pods[0].GpuUtil, d.Pods[0].EncUtil, d.Pods[0].EncoderLatencyMaxSeconds = &share, &share, &lat
	for e := telemetryv1.Engine_ENGINE_GPU; e <= telemetryv1.Engine_ENGINE_DECODER; e++ {
		d.Samples = append(d.Samples, &telemetryv1.EngineSamples{Engine: e, Samples: []*telemetryv1.Sample{{Value: 1}}})
	}
	snap := &telemetryv1.NodeSnapshot{Node: "n", Sequence: 1, Devices: []*telemetryv1.Device{d}}
	f, err := newFilter(&telemetryv1.WatchRequest{DeviceFields: &fieldmaskpb.FieldMask{
		Paths: []string{"gpu_util", "encoder_latency_seconds", "samples", "a_field_of_the_future"}}})
	if err != nil {
		t.Fatal(err)
	}
	got := f.message(snap, nil, nil, time.Second).GetDevices()[0]
	if got.GetUuid() != "GPU-0" || got.GetModelName() != "Tesla T4" || len(got.GetPods()) != 2 || got.GetPods()[1].GetName() != "q" {
		t.Errorf("identity or pods lost: %v", got)
	}
	if got.GpuUtil == nil || got.EncoderLatencySeconds == nil {
		t.Errorf("named fields missing: %v", got)
	}
	if got.EncUtil != nil || got.FbUsedBytes != nil || got.EncoderSessions != nil {
		t.Errorf("fields not named were sent: %v", got)
	}
	p := got.GetPods()[0]
	if p.GpuUtil == nil || p.EncoderLatencyMaxSeconds == nil || p.EncUtil != nil {
		t.Errorf("the pod's shares follow the device's fields: got %v", p)
	}
	if len(got.GetSamples()) != 1 || got.GetSamples()[0].GetEngine() != telemetryv1.Engine_ENGINE_GPU {
		t.Errorf("samples of the named utilizations only: %v", got.GetSamples())
	}
	if d.EncUtil == nil || len(d.Samples) != 4 || d.Pods[0].EncUtil == nil {
		t.Error("the published device was changed")
	}
}

func TestFilterSettle(t *testing.T) {
	for _, tc := range []struct{ minPeriod, heartbeat, wantMin, wantHB time.Duration }{
		{0, 0, 0, 0},
		{100 * time.Millisecond, 0, 250 * time.Millisecond, 0},
		{0, 100 * time.Millisecond, 0, 250 * time.Millisecond},
		{2 * time.Second, time.Second, 2 * time.Second, 2 * time.Second},
		{0, time.Hour, 0, time.Minute},
	} {
		f := &filter{Filter: watchreq.Filter{MinPeriod: tc.minPeriod, Heartbeat: tc.heartbeat}}
		f.Settle(250 * time.Millisecond)
		if f.MinPeriod != tc.wantMin || f.Heartbeat != tc.wantHB {
			t.Errorf("min_period %s heartbeat %s: settled to %s, %s, want %s, %s", tc.minPeriod, tc.heartbeat, f.MinPeriod, f.Heartbeat, tc.wantMin, tc.wantHB)
		}
	}
}

// sink is a Watch stream that keeps what is sent.
type sink struct {
	grpc.ServerStream
	ctx  context.Context
	sent []*telemetryv1.NodeSnapshot
}

func (s *sink) Send(m *telemetryv1.NodeSnapshot) error { s.sent = append(s.sent, m); return nil }
func (s *sink) Context() context.Context               { return s.ctx }

// watchTicks offers the snapshots of devs(i) at i*250ms to a subscriber
// of req, one at a time, and returns what it was sent.
func watchTicks(t *testing.T, req *telemetryv1.WatchRequest, n int, devs func(i int) []*telemetryv1.Device) []*telemetryv1.NodeSnapshot {
	t.Helper()
	f, err := newFilter(req)
	if err != nil {
		t.Fatal(err)
	}
	const interval = 250 * time.Millisecond
	f.Settle(interval)
	ctx, cancel := context.WithCancel(context.Background())
	st := &sink{ctx: ctx}
	c := make(chan *telemetryv1.NodeSnapshot) // unbuffered: each is taken before the next
	done := make(chan error)
	a := &Agent{}
	go func() { done <- a.watchFiltered(f, c, st) }()
	t0 := time.Unix(1000, 0)
	for i := range n {
		c <- &telemetryv1.NodeSnapshot{Node: "n", Sequence: uint64(i + 1), SampleTime: timestamppb.New(t0.Add(time.Duration(i) * interval)),
			Interval: durationpb.New(interval), Devices: devs(i)}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return st.sent
}

func seqs(ms []*telemetryv1.NodeSnapshot) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.GetSequence())
	}
	return out
}

func TestWatchMinPeriodMergesSamples(t *testing.T) {
	sent := watchTicks(t, &telemetryv1.WatchRequest{MinPeriod: durationpb.New(time.Second)}, 9, func(i int) []*telemetryv1.Device {
		d := Device("GPU-0", float64(i), "a/p")
		d.Samples = []*telemetryv1.EngineSamples{{Engine: telemetryv1.Engine_ENGINE_GPU, Samples: []*telemetryv1.Sample{{Value: float64(i)}}}}
		return []*telemetryv1.Device{d}
	})
	if got := seqs(sent); !slices.Equal(got, []uint64{1, 5, 9}) {
		t.Fatalf("sequences sent %v, want every fourth", got)
	}
	m := sent[1]
	if m.GetSkipped() != 3 || m.GetPeriod().AsDuration() != time.Second {
		t.Errorf("skipped %d period %s, want 3, 1s", m.GetSkipped(), m.GetPeriod().AsDuration())
	}
	var vals []float64
	for _, s := range m.GetDevices()[0].GetSamples()[0].GetSamples() {
		vals = append(vals, s.GetValue())
	}
	if !slices.Equal(vals, []float64{1, 2, 3, 4}) {
		t.Errorf("samples %v, want those of every snapshot since the last message", vals)
	}
}

func TestWatchHeartbeat(t *testing.T) {
	// A device of the matching pod at ticks 20-21 only; heartbeat 3 s
	// (12 ticks).
	req := &telemetryv1.WatchRequest{Namespace: "a", PodPattern: "p", Heartbeat: durationpb.New(3 * time.Second)}
	sent := watchTicks(t, req, 40, func(i int) []*telemetryv1.Device {
		devs := []*telemetryv1.Device{Device("GPU-1", 1, "a/other")}
		if i == 20 || i == 21 {
			devs = append(devs, Device("GPU-0", 1, "a/p"))
		}
		return devs
	})
	// Ticks (from 0) 0 (the first), 12 (a heartbeat), 20 and 21 (data),
	// 22 (gone: at once), 34 (the next heartbeat).
	if got := seqs(sent); !slices.Equal(got, []uint64{1, 13, 21, 22, 23, 35}) {
		t.Fatalf("sequences sent %v", got)
	}
	for i, m := range sent {
		wantPeriod, wantDevs := 3*time.Second, 0
		if m.GetSequence() == 21 || m.GetSequence() == 22 {
			wantPeriod, wantDevs = 250*time.Millisecond, 1
		}
		if m.GetPeriod().AsDuration() != wantPeriod || len(m.GetDevices()) != wantDevs {
			t.Errorf("message %d (seq %d): period %s, %d devices; want %s, %d", i, m.GetSequence(), m.GetPeriod().AsDuration(), len(m.GetDevices()), wantPeriod, wantDevs)
		}
	}
}

// Through gRPC: the fake honours the filter only when asked to.
func TestHonourFilters(t *testing.T) {
	a, err := StartAgent("n", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	a.Publish(Device("GPU-0", 1, "a/p"), Device("GPU-1", 1, "b/q"))
	conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := telemetryv1.NewTelemetryClient(conn)
	first := func(req *telemetryv1.WatchRequest) *telemetryv1.NodeSnapshot {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := client.Watch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	req := &telemetryv1.WatchRequest{Namespace: "a", Heartbeat: durationpb.New(time.Second)}
	if m := first(req); len(m.GetDevices()) != 2 || m.Period != nil {
		t.Errorf("an old agent sends everything and no period: %v", m)
	}
	a.HonourFilters(true)
	if m := first(req); !slices.Equal(uuids(m), []string{"GPU-0"}) || m.GetPeriod().AsDuration() != 250*time.Millisecond {
		t.Errorf("filtered: %v", m)
	}
}
