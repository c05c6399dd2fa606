package stream

import (
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The first message is the latest snapshot, at once, with the node's
// identity, every attributed device (MIG instances as devices of their
// own, a time-sliced GPU with both its pods), values in the snapshot's
// units, absent fields absent, and a lost GPU flagged without values.
func TestFirstMessageIsTheLatestSnapshot(t *testing.T) {
	h := newHarness(t, Options{Start: epoch.Add(-time.Hour)}, newTestPods())
	h.store.Publish(snapshot(1))
	h.store.Publish(snapshot(2))

	m := recv(t, h.watch(t, &telemetryv1.WatchRequest{}))
	if m.GetNode() != "node-a" || m.GetSequence() != 2 || !m.GetSampleTime().AsTime().Equal(epoch.Add(2*testInterval)) ||
		m.GetInterval().AsDuration() != testInterval || !m.GetAgentStart().AsTime().Equal(epoch.Add(-time.Hour)) || m.GetSkipped() != 0 {
		t.Errorf("header = node %q seq %d time %v interval %v start %v skipped %d", m.GetNode(), m.GetSequence(),
			m.GetSampleTime().AsTime(), m.GetInterval().AsDuration(), m.GetAgentStart().AsTime(), m.GetSkipped())
	}
	if got, want := uuids(m), []string{uuid0, uuid1, migA, uuid4}; !slices.Equal(got, want) {
		t.Fatalf("devices %v, want %v (attributed only, by default)", got, want)
	}

	d0 := device(m, uuid0)
	if d0.GetGpuIndex() != 0 || d0.GetModelName() != "Tesla T4" || d0.GetPciBusId() != "00000000:3B:00.0" || d0.GetParentUuid() != "" {
		t.Errorf("GPU 0 identity = %v", d0)
	}
	if d0.GpuUtil == nil || *d0.GpuUtil != 2 || d0.EncUtil == nil || *d0.EncUtil != 50 ||
		d0.FbUsedBytes == nil || *d0.FbUsedBytes != 3<<30 || d0.EncoderSessions == nil || *d0.EncoderSessions != 4 ||
		d0.EncoderLatencySeconds == nil || *d0.EncoderLatencySeconds != 0.002 {
		t.Errorf("GPU 0 values = %v", d0)
	}
	if d0.MemCopyUtil != nil || d0.FbTotalBytes != nil || d0.EncoderFps != nil || d0.DecUtil != nil {
		t.Errorf("fields the reading lacks are present: %v", d0)
	}
	if got := gpuSamples(d0); !slices.Equal(got, []float64{2}) {
		t.Errorf("GPU 0 samples %v, want this tick's [2] only", got)
	}
	if got := podNames(d0); !slices.Equal(got, []string{"ml/inference-0/server"}) {
		t.Errorf("GPU 0 pods %v", got)
	}
	if got := podNames(device(m, uuid1)); !slices.Equal(got, []string{"media/sfu-0/sfu", "media/sfu-1/sfu"}) {
		t.Errorf("time-sliced GPU 1 pods %v, want both", got)
	}

	mig := device(m, migA)
	if mig.GetParentUuid() != uuid3 || mig.GetMigProfile() != "1g.5gb" || mig.GetGpuInstanceId() != 7 || mig.GetGpuIndex() != 3 ||
		mig.FbUsedBytes == nil || *mig.FbUsedBytes != 1<<30 || mig.GpuUtil != nil || len(mig.GetSamples()) != 0 {
		t.Errorf("MIG instance = %v", mig)
	}
	if got := podNames(mig); !slices.Equal(got, []string{"ml/small/worker"}) {
		t.Errorf("MIG pods %v", got)
	}

	lost := device(m, uuid4)
	if !lost.GetLost() || lost.GpuUtil != nil || lost.FbUsedBytes != nil || len(lost.GetSamples()) != 0 {
		t.Errorf("lost GPU = %v, want flagged and without values", lost)
	}
}

func TestPodsStale(t *testing.T) {
	p := newTestPods()
	p.stale = true
	h := newHarness(t, Options{}, p)
	h.store.Publish(snapshot(1))
	if m := recv(t, h.watch(t, &telemetryv1.WatchRequest{})); !m.GetPodsStale() {
		t.Error("pods_stale false while the pod map is stale")
	}
}

// A subscriber that comes before the first snapshot gets it as soon as
// it is published.
func TestWatchBeforeTheFirstSnapshot(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	w := h.watch(t, &telemetryv1.WatchRequest{})
	testutil.Eventually(t, 10*time.Second, "the subscriber", func() bool { return promtest.ToFloat64(h.srv.subscribers) == 1 })
	h.store.Publish(snapshot(1))
	if m := recv(t, w); m.GetSequence() != 1 {
		t.Errorf("first message seq %d, want 1", m.GetSequence())
	}
}

func TestFilters(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	for _, tt := range []struct {
		name string
		req  *telemetryv1.WatchRequest
		want []string
	}{
		{"all attributed", &telemetryv1.WatchRequest{}, []string{uuid0, uuid1, migA, uuid4}},
		{"unattributed too", &telemetryv1.WatchRequest{IncludeUnattributed: true}, []string{uuid0, uuid1, uuid2, uuid3, migA, uuid4}},
		{"namespace", &telemetryv1.WatchRequest{Namespace: "media"}, []string{uuid1}},
		{"namespace ignores unattributed", &telemetryv1.WatchRequest{Namespace: "media", IncludeUnattributed: true}, []string{uuid1}},
		{"pattern matched whole", &telemetryv1.WatchRequest{PodPattern: "inference"}, nil},
		{"pattern", &telemetryv1.WatchRequest{PodPattern: "inference-.*"}, []string{uuid0}},
		{"pattern alternation is whole too", &telemetryv1.WatchRequest{PodPattern: "sfu-1|small"}, []string{uuid1, migA}},
		{"namespace and pattern", &telemetryv1.WatchRequest{Namespace: "ml", PodPattern: "sfu-.*"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := uuids(recv(t, h.watch(t, tt.req))); !slices.Equal(got, tt.want) {
				t.Errorf("devices %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t, Options{})
	h.store.Publish(snapshot(1))
	for _, tt := range []struct {
		req  *telemetryv1.WatchRequest
		want string
	}{
		{&telemetryv1.WatchRequest{PodPattern: "inference-("}, "pod_pattern"},
		// Valid once wrapped in ^(?:...)$, but it would escape the anchors.
		{&telemetryv1.WatchRequest{PodPattern: "x)|(.*"}, "pod_pattern"},
		{&telemetryv1.WatchRequest{PodFilter: selectors("ml", "x)|(?:.*")}, "pod_filter.selectors[0]"},
		{&telemetryv1.WatchRequest{MinPeriod: durationpb.New(-time.Second)}, "min_period"},
		{&telemetryv1.WatchRequest{AppFamilies: []string{"livekit_jitter_us", "not a name"}}, "app_families"},
	} {
		_, err := h.watch(t, tt.req).Recv()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want InvalidArgument naming %s", tt.req, err, tt.want)
		}
	}
}

// With min_period, snapshots in between are merged: messages come at
// most once per period on the sampler's clock, and their samples, put
// together, are every sample published, in order, none twice.
func TestMinPeriodMergesKeepingSamples(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{MinPeriod: durationpb.New(3 * testInterval), PodPattern: "inference-0"})
	first := recv(t, w)
	if first.GetSequence() != 1 {
		t.Fatalf("first message seq %d", first.GetSequence())
	}
	const last = 20
	for seq := uint64(2); seq <= last; seq++ {
		h.store.Publish(snapshot(seq))
		time.Sleep(time.Millisecond) // let the broadcaster see most of them; the result must not depend on it
	}
	got := gpuSamples(first.GetDevices()[0])
	prev := first.GetSequence()
	for prev < 19 { // the last due message: 19 is 3 ticks after 16
		m := recv(t, w)
		if gap := m.GetSequence() - prev; gap < 3 || m.GetSkipped() != gap-1 {
			t.Errorf("message %d after %d: skipped %d; want at least 3 ticks apart and skipped = gap-1", m.GetSequence(), prev, m.GetSkipped())
		}
		got = append(got, gpuSamples(m.GetDevices()[0])...)
		prev = m.GetSequence()
	}
	var want []float64
	for seq := 1; seq <= int(prev); seq++ {
		want = append(want, float64(seq))
	}
	if !slices.Equal(got, want) {
		t.Errorf("samples over the merged messages %v, want every one of %v", got, want)
	}
}

// A subscriber that does not read for a while loses snapshots from its
// buffer (counted) but not their samples: the history supplies them.
func TestSkippedSnapshotsKeepTheirSamples(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{PodPattern: "inference-0"})
	got := gpuSamples(recv(t, w).GetDevices()[0])
	const last = 9 // within the history
	for seq := uint64(2); seq <= last; seq++ {
		h.store.Publish(snapshot(seq))
	}
	for {
		m := recv(t, w)
		got = append(got, gpuSamples(m.GetDevices()[0])...)
		if m.GetSequence() == last {
			break
		}
	}
	if want := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9}; !slices.Equal(got, want) {
		t.Errorf("samples %v, want %v", got, want)
	}
}

// The broadcaster held up (on a loaded node, descheduled) while the
// sampler publishes: a subscriber that reads promptly still gets every
// snapshot, in order, none skipped, from the history (found by
// test/soak: under load every subscriber lost the same sequences).
func TestBroadcasterCatchesUp(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{})
	if m := recv(t, w); m.GetSequence() != 1 {
		t.Fatalf("first message %d", m.GetSequence())
	}
	testutil.Eventually(t, 10*time.Second, "the subscriber", func() bool { return promtest.ToFloat64(h.srv.subscribers) == 1 })
	h.srv.mu.Lock() // the broadcaster wakes, then waits here
	for seq := uint64(2); seq <= 2+DefaultBuffer-1; seq++ {
		h.store.Publish(snapshot(seq))
		time.Sleep(10 * time.Millisecond)
	}
	h.srv.mu.Unlock()
	for seq := uint64(2); seq <= 2+DefaultBuffer-1; seq++ {
		if m := recv(t, w); m.GetSequence() != seq || m.GetSkipped() != 0 {
			t.Fatalf("got %d (skipped %d), want %d: every snapshot", m.GetSequence(), m.GetSkipped(), seq)
		}
	}
	if d := promtest.ToFloat64(h.srv.dropped); d != 0 {
		t.Errorf("%v snapshots counted dropped, want none", d)
	}

	// Held up for more than a buffer's worth: the newest buffer's worth
	// comes, the older ones count as dropped.
	const behind = 3 * DefaultBuffer
	first := uint64(2 + DefaultBuffer)
	h.srv.mu.Lock()
	for seq := first; seq < first+behind; seq++ {
		h.store.Publish(snapshot(seq))
	}
	time.Sleep(20 * time.Millisecond)
	h.srv.mu.Unlock()
	m := recv(t, w)
	for m.GetSequence() < first+behind-DefaultBuffer {
		m = recv(t, w) // the one the broadcaster took before it waited
	}
	for seq := first + behind - DefaultBuffer; ; seq++ {
		if m.GetSequence() != seq {
			t.Fatalf("got %d, want %d", m.GetSequence(), seq)
		}
		if seq == first+behind-1 {
			break
		}
		m = recv(t, w)
	}
	if d := promtest.ToFloat64(h.srv.dropped); d < behind-DefaultBuffer-1 {
		t.Errorf("%v snapshots counted dropped, want at least %d", d, behind-DefaultBuffer-1)
	}
}

// A stalled subscriber (never reads) next to one reading at full rate:
// the fast one gets every snapshot, in order, none skipped; Publish never
// waits; the stalled one's buffer stays bounded while its dropped
// snapshots are counted; and when it goes, its goroutines go too.
func TestStalledSubscriberDelaysNobody(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(bigSnapshot(1))
	fast := h.watch(t, &telemetryv1.WatchRequest{})
	if m := recv(t, fast); m.GetSequence() != 1 {
		t.Fatalf("fast subscriber's first message %d", m.GetSequence())
	}
	before := runtime.NumGoroutine()

	// No dynamic window (BDP), so the stalled stream's flow-control
	// window fills after 64 KiB and the server's Send blocks.
	stalledConn, stalledClient := h.dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := stalledClient.Watch(ctx, &telemetryv1.WatchRequest{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "both subscribers", func() bool { return promtest.ToFloat64(h.srv.subscribers) == 2 })

	const last = 300 // ~20 kB each: far more than the windows hold
	for seq := uint64(2); seq <= last; seq++ {
		done := make(chan struct{})
		go func() { h.store.Publish(bigSnapshot(seq)); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Publish of %d blocked", seq)
		}
		m := recv(t, fast)
		if m.GetSequence() != seq || m.GetSkipped() != 0 {
			t.Fatalf("fast subscriber got %d (skipped %d) after %d was published, want every snapshot", m.GetSequence(), m.GetSkipped(), seq)
		}
	}
	dropped := promtest.ToFloat64(h.srv.dropped)
	if dropped < last/2 {
		t.Errorf("dropped %v snapshots of the stalled subscriber's %d, want most", dropped, last)
	}
	h.srv.mu.Lock()
	for sub := range h.srv.subs {
		if n := len(sub.buf); n > DefaultBuffer {
			t.Errorf("a buffer holds %d snapshots, more than %d", n, DefaultBuffer)
		}
	}
	h.srv.mu.Unlock()

	// The stalled client goes: its handler, its buffer and the
	// connection's goroutines are released.
	cancel()
	stalledConn.Close()
	testutil.Eventually(t, 10*time.Second, "the stalled subscriber to be released", func() bool { return promtest.ToFloat64(h.srv.subscribers) == 1 })
	testutil.Eventually(t, 10*time.Second, "its goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// bigSnapshot carries 120 samples per engine per GPU, as a tick after a
// long pause would: about 20 kB a message.
func bigSnapshot(seq uint64) *telemetry.Snapshot {
	s := snapshot(seq)
	for i := range s.States {
		for e := range s.States[i].NewSamples {
			smp := make([]telemetry.UtilSample, 120)
			for k := range smp {
				smp[k] = telemetry.UtilSample{At: s.Time.Add(time.Duration(k) * time.Millisecond), Value: float64(k)}
			}
			s.States[i].NewSamples[e] = smp
		}
	}
	return s
}

// Close ends every stream cleanly: the client reads EOF, not an error.
func TestCloseEndsStreamsWithEOF(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{})
	recv(t, w)
	h.srv.Close()
	if _, err := w.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("Recv after Close: %v, want io.EOF", err)
	}
	_, err := h.watch(t, &telemetryv1.WatchRequest{}).Recv()
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Watch after Close: %v, want Unavailable", err)
	}
	// GracefulStop returns: no handler is left running.
	done := make(chan struct{})
	go func() { h.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("GracefulStop still waiting 5s after Close")
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{})
	recv(t, w)
	h.store.Publish(snapshot(2))
	recv(t, w)
	// The counter moves once Send has returned, which may be a moment
	// after the client has the message.
	testutil.Eventually(t, 5*time.Second, "both sends counted", func() bool { return promtest.ToFloat64(h.srv.sent) >= 2 })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.srv)
	const want = `
# HELP gpu_agent_stream_subscribers Open Watch streams.
# TYPE gpu_agent_stream_subscribers gauge
gpu_agent_stream_subscribers 1
# HELP gpu_agent_stream_messages_sent_total NodeSnapshot messages sent to Watch subscribers.
# TYPE gpu_agent_stream_messages_sent_total counter
gpu_agent_stream_messages_sent_total 2
`
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "gpu_agent_stream_subscribers", "gpu_agent_stream_messages_sent_total"); err != nil {
		t.Error(err)
	}
	problems, err := promtest.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"gpu_agent_stream_subscribers", "gpu_agent_stream_messages_sent_total", "gpu_agent_stream_dropped_snapshots_total"} {
		if !strings.Contains(string(doc), "`"+n+"`") {
			t.Errorf("metric %s is not documented in docs/metrics.md", n)
		}
	}
}

