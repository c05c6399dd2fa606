package podwatch

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// labelledPod is webrtcPod with the labels a StatefulSet's pod carries.
func labelledPod() *corev1.Pod {
	p := webrtcPod()
	p.Labels = map[string]string{
		"app.kubernetes.io/name":             "webrtc",
		"app.kubernetes.io/instance":         "webrtc-0",
		"controller-revision-hash":           "webrtc-5d4f8",
		"statefulset.kubernetes.io/pod-name": "webrtc-0",
	}
	return p
}

func allowlist(t *testing.T, patterns ...string) *attribution.LabelAllowlist {
	t.Helper()
	a, err := attribution.NewLabelAllowlist(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The cache holds a pod's labels only when they are asked for, and then
// only those the allowlist lets through: on a node of many pods, what the
// informer's store holds is the watch's memory.
func TestStripKeepsLabelsOnlyWhenAsked(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels *attribution.LabelAllowlist
		want   map[string]string
	}{
		{"not asked", nil, nil},
		{"asked, every label", allowlist(t), labelledPod().Labels},
		{"asked, allowlisted", allowlist(t, `^app\.kubernetes\.io/`), map[string]string{
			"app.kubernetes.io/name": "webrtc", "app.kubernetes.io/instance": "webrtc-0"}},
		{"asked, none allowed", allowlist(t, "^nothing$"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stripper(tc.labels)(labelledPod())
			if err != nil {
				t.Fatal(err)
			}
			if l := got.(*corev1.Pod).Labels; !reflect.DeepEqual(l, tc.want) {
				t.Errorf("stripped labels %v, want %v", l, tc.want)
			}
			// client-go may transform an object twice.
			again, _ := stripper(tc.labels)(got)
			if !reflect.DeepEqual(again, got) {
				t.Errorf("not idempotent:\n%+v\n%+v", got, again)
			}

			// What the informer stores, through a real run.
			w, err := New(fakePods(fake.NewClientset(labelledPod())), node, Options{PodLabels: tc.labels})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = w.Run(ctx) }()
			if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
				t.Fatal("not synced")
			}
			objs := w.informer.GetStore().List()
			if len(objs) != 1 {
				t.Fatalf("%d objects in the store", len(objs))
			}
			if l := objs[0].(*corev1.Pod).Labels; !reflect.DeepEqual(l, tc.want) {
				t.Errorf("the store holds labels %v, want %v", l, tc.want)
			}
		})
	}
}

// PodMeta gives a pod's UID and its allowed labels, sanitised, by
// namespace and name, as they change; nothing once the pod is gone, and
// nothing for a pod on another node.
func TestPodMeta(t *testing.T) {
	other := pod("media", "elsewhere", uidOther, "gpu-node-b")
	other.Labels = map[string]string{"app.kubernetes.io/name": "x"}
	client := fake.NewClientset(labelledPod(), other)
	w, err := New(fakePods(client), node, Options{PodLabels: allowlist(t, `^app\.kubernetes\.io/`, "^statefulset"), PodUID: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
		t.Fatal("not synced")
	}
	want := &attribution.PodMeta{UID: uidWebRTC, Labels: []attribution.PodLabel{
		{Name: "app_kubernetes_io_instance", Value: "webrtc-0"},
		{Name: "app_kubernetes_io_name", Value: "webrtc"},
		{Name: "statefulset_kubernetes_io_pod_name", Value: "webrtc-0"},
	}}
	if got := w.PodMeta("media", "webrtc-0"); !reflect.DeepEqual(got, want) {
		t.Errorf("PodMeta = %+v, want %+v", got, want)
	}
	if got := w.PodMeta("media", "elsewhere"); got != nil {
		t.Errorf("a pod on another node: %+v", got)
	}
	if got := w.PodMeta("media", "no-such-pod"); got != nil {
		t.Errorf("an unknown pod: %+v", got)
	}

	// A relabelled pod: the next PodMeta says so.
	p := labelledPod()
	p.Labels["app.kubernetes.io/name"] = "webrtc-v2"
	if _, err := client.CoreV1().Pods("media").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the new label", func() bool {
		m := w.PodMeta("media", "webrtc-0")
		return m != nil && len(m.Labels) == 3 && m.Labels[1].Value == "webrtc-v2"
	})
	if err := client.CoreV1().Pods("media").Delete(context.Background(), "webrtc-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the deleted pod's metadata gone", func() bool { return w.PodMeta("media", "webrtc-0") == nil })
}

