package podresources_test

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
)

// crowdedNode is mixedNode's GPU pods among n pods that hold none, at the
// start, the middle and the end of the kubelet's answer.
func crowdedNode(n int) []*podresourcesv1.PodResources {
	crowd, gpus := fakekubelet.Crowd(n), mixedNode()
	out := make([]*podresourcesv1.PodResources, 0, n+len(gpus))
	out = append(out, gpus[0])
	out = append(out, crowd[:n/2]...)
	out = append(out, gpus[1:3]...)
	out = append(out, crowd[n/2:]...)
	return append(out, gpus[3:]...)
}

func answerBytes(pods []*podresourcesv1.PodResources) int {
	return proto.Size(&podresourcesv1.ListPodResourcesResponse{PodResources: pods})
}

// heap returns the bytes of live objects and those ever allocated, after
// two collections (the second empties the pools the first left).
func heap() (live, total uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.TotalAlloc
}

// A kubelet answering 10,000 pods, past gRPC's default 4 MiB: the client
// takes it (its limit is 16 MiB), attributes the GPU pods among them, and
// keeps only them: the map's heap is that of a handful of pods, not of the
// answer. Past 16 MiB the List fails with an error that names the limit;
// the last good map is kept, the status says down and stale, the failure
// is counted and logged once; a smaller answer brings it back.
func TestClientCrowdedKubelet(t *testing.T) {
	const pods, tooMany = 10_000, 40_000
	path := socketPath(t)
	crowded := crowdedNode(pods)
	size := answerBytes(crowded)
	if size <= 4<<20 {
		t.Fatalf("the answer of %d pods is %d bytes, want it past gRPC's default 4 MiB", pods, size)
	}
	kl := startKubelet(t, path, crowded)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// A generous timeout: encoding 17 MB under the race detector on a
	// loaded machine must not turn into a timeout, another failure.
	c := newClient(t, path, podresources.Options{Logger: log, Timeout: time.Minute})
	ctx := context.Background()

	live0, total0 := heap()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("List of %d pods (%d bytes): %v", pods, size, err)
	}
	live1, total1 := heap()
	good := c.Assignments()
	wantMixed(t, good)
	kept := int64(live1) - int64(live0)
	// The fake kubelet encoded its answer in SetPods: what is allocated
	// here is the client's receiving, decoding and building.
	t.Logf("%d pods, %d bytes answered: %.1f MB allocated to receive it and build the map, %d kB of heap kept after it",
		len(crowded), size, float64(total1-total0)/1e6, kept/1000)
	// The map holds 6 pods; a map that kept the answer (or the pods'
	// strings of it) would hold megabytes.
	if kept > 1<<20 {
		t.Errorf("the pod map of %d pods keeps %d bytes of heap, want well under 1 MiB: does it hold on to the answer?", pods, kept)
	}

	tooBig := crowdedNode(tooMany)
	kl.SetPods(tooBig)
	const down = `level=WARN msg="kubelet pod-resources unavailable`
	// Each refused answer costs the fake kubelet an encoding of 17 MB
	// (seconds under the race detector): two show the second is not
	// logged again.
	for i := range 2 {
		err := c.Refresh(ctx)
		if err == nil {
			t.Fatalf("List of %d pods succeeded, want it refused past 16 MiB", tooMany)
		}
		if i == 0 {
			t.Logf("%d pods: %v", tooMany, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "over the agent's 16 MiB limit") || !strings.Contains(msg, "ResourceExhausted") {
			t.Errorf("error %q, want it to name the 16 MiB limit and keep gRPC's code", msg)
		}
	}
	if c.Assignments() != good {
		t.Error("the pod map changed on a refused answer, want the last good one kept")
	}
	st := c.Status()
	if st.Up || !st.Stale || st.Expired || st.Failures != 2 || st.Refreshes != 1 {
		t.Errorf("Status after 2 refused answers = %+v, want down, stale, 2 failures", st)
	}
	if n := buf.count(down, "16 MiB"); n != 1 {
		t.Errorf("2 refused answers logged %d warnings naming the limit, want 1:\n%s", n, buf.String())
	}

	kl.SetPods(crowded)
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("List of %d pods after the refused ones: %v", pods, err)
	}
	if st := c.Status(); !st.Up || st.Stale {
		t.Errorf("Status after a good answer = %+v, want up", st)
	}
	wantMixed(t, c.Assignments())
}

// BenchmarkRefresh10000Pods is one poll of a crowded node's kubelet: the
// List of 10,000 pods over the unix socket (the fake kubelet sends an
// answer it encoded once), decoding, and the map of its GPU pods. It runs once
// per --kubelet.poll-interval (1 s by default).
func BenchmarkRefresh10000Pods(b *testing.B) {
	path := socketPath(b)
	kl, err := fakekubelet.Start(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(kl.Stop)
	pods := crowdedNode(10_000)
	kl.SetPods(pods)
	c, err := podresources.NewClient(path, podresources.NewResolver(testInventory()), podresources.Options{Period: time.Nanosecond, Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	b.SetBytes(int64(answerBytes(pods)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	if c.Assignments().Len() != 4 {
		b.Fatalf("%d devices attributed, want 4", c.Assignments().Len())
	}
}

// BenchmarkDecodeAndBuild10000Pods is the client's own part of that poll,
// without the fake kubelet's encoding or the socket: decoding the 4.3 MB
// answer and building the map of its GPU pods.
func BenchmarkDecodeAndBuild10000Pods(b *testing.B) {
	wire, err := proto.Marshal(&podresourcesv1.ListPodResourcesResponse{PodResources: crowdedNode(10_000)})
	if err != nil {
		b.Fatal(err)
	}
	r := podresources.NewResolver(testInventory())
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		var resp podresourcesv1.ListPodResourcesResponse
		if err := proto.Unmarshal(wire, &resp); err != nil {
			b.Fatal(err)
		}
		if a := podresources.BuildAssignments(&resp, r); a.Len() != 4 {
			b.Fatalf("%d devices attributed, want 4", a.Len())
		}
	}
}
