package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// TestPushStream runs the built agent on a simulated node and watches it
// with the generated client, as the scaler does: the node's name, GPUs
// and simulated pods; a load step written to --simulate.load-file seen
// within two intervals; gRPC health; and on SIGTERM, the open stream ends
// cleanly (EOF) and the agent exits 0 quickly.
func TestPushStream(t *testing.T) {
	const interval = 200 * time.Millisecond
	devs := sim.New(sim.Options{Devices: 3, Seed: 5, Static: true}).Devices()
	loadFile := filepath.Join(t.TempDir(), "load.json")
	grpcAddr := testutil.FreeAddrT(t)
	a := startAgent(t, "--simulate=3", "--simulate.seed=5", "--simulate.static", "--interval="+interval.String(),
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock",
		"--grpc.listen-address="+grpcAddr, "--simulate.load-file="+loadFile)

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Health turns SERVING with the first snapshot, as /readyz turns 200;
	// its goroutine may be a moment behind.
	for _, svc := range []string{"", "gputelemetry.telemetry.v1.Telemetry"} {
		if err := testutil.Poll(ctx, 5*time.Second, func() (bool, error) {
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				return true, nil
			}
			return false, fmt.Errorf("%v, %v", resp.GetStatus(), err)
		}); err != nil {
			t.Fatalf("health of %q: %v; want SERVING once ready", svc, err)
		}
	}

	client := telemetryv1.NewTelemetryClient(conn)
	w, err := client.Watch(ctx, &telemetryv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Pods arrive with the simulated kubelet's first answer.
	wantPods := map[string][]string{
		devs[0].UUID(): {"default/inference-0/server"},
		devs[1].UUID(): {"default/inference-1/server"},
		devs[2].UUID(): {"media/webrtc-sfu-0/sfu", "media/webrtc-sfu-1/sfu"},
	}
	var m *telemetryv1.NodeSnapshot
	for {
		if m, err = w.Recv(); err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if len(m.GetDevices()) == len(devs) {
			break
		}
	}
	if m.GetNode() != "golden-node" || m.GetInterval().AsDuration() != interval || m.GetSequence() == 0 {
		t.Errorf("node %q, interval %v, seq %d", m.GetNode(), m.GetInterval().AsDuration(), m.GetSequence())
	}
	for i, d := range m.GetDevices() {
		var pods []string
		for _, p := range d.GetPods() {
			pods = append(pods, p.GetNamespace()+"/"+p.GetName()+"/"+p.GetContainer())
		}
		if d.GetUuid() != devs[i].UUID() || d.GetGpuIndex() != uint32(i) || !slices.Equal(pods, wantPods[d.GetUuid()]) {
			t.Errorf("device %d = %s (index %d) held by %v; want %s held by %v", i, d.GetUuid(), d.GetGpuIndex(), pods, devs[i].UUID(), wantPods[devs[i].UUID()])
		}
		if d.GpuUtil == nil || *d.GpuUtil != devs[i].GPUUtil(time.Now()) {
			t.Errorf("GPU %d utilization %v, want the simulation's %v", i, d.GpuUtil, devs[i].GPUUtil(time.Now()))
		}
	}

	// The load step: GPU 1 to 93%.
	if devs[1].GPUUtil(time.Now()) == 93 {
		t.Fatal("the simulation already sits at the step's value; pick another")
	}
	written := time.Now()
	if err := os.WriteFile(loadFile, []byte(`{"gpus": {"1": {"gpu_util": 93}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		if m, err = w.Recv(); err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if d := m.GetDevices()[1]; d.GpuUtil != nil && *d.GpuUtil == 93 {
			break
		}
		if m.GetSampleTime().AsTime().Sub(written) > 2*interval {
			t.Fatalf("snapshot %d, %s after the step was written, still without it", m.GetSequence(), m.GetSampleTime().AsTime().Sub(written))
		}
	}
	t.Logf("load step in snapshot %d, sampled %s after the file was written", m.GetSequence(), m.GetSampleTime().AsTime().Sub(written).Round(time.Millisecond))

	// SIGTERM with the stream open: EOF, not an error, and exit 0 fast.
	sent := time.Now()
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := w.Recv()
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Errorf("stream ended with %v on SIGTERM, want EOF", err)
		}
		break
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("agent still running 5s after SIGTERM with a Watch open")
	}
	if code := a.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	t.Logf("stream ended and agent exited %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
}

// A subscriber that never reads, next to one that reads every message, on
// the real binary: the reader gets every snapshot in order, none skipped,
// while the stalled one's messages pile up and are dropped; when the
// stalled client goes, the agent releases its stream.
func TestStalledSubscriberOnTheBinary(t *testing.T) {
	grpcAddr := testutil.FreeAddrT(t)
	a := startAgent(t, "--simulate=32", "--interval=100ms", "--kubelet.pod-resources-socket=/nonexistent/kubelet.sock",
		"--grpc.listen-address="+grpcAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Small fixed windows, so the stalled stream's fill after 64 KiB.
	stalledConn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer stalledConn.Close()
	// Every device of 32 GPUs, with their samples: ~10 kB a message at
	// 10 Hz, so the windows fill within seconds.
	req := &telemetryv1.WatchRequest{IncludeUnattributed: true}
	if _, err := telemetryv1.NewTelemetryClient(stalledConn).Watch(ctx, req); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	subscribers := func(want float64) func(samples) error {
		return func(s samples) error { return s.expect("gpu_agent_stream_subscribers", want) }
	}
	a.waitMetrics(t, 10*time.Second, "both subscribers", subscribers(2))

	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	prev := first.GetSequence()
	for range 30 { // 3 s at 10 Hz
		m, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if m.GetSequence() != prev+1 || m.GetSkipped() != 0 {
			t.Errorf("the reading subscriber got %d (skipped %d) after %d, want every snapshot", m.GetSequence(), m.GetSkipped(), prev)
		}
		prev = m.GetSequence()
	}
	stalled := a.waitMetrics(t, 10*time.Second, "the stalled subscriber's drops", func(s samples) error {
		if n, _ := s.value("gpu_agent_stream_dropped_snapshots_total"); n == 0 {
			return errors.New("no snapshot dropped yet")
		}
		return nil
	})
	dropped, _ := stalled.value("gpu_agent_stream_dropped_snapshots_total")
	t.Logf("the stalled subscriber has lost %v snapshots", dropped)

	stalledConn.Close()
	a.waitMetrics(t, 10*time.Second, "the stalled subscriber to be released", subscribers(1))
}