// Labels and UIDs are asked for separately; neither, and PodMeta is nil.
func TestPodMetaAsAsked(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want *attribution.PodMeta
	}{
		{"neither", Options{}, nil},
		{"UID only", Options{PodUID: true}, &attribution.PodMeta{UID: uidWebRTC}},
		{"labels only", Options{PodLabels: allowlist(t, "instance")},
			&attribution.PodMeta{Labels: []attribution.PodLabel{{Name: "app_kubernetes_io_instance", Value: "webrtc-0"}}}},
		{"labels, none allowed", Options{PodLabels: allowlist(t, "^none$")}, &attribution.PodMeta{Labels: []attribution.PodLabel{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(fakePods(fake.NewClientset()), node, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			w.upsert(labelledPod()) // unstripped: upsert applies the allowlist too
			if got := w.PodMeta("media", "webrtc-0"); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("PodMeta = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A StatefulSet's pod deleted and created again keeps its name and gets a
// new UID; after a relist the informer may add the new one before it
// deletes the old, which must not take the name with it.
func TestRecreatedPodKeepsItsName(t *testing.T) {
	w, err := New(fakePods(fake.NewClientset()), node, Options{PodUID: true})
	if err != nil {
		t.Fatal(err)
	}
	const newUID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	old, recreated := labelledPod(), labelledPod()
	recreated.UID = types.UID(newUID)
	w.upsert(old)
	w.upsert(recreated)
	w.remove(old)
	if m := w.PodMeta("media", "webrtc-0"); m == nil || m.UID != newUID {
		t.Errorf("PodMeta = %+v, want the new pod's UID", m)
	}
	w.remove(recreated)
	if m := w.PodMeta("media", "webrtc-0"); m != nil {
		t.Errorf("PodMeta = %+v after both are gone", m)
	}
}

// The labels travel through NewClient's core/v1 client (JSON from an API
// server, decoded, stripped) into PodMeta.
func TestPodMetaThroughTheAPI(t *testing.T) {
	listed := labelledPod()
	listed.ResourceVersion = "10"
	list := &corev1.PodList{
		TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: "10"},
		Items:    []corev1.Pod{*listed},
	}
	added := pod("default", "encoder", uidOther, node, status("enc", "cri-o://"+cidOther))
	added.TypeMeta = metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}
	added.ResourceVersion = "11"
	added.Labels = map[string]string{"app.kubernetes.io/name": "encoder", "tier": "batch"}
	url, _ := apiServer(t, list, added)

	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte(strings.Replace(kubeconfig, "https://127.0.0.1:6443", url, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(c, node, Options{PodLabels: allowlist(t, "^app"), PodUID: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	testutil.Eventually(t, 5*time.Second, "the watched pod's metadata", func() bool { return w.PodMeta("default", "encoder") != nil })
	want := &attribution.PodMeta{UID: uidOther, Labels: []attribution.PodLabel{{Name: "app_kubernetes_io_name", Value: "encoder"}}}
	if got := w.PodMeta("default", "encoder"); !reflect.DeepEqual(got, want) {
		t.Errorf("watched pod: %+v, want %+v", got, want)
	}
	if got := w.PodMeta("media", "webrtc-0"); got == nil || got.UID != uidWebRTC || len(got.Labels) != 2 {
		t.Errorf("listed pod: %+v", got)
	}
}
