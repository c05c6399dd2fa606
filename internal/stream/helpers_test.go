package stream

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

const (
	uuid0 = "GPU-00000000-0000-0000-0000-000000000000" // ml/inference-0
	uuid1 = "GPU-11111111-1111-1111-1111-111111111111" // media/sfu-0 and sfu-1, time-sliced
	uuid2 = "GPU-22222222-2222-2222-2222-222222222222" // free
	uuid3 = "GPU-33333333-3333-3333-3333-333333333333" // MIG; instance held by ml/small
	uuid4 = "GPU-44444444-4444-4444-4444-444444444444" // lost, held by ml/trainer
	migA  = "MIG-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
)

var epoch = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

const testInterval = 100 * time.Millisecond

var testDevices = []telemetry.Device{
	{Index: 0, UUID: uuid0, Name: "Tesla T4", PCIBusID: "00000000:3B:00.0"},
	{Index: 1, UUID: uuid1, Name: "Tesla T4", PCIBusID: "00000000:3C:00.0", Minor: 1},
	{Index: 2, UUID: uuid2, Name: "Tesla T4", PCIBusID: "00000000:3D:00.0", Minor: 2},
	{Index: 3, UUID: uuid3, Name: "NVIDIA A100", PCIBusID: "00000000:3E:00.0", Minor: 3, MIGEnabled: true,
		MIG: []telemetry.MIGDevice{{UUID: migA, GI: 7, Profile: "1g.5gb"}}},
	{Index: 4, UUID: uuid4, Name: "Tesla T4", PCIBusID: "00000000:3F:00.0", Minor: 4},
}

// snapshot is tick seq of the test node: GPU i's utilization is
// 10*i + seq % 10, and each GPU has one new GPU-engine sample per tick
// valued seq, timestamped at the tick (so merged samples are checkable).
func snapshot(seq uint64) *telemetry.Snapshot {
	at := epoch.Add(time.Duration(seq) * testInterval)
	states := make([]telemetry.DeviceState, len(testDevices))
	for i := range states {
		st := &states[i]
		st.Set(telemetry.GPUUtil, float64(10*i)+float64(seq%10))
		st.Set(telemetry.EncUtil, 50)
		st.Set(telemetry.FBUsed, 3<<30)
		st.Set(telemetry.EncSessions, 4)
		st.Set(telemetry.EncLatency, 0.002)
		st.NewSamples[telemetry.EngineGPU] = []telemetry.UtilSample{{At: at, Value: float64(seq)}}
	}
	states[3].MIG = []telemetry.Reading{{}}
	states[3].MIG[0].Set(telemetry.FBUsed, 1<<30)
	states[4].Lost = true
	return &telemetry.Snapshot{Seq: seq, Time: at, Devices: testDevices, States: states}
}

type testPods struct {
	a     *podresources.Assignments
	stale bool
}

func (p testPods) DevicePods() *attribution.DevicePods { return p.a.DevicePods() }
func (p testPods) Stale() bool                         { return p.stale }

func pod(ns, name, container, resource string, ids ...string) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name:    container,
		Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}}
}

func newTestPods() testPods { return testPods{a: podresourcesWithout("")} }

// podresourcesWithout is the test node's pods but the one named name.
func podresourcesWithout(name string) *podresources.Assignments {
	r := podresources.NewResolver([]podresources.GPU{
		{UUID: uuid0}, {UUID: uuid1, Minor: 1}, {UUID: uuid2, Minor: 2},
		{UUID: uuid3, Minor: 3, MIG: []podresources.MIGDevice{{UUID: migA, GI: 7}}}, {UUID: uuid4, Minor: 4},
	})
	all := []*podresourcesv1.PodResources{
		pod("ml", "inference-0", "server", "nvidia.com/gpu", uuid0),
		pod("media", "sfu-0", "sfu", "nvidia.com/gpu.shared", uuid1+"::0"),
		pod("media", "sfu-1", "sfu", "nvidia.com/gpu.shared", uuid1+"::1"),
		pod("ml", "small", "worker", "nvidia.com/mig-1g.5gb", migA),
		pod("ml", "trainer", "main", "nvidia.com/gpu", uuid4),
	}
	var pods []*podresourcesv1.PodResources
	for _, p := range all {
		if p.GetName() != name {
			pods = append(pods, p)
		}
	}
	return podresources.BuildAssignments(&podresourcesv1.ListPodResourcesResponse{PodResources: pods}, r)
}

