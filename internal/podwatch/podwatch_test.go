package podwatch

import (
	"bytes"
	"context"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

const node = "gpu-node-a"

// Fixed IDs, shaped as the runtimes write them, so that failures are
// readable and reproducible.
var (
	cidMain    = strings.Repeat("a1", 32)
	cidMain2   = strings.Repeat("a2", 32)
	cidSidecar = strings.Repeat("b1", 32)
	cidInit    = strings.Repeat("c1", 32)
	cidDebug   = strings.Repeat("d1", 32)
	cidOther   = strings.Repeat("e1", 32)
	cidStatic  = strings.Repeat("f1", 32)
)

const (
	uidWebRTC = "0b6f2c3e-5a71-4d2b-9c84-2f1e7a9d3c10"
	uidOther  = "7d3e1a2b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
	uidMirror = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
	// A static pod's cgroup carries the kubelet's hash of its manifest.
	staticHash = "6c3a9f0e2b7d41d8a5e3c9b1f4d2e8a7"
)

// fakePods is the fake clientset's pods of every namespace. It tells the
// reflector not to ask for a watch-list stream, which the fake cannot
// serve, as the fake clientset itself does.
func fakePods(c *fake.Clientset) PodsClient {
	return unstreamed{c.CoreV1().Pods(metav1.NamespaceAll)}
}

type unstreamed struct{ typedcorev1.PodInterface }

func (unstreamed) IsWatchListSemanticsUnSupported() bool { return true }

func status(name, id string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, ContainerID: id}
}

func pod(ns, name, uid, nodeName string, containers ...corev1.ContainerStatus) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: nodeName},
		Status:     corev1.PodStatus{ContainerStatuses: containers},
	}
}

func webrtcPod() *corev1.Pod {
	p := pod("media", "webrtc-0", uidWebRTC, node,
		status("sfu", "containerd://"+cidMain),
		status("metrics", "containerd://"+cidSidecar),
	)
	p.Status.InitContainerStatuses = []corev1.ContainerStatus{status("fetch-models", "containerd://"+cidInit)}
	p.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{status("debugger-x7k", "containerd://"+cidDebug)}
	return p
}

// started runs a Watcher over a fake clientset holding objs and returns once
// the first list is in the index and the watch is open: the fake clientset
// does not replay events that happen between the two, so a test that
// creates a pod earlier could lose it.
func started(t *testing.T, objs ...runtime.Object) (*Watcher, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("pods", func(clienttesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil // on to the tracker's watch
	})
	w, err := New(fakePods(client), node, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
		t.Fatal("not synced")
	}
	select {
	case <-watching:
	case <-time.After(5 * time.Second):
		t.Fatal("watch not opened")
	}
	return w, client
}

func timeout(t *testing.T) <-chan struct{} {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx.Done()
}

