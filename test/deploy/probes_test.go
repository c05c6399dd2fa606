package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpu-telemetry/agent/internal/agent"
	"github.com/gpu-telemetry/agent/internal/scaler"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitStatus polls a URL until it answers want or the deadline passes,
// and returns the last status.
func waitStatus(url string, want int, within time.Duration) int {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(within)
	last := 0
	for {
		if resp, err := c.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			last = resp.StatusCode
			if last == want {
				return last
			}
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The probes of the manifests hit endpoints the binaries serve: the real
// agent (on a simulated node) and the real scaler, on their own ports,
// asked exactly what the kubelet would ask.
func TestProbesHitEndpoints(t *testing.T) {
	objs := kustomized(t, "deploy")
	ds := one[*appsv1.DaemonSet](t, objs, "DaemonSet", "")
	dep := one[*appsv1.Deployment](t, objs, "Deployment", "")
	ac := container(t, ds.Spec.Template.Spec, "gpu-agent")
	sc := container(t, dep.Spec.Template.Spec, "gpu-scaler")

	ctx, cancel := context.WithCancel(context.Background())
	web, grpcPort := freePort(t), freePort(t)
	agentDone := make(chan int, 1)
	go func() {
		agentDone <- agent.Main(ctx, []string{"--simulate=2", "--simulate.call-latency=false",
			fmt.Sprintf("--web.listen-address=127.0.0.1:%d", web), fmt.Sprintf("--grpc.listen-address=127.0.0.1:%d", grpcPort),
			"--kubelet.pod-resources-socket=" + t.TempDir() + "/none.sock", "--log.level=warn",
			"--runtime.gomaxprocs=0"}, io.Discard, io.Discard) // the test's own GOMAXPROCS, shared with the scaler
	}()
	sweb, sgrpc := freePort(t), freePort(t)
	scalerDone := make(chan int, 1)
	go func() {
		scalerDone <- scaler.Main(ctx, []string{fmt.Sprintf("--agents=127.0.0.1:%d", grpcPort),
			fmt.Sprintf("--web.listen-address=127.0.0.1:%d", sweb), fmt.Sprintf("--grpc.listen-address=127.0.0.1:%d", sgrpc),
			"--log.level=warn"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		for name, ch := range map[string]chan int{"agent": agentDone, "scaler": scalerDone} {
			select {
			case code := <-ch:
				if code != 0 {
					t.Errorf("%s exited %d", name, code)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		}
	}()

	probe := func(name string, p *corev1.Probe, port int) {
		t.Helper()
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: not an httpGet probe", name)
			return
		}
		url := fmt.Sprintf("http://127.0.0.1:%d%s", port, p.HTTPGet.Path)
		if got := waitStatus(url, http.StatusOK, 20*time.Second); got != http.StatusOK {
			t.Errorf("%s: GET %s answered %d", name, p.HTTPGet.Path, got)
		}
	}
	probe("agent liveness", ac.LivenessProbe, web)
	probe("agent readiness", ac.ReadinessProbe, web)
	probe("scaler liveness", sc.LivenessProbe, sweb)
	// The check can fail: a path the agent does not serve.
	if got := waitStatus(fmt.Sprintf("http://127.0.0.1:%d/readyz-typo", web), http.StatusOK, 0); got == http.StatusOK {
		t.Errorf("agent answers 200 on a path it does not serve: the probe check proves nothing")
	}

	// The scaler's readiness probe is gRPC health on its gRPC port, for
	// the whole server (the kubelet's default service "").
	if p := sc.ReadinessProbe; p == nil || p.GRPC == nil {
		t.Fatalf("scaler readiness: not a gRPC probe")
	} else {
		service := ""
		if p.GRPC.Service != nil {
			service = *p.GRPC.Service
		}
		conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", sgrpc), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var status healthpb.HealthCheckResponse_ServingStatus
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: service})
			ccancel()
			if err == nil {
				if status = resp.Status; status == healthpb.HealthCheckResponse_SERVING {
					break
				}
			}
		}
		if status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("scaler gRPC health %q: %s", service, status)
		}
	}
}
