// Package fakekubelet serves the kubelet's pod-resources v1 API on a unix
// socket from an in-memory list of pods. Tests, the bench harness and the
// agent's simulated node use it in place of a kubelet: it speaks real gRPC,
// so the client under test goes through the same dial, reconnect and
// decoding paths as against a kubelet, and it can go down and come back the
// way a restarting kubelet does (socket removed, then re-created).
package fakekubelet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Server is a fake kubelet pod-resources endpoint. Its methods are safe for
// concurrent use.
type Server struct {
	podresourcesv1.UnimplementedPodResourcesListerServer

	path  string
	calls atomic.Int64

	mu     sync.Mutex
	pods   []*podresourcesv1.PodResources // never mutated once stored
	answer *podresourcesv1.ListPodResourcesResponse
	wire   []byte // answer encoded, for wireCodec
	err    error
	delay  time.Duration
	srv    *grpc.Server
	done   chan struct{} // closed when the current Serve returns
}

var _ podresourcesv1.PodResourcesListerServer = (*Server)(nil)

// Start listens on socketPath, removing a stale socket file first as the
// kubelet does, and serves until Stop.
func Start(socketPath string) (*Server, error) {
	s := &Server{path: socketPath}
	if err := s.serve(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) serve() error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("fakekubelet: remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("fakekubelet: listen: %w", err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(wireCodec{s: s, CodecV2: encoding.GetCodecV2(protoenc.Name)}))
	podresourcesv1.RegisterPodResourcesListerServer(srv, s)
	done := make(chan struct{})
	s.mu.Lock()
	s.srv, s.done = srv, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		_ = srv.Serve(lis) // returns when stopped
	}()
	return nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// SetPods sets the answer to List from now on. The pods are deep-copied, so
// the caller may reuse them. The answer is encoded here, once, and sent as
// it is by every List: a crowded node's 17 MB answer takes seconds to
// encode under the race detector, which would otherwise stand for a
// kubelet slower than any (a real one encodes it in some 100 ms).
func (s *Server) SetPods(pods []*podresourcesv1.PodResources) {
	cp := make([]*podresourcesv1.PodResources, len(pods))
	for i, p := range pods {
		if p != nil {
			cp[i] = proto.Clone(p).(*podresourcesv1.PodResources)
		}
	}
	answer := &podresourcesv1.ListPodResourcesResponse{PodResources: cp}
	// A nil pod (a test of garbage) does not encode: such an answer is
	// encoded by gRPC on each List, and fails there as it should.
	wire, err := proto.Marshal(answer)
	if err != nil {
		wire = nil
	}
	s.mu.Lock()
	s.pods, s.answer, s.wire = cp, answer, wire
	s.mu.Unlock()
}

// wireCodec is gRPC's proto codec, except that the answer of SetPods goes
// out as encoded there.
type wireCodec struct {
	encoding.CodecV2
	s *Server
}

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	c.s.mu.Lock()
	answer, wire := c.s.answer, c.s.wire
	c.s.mu.Unlock()
	if v == any(answer) && wire != nil {
		return mem.BufferSlice{mem.SliceBuffer(wire)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// SetError makes List (and Get) fail with err until cleared with nil. A
// plain error reaches the client as codes.Unknown; use status.Error for
// another code.
func (s *Server) SetError(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// SetDelay makes List wait d before answering (or until the caller gives
// up), to simulate an overloaded kubelet.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// ListCalls returns the number of List calls received, for rate assertions.
func (s *Server) ListCalls() int { return int(s.calls.Load()) }

// Stop closes every connection, stops serving and removes the socket, as a
// kubelet going down does. Stop on a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv, s.done = nil, nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Stop()
	<-done
	_ = os.Remove(s.path)
}

// Restart stops the server and serves again on the same path with the same
// pods, as a restarted kubelet re-creates its socket.
func (s *Server) Restart() error {
	s.Stop()
	return s.serve()
}

// List answers the pods set by SetPods.
func (s *Server) List(ctx context.Context, _ *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	s.calls.Add(1)
	s.mu.Lock()
	answer, err, delay := s.answer, s.err, s.delay
	s.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if err != nil {
		return nil, err
	}
	if answer == nil {
		return &podresourcesv1.ListPodResourcesResponse{}, nil
	}
	// Shared and never modified: SetPods replaces it whole.
	return answer, nil
}

// GetAllocatableResources answers an empty inventory: the agent takes its
// inventory from NVML, not from the kubelet.
func (s *Server) GetAllocatableResources(context.Context, *podresourcesv1.AllocatableResourcesRequest) (*podresourcesv1.AllocatableResourcesResponse, error) {
	return &podresourcesv1.AllocatableResourcesResponse{}, nil
}

// Get answers one pod by namespace and name, or NotFound.
func (s *Server) Get(_ context.Context, req *podresourcesv1.GetPodResourcesRequest) (*podresourcesv1.GetPodResourcesResponse, error) {
	s.mu.Lock()
	pods, err := s.pods, s.err
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		if p.GetNamespace() == req.GetPodNamespace() && p.GetName() == req.GetPodName() {
			return &podresourcesv1.GetPodResourcesResponse{PodResources: p}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "pod %s/%s not found", req.GetPodNamespace(), req.GetPodName())
}

// Pod builds a pod's resources.
func Pod(namespace, name string, containers ...*podresourcesv1.ContainerResources) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: namespace, Name: name, Containers: containers}
}

// Container builds a container's resources.
func Container(name string, devices ...*podresourcesv1.ContainerDevices) *podresourcesv1.ContainerResources {
	return &podresourcesv1.ContainerResources{Name: name, Devices: devices}
}

// Devices builds the devices of one resource allocated to a container.
func Devices(resource string, ids ...string) *podresourcesv1.ContainerDevices {
	return &podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: ids}
}

