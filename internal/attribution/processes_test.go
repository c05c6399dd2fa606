package attribution

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

const (
	uidA = "0b1c2d3e-4f50-4a6b-8c7d-8e9f0a1b2c3d"
	uidB = "11111111-2222-4333-8444-555555555555"
	cidA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	cidB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// cgroupLine is a cgroup v2 line of a Burstable pod under the systemd driver
// and containerd, as the kubelet names it.
func cgroupLine(uid, cid string) []byte {
	return []byte("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
		strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope\n")
}

// procfs: PID 100 in pod A, 200 in pod B, 300 a host service; PID 400 is
// reported by NVML but has exited (no directory).
func procfs() fstest.MapFS {
	return fstest.MapFS{
		"100/cgroup": {Data: cgroupLine(uidA, cidA)},
		"200/cgroup": {Data: cgroupLine(uidB, cidB)},
		"300/cgroup": {Data: []byte("0::/system.slice/nvidia-persistenced.service\n")},
	}
}

func table() *NameTable {
	return &NameTable{
		Containers: map[string]Pod{cidA: {Namespace: "media", Name: "sfu-0", Container: "sfu"}},
		Pods:       map[string]Pod{uidB: {Namespace: "media", Name: "sfu-1"}},
	}
}

func snapshot(seq uint64, pids ...uint32) *telemetry.Snapshot {
	st := telemetry.DeviceState{ProcessSupport: telemetry.AllProcessData}
	for _, p := range pids {
		st.Processes = append(st.Processes, telemetry.ProcessSample{PID: p, Has: telemetry.AllProcessData})
	}
	return &telemetry.Snapshot{Seq: seq, Devices: []telemetry.Device{{UUID: "GPU-0"}}, States: []telemetry.DeviceState{st}}
}

func TestUpdate(t *testing.T) {
	s := NewProcessStage(nil, cgroup.NewResolverFS(procfs()), table(), nil)
	if s.ProcessPods() != nil {
		t.Fatal("a map before the first snapshot")
	}
	s.Update(snapshot(1, 100, 200, 300, 400))
	pp := s.ProcessPods()
	want := map[uint32]Pod{
		100: {Namespace: "media", Name: "sfu-0", Container: "sfu"}, // by container ID
		200: {Namespace: "media", Name: "sfu-1"},                   // by pod UID only
		// 300: a host process; 400: exited. Neither is an error.
	}
	if pp == nil || pp.Seq != 1 || len(pp.Pods) != len(want) {
		t.Fatalf("ProcessPods = %+v, want %v", pp, want)
	}
	for pid, ref := range want {
		if pp.Pods[pid] != ref {
			t.Errorf("PID %d: %+v, want %+v", pid, pp.Pods[pid], ref)
		}
	}
	// The same processes next tick: the published map is kept, so views
	// cached on it stay valid.
	s.Update(snapshot(2, 100, 200, 300, 400))
	if s.ProcessPods() != pp {
		t.Error("an unchanged map was published again")
	}
	s.Update(snapshot(3, 200))
	if got := s.ProcessPods(); got == pp || len(got.Pods) != 1 || got.Seq != 3 {
		t.Errorf("after PID 100 exited: %+v", got)
	}
}

type notReady struct{ *NameTable }

func (notReady) Ready() bool { return false }

// A name source that has not synced publishes nothing: pods keep the
// device's values instead of reading 0 for "not known yet".
func TestUpdateWaitsForNames(t *testing.T) {
	s := NewProcessStage(nil, cgroup.NewResolverFS(procfs()), notReady{table()}, nil)
	s.Update(snapshot(1, 100))
	if s.ProcessPods() != nil {
		t.Error("a map published before the names were ready")
	}
}

// Run follows the store, and the join it feeds gives each pod its own
// process.
func TestRunFollowsTheStore(t *testing.T) {
	store := telemetry.NewStore(time.Second, time.Second)
	s := NewProcessStage(store, cgroup.NewResolverFS(procfs()), table(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	snap := snapshot(1, 100, 300)
	store.Publish(snap)
	testutil.Eventually(t, 5*time.Second, "a PID-to-pod map after a snapshot", func() bool { return s.ProcessPods() != nil })
	v := Attribute(snap, nil, s.ProcessPods())
	if d := v.Devices[0]; !d.ProcessesAttributed || d.Unattributed != 2 {
		// No pod holds GPU-0 here: both processes are left out.
		t.Errorf("attributed %v, unattributed %d; want true, 2", d.ProcessesAttributed, d.Unattributed)
	}
}