func TestListedAndCreatedPodsResolve(t *testing.T) {
	listed := pod("default", "encoder", uidOther, node, status("enc", "cri-o://"+cidOther))
	w, client := started(t, listed)

	// From the first list.
	if got, ok := w.Lookup(uidOther); !ok || got != (Pod{"default", "encoder", uidOther}) {
		t.Errorf("Lookup(listed) = %+v, %v", got, ok)
	}
	// From the watch.
	if _, err := client.CoreV1().Pods("media").Create(context.Background(), webrtcPod(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "created pod", func() bool { _, ok := w.Lookup(uidWebRTC); return ok })
	want := Pod{Namespace: "media", Name: "webrtc-0", UID: uidWebRTC}
	if got, _ := w.Lookup(uidWebRTC); got != want {
		t.Errorf("Lookup = %+v, want %+v", got, want)
	}

	for _, tc := range []struct{ id, name string }{
		{cidMain, "sfu"},
		{"containerd://" + cidMain, "sfu"}, // as the status writes it
		{cidSidecar, "metrics"},
		{cidInit, "fetch-models"},
		{cidDebug, "debugger-x7k"},
	} {
		p, name, ok := w.Container(tc.id)
		if !ok || p != want || name != tc.name {
			t.Errorf("Container(%.20s...) = %+v, %q, %v; want %+v, %q", tc.id, p, name, ok, want, tc.name)
		}
	}
	if p, name, ok := w.Container(cidOther); !ok || p.Name != "encoder" || name != "enc" {
		t.Errorf("Container(cri-o) = %+v, %q, %v", p, name, ok)
	}
	if _, _, ok := w.Container(strings.Repeat("99", 32)); ok {
		t.Error("unknown container ID resolved")
	}
	if _, ok := w.Lookup("no-such-uid"); ok {
		t.Error("unknown UID resolved")
	}
}

func TestRunAsksForThisNodesPodsOnly(t *testing.T) {
	if got, want := fieldSelector(node), "spec.nodeName="+node; got != want {
		t.Fatalf("fieldSelector = %q, want %q", got, want)
	}
	_, client := started(t)
	var list, watches int
	for _, a := range client.Actions() {
		if a.GetResource().Resource != "pods" {
			continue
		}
		var fs string
		switch a := a.(type) {
		case clienttesting.ListAction:
			list++
			fs = a.GetListRestrictions().Fields.String()
		case clienttesting.WatchAction:
			watches++
			fs = a.GetWatchRestrictions().Fields.String()
		default:
			t.Errorf("unexpected %s on pods", a.GetVerb())
			continue
		}
		if fs != "spec.nodeName="+node {
			t.Errorf("%s with field selector %q", a.GetVerb(), fs)
		}
		if a.GetNamespace() != "" {
			t.Errorf("%s in namespace %q, want all", a.GetVerb(), a.GetNamespace())
		}
	}
	if list == 0 || watches == 0 {
		t.Errorf("%d lists, %d watches of pods", list, watches)
	}
}

// The fake clientset ignores field selectors, as a misbehaving proxy could:
// the handlers must keep other nodes' pods out on their own.
func TestPodOnAnotherNodeIsIgnored(t *testing.T) {
	w, client := started(t, pod("default", "elsewhere-listed", uidMirror, "gpu-node-b", status("x", "containerd://"+cidStatic)))
	ctx := context.Background()
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod("default", "elsewhere", uidOther, "gpu-node-b", status("enc", "containerd://"+cidOther)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Events arrive in order: once this one is in, the other was handled.
	if _, err := client.CoreV1().Pods("media").Create(ctx, webrtcPod(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "pod on this node", func() bool { _, ok := w.Lookup(uidWebRTC); return ok })
	for _, uid := range []string{uidOther, uidMirror} {
		if p, ok := w.Lookup(uid); ok {
			t.Errorf("pod on another node found: %+v", p)
		}
	}
	for _, id := range []string{cidOther, cidStatic} {
		if _, _, ok := w.Container(id); ok {
			t.Errorf("container on another node found: %.12s", id)
		}
	}
}

func TestRestartedContainerResolvesItsNewID(t *testing.T) {
	w, client := started(t, webrtcPod())
	if _, name, ok := w.Container(cidMain); !ok || name != "sfu" {
		t.Fatalf("before restart: %q, %v", name, ok)
	}

	// The sampler reads every tick while events land: -race checks the
	// index's locking.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				w.Lookup(uidWebRTC)
				w.Container(cidMain)
			}
		}
	}()
	defer func() { close(stop); readers.Wait() }()

	p := webrtcPod()
	p.Status.ContainerStatuses[0] = status("sfu", "containerd://"+cidMain2)
	p.Status.ContainerStatuses[0].RestartCount = 1
	if _, err := client.CoreV1().Pods("media").UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "new container ID", func() bool { _, _, ok := w.Container(cidMain2); return ok })
	if _, name, _ := w.Container(cidMain2); name != "sfu" {
		t.Errorf("new ID names %q", name)
	}
	if _, _, ok := w.Container(cidMain); ok {
		t.Error("the old container ID still resolves")
	}
	if _, name, ok := w.Container(cidSidecar); !ok || name != "metrics" {
		t.Errorf("the unchanged sidecar: %q, %v", name, ok)
	}
}

func mirrorPod(uid string) *corev1.Pod {
	p := pod("kube-system", "gpu-probe-"+node, uid, node, status("probe", "containerd://"+cidStatic))
	p.Annotations = map[string]string{
		ConfigHashAnnotation:          staticHash,
		"kubernetes.io/config.mirror": staticHash,
		"kubernetes.io/config.source": "file",
	}
	return p
}