// WithClaims adds DRA claims to a container's resources (its
// dynamic_resources, as a kubelet with DynamicResourceAllocation reports
// them) and returns it.
func WithClaims(c *podresourcesv1.ContainerResources, claims ...*podresourcesv1.DynamicResource) *podresourcesv1.ContainerResources {
	c.DynamicResources = append(c.DynamicResources, claims...)
	return c
}

// Claim builds one ResourceClaim allocated to a container.
func Claim(namespace, name string, devices ...*podresourcesv1.ClaimResource) *podresourcesv1.DynamicResource {
	return &podresourcesv1.DynamicResource{ClaimNamespace: namespace, ClaimName: name, ClaimResources: devices}
}

// ClaimDevice builds one device of a claim: the driver that allocated it,
// its pool (the node, for a node-local driver) and its name in the pool's
// ResourceSlice, with a CDI device spelled after NVIDIA's driver's (which
// also puts the claim's UID in the name; nothing here reads it).
func ClaimDevice(driver, pool, device string) *podresourcesv1.ClaimResource {
	return &podresourcesv1.ClaimResource{
		DriverName: driver,
		PoolName:   pool,
		DeviceName: device,
		CdiDevices: []*podresourcesv1.CDIDevice{{Name: "k8s." + driver + "/device=" + device}},
	}
}

// TB is the part of testing.TB that TempSocketPath needs; this package is
// linked into the agent (its simulated node), so it does not import testing.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// TempSocketPath returns a socket path in a fresh directory that is removed
// when the test ends. The directory is short on purpose: unix socket paths
// are limited to 108 bytes, and t.TempDir() paths can exceed that.
func TempSocketPath(tb TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "kl")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "kubelet.sock")
}

// Crowd returns n pods that hold no GPU, spelled as a kubelet with the
// static CPU and memory managers reports a busy node's pods: two init
// containers (a service mesh's, a config renderer), the workload (sixteen
// exclusive CPUs, NUMA-pinned memory and hugepages, two SR-IOV NICs and a
// Network Operator RDMA device, nvidia.com/hostdev, which is no GPU), a
// mesh proxy and a log shipper, under the generated names of a
// Deployment's pods. Such a pod is about 430 bytes of the List answer:
// 10,000 of them (4.3 MB) pass gRPC's default 4 MiB receive limit, as
// crowded nodes did for dcgm-exporter (NVIDIA/dcgm-exporter#509, 4.7 MB),
// and 40,000 (17 MB) the client's 16 MiB.
func Crowd(n int) []*podresourcesv1.PodResources {
	pods := make([]*podresourcesv1.PodResources, n)
	numa := func(id int64) *podresourcesv1.TopologyInfo {
		return &podresourcesv1.TopologyInfo{Nodes: []*podresourcesv1.NUMANode{{ID: id}}}
	}
	for i := range pods {
		node := int64(i % 2)
		cpus := make([]int64, 16)
		for c := range cpus {
			cpus[c] = int64(64*node) + int64(16*(i%4)+c)
		}
		nic := func(port int) string { return fmt.Sprintf("0000:%02x:%02x.%d", 0x3b+2*node+int64(port), i%32, i%8) }
		pods[i] = &podresourcesv1.PodResources{
			Namespace: fmt.Sprintf("tenant-%04d-live-media-production", i/50),
			Name:      fmt.Sprintf("live-stream-transcoder-worker-%010x-%05d", uint64(i)*2654435761, i),
			Containers: []*podresourcesv1.ContainerResources{
				{Name: "istio-init"},
				{Name: "config-renderer"},
				{
					Name:   "transcoder-worker",
					CpuIds: cpus,
					Memory: []*podresourcesv1.ContainerMemory{
						{MemoryType: "memory", Size: 32 << 30, Topology: numa(node)},
						{MemoryType: "hugepages-2Mi", Size: 2 << 30, Topology: numa(node)},
						{MemoryType: "hugepages-1Gi", Size: 4 << 30, Topology: numa(node)},
					},
					Devices: []*podresourcesv1.ContainerDevices{
						{ResourceName: "intel.com/sriov_netdevice_left", DeviceIds: []string{nic(0)}, Topology: numa(node)},
						{ResourceName: "intel.com/sriov_netdevice_right", DeviceIds: []string{nic(1)}, Topology: numa(node)},
						{ResourceName: "nvidia.com/hostdev", DeviceIds: []string{nic(2)}, Topology: numa(node)},
					},
				},
				{Name: "istio-proxy"},
				{Name: "fluent-bit-log-shipper"},
			},
		}
	}
	return pods
}