// Many subscribers reading at once share each snapshot's device messages
// (built once, encoded by every stream concurrently): each still gets
// every sample, once, in order. Under -race this also checks the sharing.
func TestManySubscribersShareMessages(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	const subs, last = 8, 60
	results := make(chan []float64, subs)
	var seen [subs]atomic.Uint64
	for i := range subs {
		w := h.watch(t, &telemetryv1.WatchRequest{PodPattern: "inference-0"})
		go func() {
			var got []float64
			defer func() { results <- got }()
			for {
				m, err := w.Recv()
				if err != nil {
					t.Errorf("Recv: %v", err)
					return
				}
				got = append(got, gpuSamples(m.GetDevices()[0])...)
				seen[i].Store(m.GetSequence())
				if m.GetSequence() == last {
					return
				}
			}
		}()
	}
	testutil.Eventually(t, 10*time.Second, "every subscriber", func() bool { return promtest.ToFloat64(h.srv.subscribers) == subs })
	for seq := uint64(2); seq <= last; seq++ {
		h.store.Publish(snapshot(seq))
		// Every subscriber gets this snapshot from the same item; the next
		// comes once all have it, so the history never runs out.
		testutil.Eventually(t, 10*time.Second, "every subscriber to get the snapshot", func() bool {
			for i := range seen {
				if seen[i].Load() < seq {
					return false
				}
			}
			return true
		})
	}
	var want []float64
	for seq := 1; seq <= last; seq++ {
		want = append(want, float64(seq))
	}
	for range subs {
		if got := <-results; !slices.Equal(got, want) {
			t.Errorf("a subscriber's samples %v, want %v", got, want)
		}
	}
}