// harness is a stream Server on a real gRPC server over an in-memory
// listener, its broadcaster running.
type harness struct {
	store  *telemetry.Store
	srv    *Server
	grpc   *grpc.Server
	lis    *bufconn.Listener
	cancel context.CancelFunc
}

// newHarness runs a server over a fresh store; pods, if given, is its pod
// source.
func newHarness(t testing.TB, opts Options, pods ...attribution.PodSource) *harness {
	t.Helper()
	if opts.Node == "" {
		opts.Node = "node-a"
	}
	if opts.Interval == 0 {
		opts.Interval = testInterval
	}
	if opts.Start.IsZero() {
		opts.Start = epoch
	}
	// A history of 100 snapshots: more than any test publishes, so that
	// a subscriber descheduled on a loaded machine still finds every one.
	h := &harness{store: telemetry.NewStore(testInterval, 10*time.Second), lis: bufconn.Listen(1 << 20)}
	if len(pods) > 0 {
		opts.Views = attribution.NewAttributor(h.store, pods[0], nil)
	}
	h.srv = New(h.store, opts)
	h.grpc = grpc.NewServer()
	h.srv.Register(h.grpc)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	ran := make(chan struct{})
	served := make(chan struct{})
	go func() { defer close(ran); _ = h.srv.Run(ctx) }()
	go func() { defer close(served); _ = h.grpc.Serve(h.lis) }()
	t.Cleanup(func() {
		cancel()
		h.srv.Close()
		h.grpc.Stop()
		<-ran
		<-served
	})
	return h
}

// dial opens a client connection of its own (a stalled client must not
// share a connection's flow control with a fast one). extra options go
// last.
func (h *harness) dial(t testing.TB, extra ...grpc.DialOption) (*grpc.ClientConn, telemetryv1.TelemetryClient) {
	t.Helper()
	opts := append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return h.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, extra...)
	conn, err := grpc.NewClient("passthrough:///bufconn", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, telemetryv1.NewTelemetryClient(conn)
}

func (h *harness) watch(t testing.TB, req *telemetryv1.WatchRequest) telemetryv1.Telemetry_WatchClient {
	t.Helper()
	_, c := h.dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := c.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// recv reads one message, failing the test after 5 s.
func recv(t *testing.T, w telemetryv1.Telemetry_WatchClient) *telemetryv1.NodeSnapshot {
	t.Helper()
	type result struct {
		m   *telemetryv1.NodeSnapshot
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := w.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Recv: %v", r.err)
		}
		return r.m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
	return nil
}

func uuids(m *telemetryv1.NodeSnapshot) []string {
	var out []string
	for _, d := range m.GetDevices() {
		out = append(out, d.GetUuid())
	}
	return out
}

func podNames(d *telemetryv1.Device) []string {
	var out []string
	for _, p := range d.GetPods() {
		out = append(out, fmt.Sprintf("%s/%s/%s", p.GetNamespace(), p.GetName(), p.GetContainer()))
	}
	return out
}

// gpuSamples is the values of a device's GPU-engine samples, in order.
func gpuSamples(d *telemetryv1.Device) []float64 {
	var out []float64
	for _, es := range d.GetSamples() {
		if es.GetEngine() == telemetryv1.Engine_ENGINE_GPU {
			for _, s := range es.GetSamples() {
				out = append(out, s.GetValue())
			}
		}
	}
	return out
}

func device(m *telemetryv1.NodeSnapshot, uuid string) *telemetryv1.Device {
	for _, d := range m.GetDevices() {
		if d.GetUuid() == uuid {
			return d
		}
	}
	return nil
}