func TestStaticPodFoundByConfigHash(t *testing.T) {
	w, _ := started(t, mirrorPod(uidMirror))
	want := Pod{Namespace: "kube-system", Name: "gpu-probe-" + node, UID: uidMirror}
	if got, ok := w.Lookup(staticHash); !ok || got != want {
		t.Errorf("Lookup(hash) = %+v, %v; want %+v", got, ok, want)
	}
	if got, ok := w.Lookup(uidMirror); !ok || got != want {
		t.Errorf("Lookup(mirror UID) = %+v, %v", got, ok)
	}
	if _, name, ok := w.Container(cidStatic); !ok || name != "probe" {
		t.Errorf("Container = %q, %v", name, ok)
	}
}

// After a relist the informer may add a static pod's new mirror (new UID,
// same hash) before deleting the old one: the delete must not take the
// hash with it.
func TestReplacedMirrorKeepsTheHash(t *testing.T) {
	w, err := New(fakePods(fake.NewClientset()), node, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const newUID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	w.upsert(mirrorPod(uidMirror))
	w.upsert(mirrorPod(newUID))
	w.remove(mirrorPod(uidMirror))
	if got, ok := w.Lookup(staticHash); !ok || got.UID != newUID {
		t.Errorf("Lookup(hash) = %+v, %v; want the new mirror", got, ok)
	}
	if p, _, ok := w.Container(cidStatic); !ok || p.UID != newUID {
		t.Errorf("Container = %+v, %v; want the new mirror", p, ok)
	}
	if _, ok := w.Lookup(uidMirror); ok {
		t.Error("the old mirror's UID still resolves")
	}
}

func TestDeletedPodIsGone(t *testing.T) {
	w, client := started(t, webrtcPod())
	if _, ok := w.Lookup(uidWebRTC); !ok {
		t.Fatal("listed pod not found")
	}
	if err := client.CoreV1().Pods("media").Delete(context.Background(), "webrtc-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "deleted pod gone", func() bool { _, ok := w.Lookup(uidWebRTC); return !ok })
	for _, id := range []string{cidMain, cidSidecar, cidInit, cidDebug} {
		if _, _, ok := w.Container(id); ok {
			t.Errorf("container %.12s of a deleted pod resolves", id)
		}
	}
}

// A watch that was down when the pod went away ends in a relist, and the
// informer hands over a tombstone holding the cache's last (stripped) copy.
func TestTombstoneRemovesThePod(t *testing.T) {
	w, err := New(fakePods(fake.NewClientset()), node, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stripped, _ := strip(webrtcPod())
	w.upsert(stripped)
	mirror, _ := strip(mirrorPod(uidMirror))
	w.upsert(mirror)
	w.remove(cache.DeletedFinalStateUnknown{Key: "media/webrtc-0", Obj: stripped})
	w.remove(cache.DeletedFinalStateUnknown{Key: "kube-system/gpu-probe", Obj: mirror})
	for _, uid := range []string{uidWebRTC, uidMirror, staticHash} {
		if _, ok := w.Lookup(uid); ok {
			t.Errorf("Lookup(%s) after tombstone", uid)
		}
	}
	if _, _, ok := w.Container(cidMain); ok {
		t.Error("container resolves after tombstone")
	}
	// Tombstones of something else, or of nothing, are ignored.
	w.remove(cache.DeletedFinalStateUnknown{Key: "x/y"})
	w.remove("not a pod")
	if len(w.pods) != 0 || len(w.byUID) != 0 || len(w.byContainer) != 0 {
		t.Errorf("index not empty: %d pods, %d UIDs, %d containers", len(w.pods), len(w.byUID), len(w.byContainer))
	}
}

func TestHasSyncedWaitsForTheFirstList(t *testing.T) {
	client := fake.NewClientset(webrtcPod())
	release := make(chan struct{})
	client.PrependReactor("list", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil // on to the tracker's list
	})
	w, err := New(fakePods(client), node, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if w.HasSynced() {
		t.Fatal("synced before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	if w.HasSynced() {
		t.Error("synced while the list is pending")
	}
	if _, ok := w.Lookup(uidWebRTC); ok {
		t.Error("pod found before the list returned")
	}
	close(release)
	if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
		t.Fatal("not synced after the list")
	}
	// Synced means the handler has seen the list, not only the store.
	if _, ok := w.Lookup(uidWebRTC); !ok {
		t.Error("synced, but the listed pod is not in the index")
	}
	if err := w.Run(ctx); err == nil {
		t.Error("a second Run did not fail")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on cancel")
	}
}

// Stats counts a forbidden list (a missing RBAC rule), is not synced
// until a list succeeds, and then holds the node's pods. The failure is
// logged once, and so is the list that ends it.
func TestStatsCountFailedListsUntilSynced(t *testing.T) {
	client := fake.NewClientset(webrtcPod())
	var calls sync.Mutex
	failures := 2
	client.PrependReactor("list", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		calls.Lock()
		defer calls.Unlock()
		if failures > 0 {
			failures--
			return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", nil)
		}
		return false, nil, nil
	})
	var logs syncBuffer
	w, err := New(fakePods(client), node, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st != (Stats{}) {
		t.Fatalf("before Run: %+v, want zero", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	if !cache.WaitForCacheSync(timeout(t), w.HasSynced) {
		t.Fatal("not synced after the list that succeeded")
	}
	if st := w.Stats(); st != (Stats{Synced: true, Pods: 1, Errors: 2, Lists: 3}) {
		t.Errorf("after two forbidden lists and a good one: %+v, want synced, 1 pod, 2 errors, 3 lists", st)
	}
	out := logs.String()
	if n := strings.Count(out, `level=WARN msg="pod watch failed`); n != 1 {
		t.Errorf("two forbidden lists logged %d warnings, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, `level=INFO msg="pod watch works again"`); n != 1 {
		t.Errorf("the list that ended the failure logged %d lines saying so, want 1:\n%s", n, out)
	}
}

func TestNewRejectsMissingArguments(t *testing.T) {
	if _, err := New(nil, node, Options{}); err == nil {
		t.Error("nil client accepted")
	}
	// An empty node would watch every pod of the cluster.
	if _, err := New(fakePods(fake.NewClientset()), "", Options{}); err == nil {
		t.Error("empty node accepted")
	}
}

func TestStripKeepsOnlyWhatTheIndexReads(t *testing.T) {
	full := webrtcPod()
	full.ResourceVersion = "4711"
	full.Labels = map[string]string{"app": "webrtc"}
	full.Annotations = map[string]string{ConfigHashAnnotation: staticHash, "kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 4096),
		app.AnnotationScrape: "true", app.AnnotationPort: "metrics", "prometheus.io/scrape": "true"}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	full.OwnerReferences = []metav1.OwnerReference{{Kind: "StatefulSet", Name: "webrtc"}}
	full.Spec.Containers = []corev1.Container{
		{Name: "sfu", Image: "sfu:1", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 6789, Protocol: corev1.ProtocolTCP, HostPort: 6789}}},
		{Name: "sidecar", Image: "s:1"},
	}
	full.Status.Phase = corev1.PodRunning
	full.Status.PodIP = "10.1.2.3"
	full.Status.PodIPs = []corev1.PodIP{{IP: "10.1.2.3"}}
	full.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady}}
	full.Status.ContainerStatuses[0].Image = "sfu:1"
	full.Status.ContainerStatuses[0].RestartCount = 3

	got, err := strip(full)
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "media", Name: "webrtc-0", UID: uidWebRTC, ResourceVersion: "4711",
			Annotations: map[string]string{ConfigHashAnnotation: staticHash, app.AnnotationScrape: "true", app.AnnotationPort: "metrics"},
		},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "sfu", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 6789, Protocol: corev1.ProtocolTCP}}},
		}},
		Status: corev1.PodStatus{
			Phase:                      corev1.PodRunning,
			PodIP:                      "10.1.2.3",
			InitContainerStatuses:      []corev1.ContainerStatus{status("fetch-models", "containerd://"+cidInit)},
			ContainerStatuses:          []corev1.ContainerStatus{status("sfu", "containerd://"+cidMain), status("metrics", "containerd://"+cidSidecar)},
			EphemeralContainerStatuses: []corev1.ContainerStatus{status("debugger-x7k", "containerd://"+cidDebug)},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("strip =\n%+v\nwant\n%+v", got, want)
	}
	// client-go may transform an object it already transformed.
	again, _ := strip(got)
	if !reflect.DeepEqual(again, want) {
		t.Errorf("strip is not idempotent:\n%+v", again)
	}
	// A pod that does not opt in to app discovery keeps no containers:
	// their ports are all strip would keep of them.
	delete(full.Annotations, app.AnnotationScrape)
	delete(full.Annotations, app.AnnotationPort)
	got, _ = strip(full)
	want.Annotations = map[string]string{ConfigHashAnnotation: staticHash}
	want.Spec.Containers = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("strip of a pod without gpu-agent.io/ annotations =\n%+v\nwant\n%+v", got, want)
	}
	if info := appInfo(full); info.Ports != nil {
		t.Errorf("appInfo of a pod without gpu-agent.io/ annotations has ports %+v", info.Ports)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "a/b"}
	if out, _ := strip(tomb); out != tomb {
		t.Errorf("strip changed a tombstone: %+v", out)
	}
}

