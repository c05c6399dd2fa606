package procattr

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-telemetry/agent/pkg/attribution"
	"github.com/gpu-telemetry/agent/pkg/podresources"
	"github.com/gpu-telemetry/agent/pkg/podwatch"
	"github.com/gpu-telemetry/agent/pkg/procpod"
	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

const (
	uidA = "0b1c2d3e-4f50-4a6b-8c7d-8e9f0a1b2c3d"
	uidB = "11111111-2222-4333-8444-555555555555"
	cidA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	cidB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// cgroup is a cgroup v2 line of a Burstable pod under the systemd driver
// and containerd, as the kubelet names it.
func cgroup(uid, cid string) []byte {
	return []byte("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
		strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope\n")
}

// procfs: PID 100 in pod A, 200 in pod B, 300 a host service; PID 400 is
// reported by NVML but has exited (no directory).
func procfs() fstest.MapFS {
	return fstest.MapFS{
		"100/cgroup": {Data: cgroup(uidA, cidA)},
		"200/cgroup": {Data: cgroup(uidB, cidB)},
		"300/cgroup": {Data: []byte("0::/system.slice/nvidia-persistenced.service\n")},
	}
}

func table() *Table {
	return &Table{
		Containers: map[string]podresources.PodRef{cidA: {Namespace: "media", Pod: "sfu-0", Container: "sfu"}},
		Pods:       map[string]podresources.PodRef{uidB: {Namespace: "media", Pod: "sfu-1"}},
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
	s := New(nil, procpod.NewResolverFS(procfs()), table(), nil)
	if s.ProcessPods() != nil {
		t.Fatal("a map before the first snapshot")
	}
	s.Update(snapshot(1, 100, 200, 300, 400))
	pp := s.ProcessPods()
	want := map[uint32]podresources.PodRef{
		100: {Namespace: "media", Pod: "sfu-0", Container: "sfu"}, // by container ID
		200: {Namespace: "media", Pod: "sfu-1"},                   // by pod UID only
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

type notReady struct{ *Table }

func (notReady) Ready() bool { return false }

// A name source that has not synced publishes nothing: pods keep the
// device's values instead of reading 0 for "not known yet".
func TestUpdateWaitsForNames(t *testing.T) {
	s := New(nil, procpod.NewResolverFS(procfs()), notReady{table()}, nil)
	s.Update(snapshot(1, 100))
	if s.ProcessPods() != nil {
		t.Error("a map published before the names were ready")
	}
}

// Run follows the store, and the join it feeds gives each pod its own
// process.
func TestRunFollowsTheStore(t *testing.T) {
	store := telemetry.NewStore(time.Second, time.Second)
	s := New(store, procpod.NewResolverFS(procfs()), table(), nil)
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
	deadline := time.Now().Add(5 * time.Second)
	for s.ProcessPods() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no map 5s after a snapshot")
		}
		time.Sleep(time.Millisecond)
	}
	v := attribution.Attribute(snap, nil, s.ProcessPods())
	if d := v.Devices[0]; !d.ProcessesAttributed || d.Unattributed != 2 {
		// No pod holds GPU-0 here: both processes are left out.
		t.Errorf("attributed %v, unattributed %d; want true, 2", d.ProcessesAttributed, d.Unattributed)
	}
}

type unstreamed struct{ typedcorev1.PodInterface }

func (unstreamed) IsWatchListSemanticsUnSupported() bool { return true }

// WatcherNames asks the pod watch by container ID, then by pod UID.
func TestWatcherNames(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "media", Name: "sfu-0", UID: types.UID(uidA)},
		Spec:       corev1.PodSpec{NodeName: "node"},
		Status:     corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "sfu", ContainerID: "containerd://" + cidA}}},
	}
	w, err := podwatch.New(unstreamed{fake.NewClientset(pod).CoreV1().Pods("")}, "node", podwatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	if !cache.WaitForCacheSync(ctx.Done(), w.HasSynced) {
		t.Fatal("not synced")
	}
	n := WatcherNames{W: w}
	if !n.Ready() {
		t.Error("not ready after sync")
	}
	for _, tt := range []struct {
		o    procpod.Owner
		want podresources.PodRef
		ok   bool
	}{
		{procpod.Owner{PodUID: uidA, ContainerID: cidA}, podresources.PodRef{Namespace: "media", Pod: "sfu-0", Container: "sfu"}, true},
		{procpod.Owner{PodUID: uidA, ContainerID: cidB}, podresources.PodRef{Namespace: "media", Pod: "sfu-0"}, true}, // a container not seen yet
		{procpod.Owner{PodUID: uidB}, podresources.PodRef{}, false},
	} {
		if got, ok := n.Name(tt.o); got != tt.want || ok != tt.ok {
			t.Errorf("Name(%+v) = %+v, %v; want %+v, %v", tt.o, got, ok, tt.want, tt.ok)
		}
	}
}
