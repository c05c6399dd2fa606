package podwatch

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
)

const (
	nameUIDA = "0b1c2d3e-4f50-4a6b-8c7d-8e9f0a1b2c3d"
	nameUIDB = "11111111-2222-4333-8444-555555555555"
	nameCIDA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	nameCIDB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// The watch names a cgroup's owner by container ID, then by pod UID.
func TestNames(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "media", Name: "sfu-0", UID: types.UID(nameUIDA)},
		Spec:       corev1.PodSpec{NodeName: "node"},
		Status:     corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "sfu", ContainerID: "containerd://" + nameCIDA}}},
	}
	w, err := New(unstreamed{fake.NewClientset(pod).CoreV1().Pods("")}, "node", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	if !cache.WaitForCacheSync(ctx.Done(), w.HasSynced) {
		t.Fatal("not synced")
	}
	n := w
	if !n.Ready() {
		t.Error("not ready after sync")
	}
	for _, tt := range []struct {
		o    cgroup.Owner
		want attribution.Pod
		ok   bool
	}{
		{cgroup.Owner{PodUID: nameUIDA, ContainerID: nameCIDA}, attribution.Pod{Namespace: "media", Name: "sfu-0", Container: "sfu"}, true},
		{cgroup.Owner{PodUID: nameUIDA, ContainerID: nameCIDB}, attribution.Pod{Namespace: "media", Name: "sfu-0"}, true}, // a container not seen yet
		{cgroup.Owner{PodUID: nameUIDB}, attribution.Pod{}, false},
	} {
		if got, ok := n.Name(tt.o); got != tt.want || ok != tt.ok {
			t.Errorf("Name(%+v) = %+v, %v; want %+v, %v", tt.o, got, ok, tt.want, tt.ok)
		}
	}
}
