package fakeapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The agent's own pod client and watcher, pointed at the fake through a
// kubeconfig, sync this node's pods (and not another node's) and find
// them by UID and container ID.
func TestAgentPodWatch(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	s := Start(
		Pod("node-a", "media", "sfu-0", "11111111-2222-4333-8444-555555555555", "sfu="+id),
		Pod("node-b", "media", "elsewhere", "99999999-2222-4333-8444-555555555555"),
	)
	defer s.Close()
	kc, err := s.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	client, err := podwatch.NewClient(kc)
	if err != nil {
		t.Fatal(err)
	}
	w, err := podwatch.New(client, "node-a", podwatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := testutil.Poll(t.Context(), 10*time.Second, func() (bool, error) { return w.HasSynced(), nil }); err != nil {
		t.Fatalf("not synced: %v; requests %+v", err, s.Requests())
	}
	if p, ok := w.Lookup("11111111-2222-4333-8444-555555555555"); !ok || p.Name != "sfu-0" || p.Namespace != "media" {
		t.Errorf("Lookup = %+v, %v; want media/sfu-0", p, ok)
	}
	if p, name, ok := w.Container(id); !ok || p.Name != "sfu-0" || name != "sfu" {
		t.Errorf("Container = %+v %q %v; want sfu-0's sfu", p, name, ok)
	}
	if _, ok := w.Lookup("99999999-2222-4333-8444-555555555555"); ok {
		t.Error("another node's pod was listed: the field selector was not applied")
	}
	reqs := s.Requests()
	if len(reqs) == 0 || reqs[0].FieldSelector != "spec.nodeName=node-a" {
		t.Errorf("requests %+v; want the first with fieldSelector spec.nodeName=node-a", reqs)
	}
	t.Logf("requests: %+v", reqs)
}

// syncBuffer is a bytes.Buffer safe for the watcher to write and the test
// to read.
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

// An API server that ends every watch after 1 s and answers a watch that
// resumes from its resource version with 410 Gone (as a status, or as an
// ERROR event in the stream): the agent's watcher lists again after each,
// with client-go's backoff rather than in a loop; a pod deleted, one
// created and one whose container restarted and labels changed meanwhile
// are indexed right after the next list; a 410 is the protocol working, so
// neither an error counted nor a line logged above debug, and client-go's
// own lines come through the agent's logger, at debug.
func TestPodWatchSurvivesDroppedWatches(t *testing.T) {
	for _, gone := range []Gone{GoneStatus, GoneEvent} {
		t.Run(map[Gone]string{GoneStatus: "status", GoneEvent: "event"}[gone], func(t *testing.T) {
			t.Parallel()
			testDroppedWatches(t, gone)
		})
	}
}

func testDroppedWatches(t *testing.T, gone Gone) {
	var (
		idA, idB, idB2, idC = strings.Repeat("a1", 32), strings.Repeat("b1", 32), strings.Repeat("b2", 32), strings.Repeat("c1", 32)
		uidA, uidB, uidC    = "aaaaaaaa-2222-4333-8444-555555555555", "bbbbbbbb-2222-4333-8444-555555555555", "cccccccc-2222-4333-8444-555555555555"
	)
	labelled := func(p corev1.Pod, app string) corev1.Pod {
		p.Labels = map[string]string{"app": app, "pod-template-hash": "7d9f8b6c5d"}
		return p
	}
	s := Start(
		labelled(Pod("node-a", "media", "sfu-a", uidA, "sfu="+idA), "sfu"),
		labelled(Pod("node-a", "media", "enc-b", uidB, "enc="+idB), "encoder"),
		Pod("node-b", "media", "elsewhere", "99999999-2222-4333-8444-555555555555"),
	)
	defer s.Close()
	s.SetFaults(Faults{DropWatchesAfter: time.Second, Gone: gone})
	kc, err := s.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	client, err := podwatch.NewClient(kc)
	if err != nil {
		t.Fatal(err)
	}
	labels, err := attribution.NewLabelAllowlist([]string{"app"})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	w, err := podwatch.New(client, "node-a", podwatch.Options{PodLabels: labels,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// name is what attribution reads of a container: its pod and name,
	// and the pod's labels; "" when not known.
	name := func(id string) string {
		p, ok := w.Name(cgroup.Owner{ContainerID: id})
		if !ok {
			return ""
		}
		var labels []string
		if m := w.PodMeta(p.Namespace, p.Name); m != nil {
			for _, l := range m.Labels {
				labels = append(labels, l.Name+"="+l.Value)
			}
		}
		return p.Namespace + "/" + p.Name + "/" + p.Container + " " + strings.Join(labels, ",")
	}
	poll := func(what string, f func() error) {
		t.Helper()
		if err := testutil.Poll(t.Context(), 30*time.Second, func() (bool, error) { return f() == nil, nil }); err != nil {
			t.Fatalf("%s: %v; requests %+v\n%s", what, f(), s.Requests(), logs.String())
		}
	}
	want := func(byID map[string]string) func() error {
		return func() error {
			for id, want := range byID {
				if got := name(id); got != want {
					return fmt.Errorf("container %.8s... is %q, want %q", id, got, want)
				}
			}
			return nil
		}
	}
	poll("the first list", want(map[string]string{idA: "media/sfu-a/sfu app=sfu", idB: "media/enc-b/enc app=encoder"}))
	poll("a watch answered Gone", func() error {
		if s.GoneAnswers() == 0 {
			return errors.New("no watch answered Gone yet")
		}
		return nil
	})

	// Meanwhile sfu-a goes, enc-b's container restarts and its label
	// changes, and a pod arrives: the watches, dropped and refused, see
	// none of it; the next list does.
	lists := s.Lists()
	s.SetPods(
		labelled(Pod("node-a", "media", "enc-b", uidB, "enc="+idB2), "encoder-v2"),
		labelled(Pod("node-a", "media", "sfu-c", uidC, "sfu="+idC), "sfu"),
		Pod("node-b", "media", "elsewhere", "99999999-2222-4333-8444-555555555555"),
	)
	poll("the pods changed while the watch was down", want(map[string]string{
		idA: "", idB: "", idB2: "media/enc-b/enc app=encoder-v2", idC: "media/sfu-c/sfu app=sfu"}))
	if _, ok := w.Lookup(uidA); ok {
		t.Error("deleted pod sfu-a still found by UID")
	}
	if s.Lists() <= lists {
		t.Errorf("the change was seen without a list: %d lists before, %d after", lists, s.Lists())
	}
	// Two more rounds of drop, refused resume and list, to count lists
	// over several seconds: client-go's backoff doubles each round.
	gones := s.GoneAnswers()
	poll("two more watches answered Gone", func() error {
		if s.GoneAnswers() < gones+2 {
			return fmt.Errorf("%d watches answered Gone, want %d", s.GoneAnswers(), gones+2)
		}
		return nil
	})
	poll("a list after each", func() error {
		if s.Lists() <= s.GoneAnswers() {
			return fmt.Errorf("%d lists after %d watches answered Gone, want one more", s.Lists(), s.GoneAnswers())
		}
		return nil
	})

	elapsed := time.Since(start)
	st := w.Stats()
	n := s.Lists()
	t.Logf("%v: %d lists, %d watches answered Gone, %d requests; stats %+v", elapsed.Round(time.Millisecond), n, s.GoneAnswers(), len(s.Requests()), st)
	// client-go waits 0.8 s and more (doubling, with jitter, up to 30 s)
	// before each list after the first: a loop without backoff would list
	// hundreds of times a second. Twice a second is a loose bound.
	if limit := 2 + int(2*elapsed.Seconds()); n > limit {
		t.Errorf("%d lists in %v, want at most %d: listing in a loop", n, elapsed, limit)
	}
	if int(st.Lists) != n {
		t.Errorf("the watcher counted %d lists, the server %d", st.Lists, n)
	}
	if !st.Synced || st.Errors != 0 || st.Pods != 2 {
		t.Errorf("stats %+v, want synced, 2 pods, no errors: an expired watch is not a failure", st)
	}
	out := logs.String()
	if strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") || strings.Count(out, "level=INFO") != 1 {
		t.Errorf("want one line above debug (synced), got:\n%s", out)
	}
	if !strings.Contains(out, `level=DEBUG msg="pod watch expired`) && gone == GoneStatus {
		t.Errorf("the expired watches are not logged at debug:\n%s", out)
	}
	if !strings.Contains(out, "reflector=") {
		t.Errorf("client-go's own lines do not come through the watcher's logger:\n%s", out)
	}
}
