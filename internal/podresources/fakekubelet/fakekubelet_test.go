package fakekubelet_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
)

var socketPath = fakekubelet.TempSocketPath

func dial(t *testing.T, path string) podresourcesv1.PodResourcesListerClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return podresourcesv1.NewPodResourcesListerClient(conn)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestServer(t *testing.T) {
	path := socketPath(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil { // a stale socket file
		t.Fatal(err)
	}
	s, err := fakekubelet.Start(path)
	if err != nil {
		t.Fatalf("Start over a stale file: %v", err)
	}
	defer s.Stop()
	if s.Path() != path {
		t.Fatalf("Path() = %q", s.Path())
	}
	pods := []*podresourcesv1.PodResources{
		fakekubelet.Pod("ns", "a", fakekubelet.Container("c", fakekubelet.Devices("nvidia.com/gpu", "GPU-1", "GPU-2"))),
	}
	s.SetPods(pods)
	pods[0].Name = "mutated after SetPods"

	c := dial(t, path)
	resp, err := c.List(ctx(t), &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.GetPodResources()
	if len(got) != 1 || got[0].GetName() != "a" || got[0].GetContainers()[0].GetDevices()[0].GetDeviceIds()[1] != "GPU-2" {
		t.Fatalf("List = %v", resp)
	}

	g, err := c.Get(ctx(t), &podresourcesv1.GetPodResourcesRequest{PodNamespace: "ns", PodName: "a"})
	if err != nil || g.GetPodResources().GetName() != "a" {
		t.Fatalf("Get(ns/a) = %v, %v", g, err)
	}
	if _, err := c.Get(ctx(t), &podresourcesv1.GetPodResourcesRequest{PodNamespace: "ns", PodName: "zz"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Get(ns/zz) error = %v, want NotFound", err)
	}
	if a, err := c.GetAllocatableResources(ctx(t), &podresourcesv1.AllocatableResourcesRequest{}); err != nil || len(a.GetDevices()) != 0 {
		t.Fatalf("GetAllocatableResources = %v, %v", a, err)
	}

	s.SetError(status.Error(codes.Unavailable, "down"))
	if _, err := c.List(ctx(t), &podresourcesv1.ListPodResourcesRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("List with SetError = %v", err)
	}
	s.SetError(nil)
	if _, err := c.List(ctx(t), &podresourcesv1.ListPodResourcesRequest{}); err != nil {
		t.Fatalf("List after clearing the error: %v", err)
	}
	if n := s.ListCalls(); n != 3 {
		t.Fatalf("ListCalls() = %d, want 3", n)
	}
}

func TestServerStopRestart(t *testing.T) {
	path := socketPath(t)
	s, err := fakekubelet.Start(path)
	if err != nil {
		t.Fatal(err)
	}
	s.SetPods([]*podresourcesv1.PodResources{fakekubelet.Pod("ns", "a")})
	s.Stop()
	s.Stop() // idempotent
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket after Stop: %v, want removed", err)
	}
	if _, err := dial(t, path).List(ctx(t), &podresourcesv1.ListPodResourcesRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("List on a stopped server = %v, want Unavailable", err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	resp, err := dial(t, path).List(ctx(t), &podresourcesv1.ListPodResourcesRequest{})
	if err != nil || len(resp.GetPodResources()) != 1 {
		t.Fatalf("List after Restart = %v, %v; want the same pods", resp, err)
	}
}

func TestServerDelay(t *testing.T) {
	s, err := fakekubelet.Start(socketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	s.SetDelay(time.Second)
	c, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := dial(t, s.Path()).List(c, &podresourcesv1.ListPodResourcesRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("List on a slow server = %v, want DeadlineExceeded", err)
	}
}

// TestServerDynamicResources checks DRA claims go over the wire whole, as
// a kubelet with DynamicResourceAllocation serves them.
func TestServerDynamicResources(t *testing.T) {
	s, err := fakekubelet.Start(socketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	s.SetPods([]*podresourcesv1.PodResources{
		fakekubelet.Pod("ns", "a", fakekubelet.WithClaims(fakekubelet.Container("c"),
			fakekubelet.Claim("ns", "gpu-claim", fakekubelet.ClaimDevice("gpu.nvidia.com", "node-1", "gpu-0")))),
	})
	resp, err := dial(t, s.Path()).List(ctx(t), &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	claims := resp.GetPodResources()[0].GetContainers()[0].GetDynamicResources()
	if len(claims) != 1 || claims[0].GetClaimName() != "gpu-claim" || claims[0].GetClaimNamespace() != "ns" {
		t.Fatalf("dynamic resources = %v", claims)
	}
	d := claims[0].GetClaimResources()
	if len(d) != 1 || d[0].GetDriverName() != "gpu.nvidia.com" || d[0].GetPoolName() != "node-1" || d[0].GetDeviceName() != "gpu-0" ||
		len(d[0].GetCdiDevices()) != 1 || d[0].GetCdiDevices()[0].GetName() != "k8s.gpu.nvidia.com/device=gpu-0" {
		t.Fatalf("claim resources = %v", d)
	}
}