// App discovery reads the watch's index: a pod's IP, phase, gpu-agent.io/
// annotations and ports, as updates change them, and nothing once gone;
// a pod without gpu-agent.io/ annotations is never listed.
func TestAppPods(t *testing.T) {
	p := webrtcPod()
	p.Annotations = map[string]string{app.AnnotationScrape: "true", app.AnnotationFamilies: "livekit_.*", "other.io/x": "y"}
	p.Spec.Containers = []corev1.Container{{Name: "sfu", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 6789}}}}
	p.Status.Phase = corev1.PodPending
	// A pod without gpu-agent.io/ annotations is no target: not listed.
	other := pod("media", "plain-0", "uid-plain", node, status("web", "containerd://plain"))
	other.Annotations = map[string]string{"other.io/x": "y"}
	other.Spec.Containers = []corev1.Container{{Name: "web", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}
	w, client := started(t, p, other)
	pods := w.AppPods()
	want := app.PodInfo{Namespace: "media", Name: "webrtc-0", UID: uidWebRTC, Phase: "Pending",
		Annotations: map[string]string{app.AnnotationScrape: "true", app.AnnotationFamilies: "livekit_.*"},
		Ports:       []app.Port{{Container: "sfu", Name: "metrics", Number: 6789}}}
	if len(pods) != 1 || !reflect.DeepEqual(pods[0], want) {
		t.Fatalf("AppPods = %+v, want %+v", pods, want)
	}
	running := p.DeepCopy()
	running.Status.Phase, running.Status.PodIP = corev1.PodRunning, "10.1.2.3"
	if _, err := client.CoreV1().Pods("media").UpdateStatus(context.Background(), running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the update reached AppPods", func() bool {
		ps := w.AppPods()
		return len(ps) == 1 && ps[0].Phase == "Running" && ps[0].IP == "10.1.2.3"
	})
	if _, err := app.ParseTarget(w.AppPods()[0], app.MinInterval, time.Second); err != nil {
		t.Fatalf("the watched pod is not a target: %v", err)
	}
	if err := client.CoreV1().Pods("media").Delete(context.Background(), "webrtc-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the deleted pod left AppPods", func() bool { return len(w.AppPods()) == 0 })
}

func TestBareID(t *testing.T) {
	for in, want := range map[string]string{
		"containerd://" + cidMain: cidMain,
		"cri-o://" + cidMain:      cidMain,
		"docker://" + cidMain:     cidMain,
		cidMain:                   cidMain,
		"":                        "",
	} {
		if got := bareID(in); got != want {
			t.Errorf("bareID(%q) = %q", in, got)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	w, err := New(fakePods(fake.NewClientset()), node, Options{})
	if err != nil {
		b.Fatal(err)
	}
	w.upsert(webrtcPod())
	b.ReportAllocs()
	for b.Loop() {
		w.Lookup(uidWebRTC)
		w.Container(cidMain)
	}
}

// syncBuffer is a bytes.Buffer safe for the watcher's goroutines to write
// and the test to read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
