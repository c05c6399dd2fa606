package stream

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/stream/watchreq"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

func selectors(kv ...string) *telemetryv1.PodFilter {
	f := &telemetryv1.PodFilter{}
	for i := 0; i < len(kv); i += 2 {
		f.Selectors = append(f.Selectors, &telemetryv1.PodSelector{Namespace: kv[i], PodPattern: kv[i+1]})
	}
	return f
}

// pod_filter's selectors are OR-ed, each a namespace and a whole-name
// pattern (either empty: any); when set they replace namespace and
// pod_pattern, and set with none nothing passes.
func TestPodFilterSelectors(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	for _, tt := range []struct {
		name string
		req  *telemetryv1.WatchRequest
		want []string
	}{
		{"two namespaces", &telemetryv1.WatchRequest{PodFilter: selectors("media", "", "ml", "inference-.*")}, []string{uuid0, uuid1}},
		{"two patterns of one namespace", &telemetryv1.WatchRequest{PodFilter: selectors("ml", "inference-.*", "ml", "small")}, []string{uuid0, migA}},
		{"any namespace", &telemetryv1.WatchRequest{PodFilter: selectors("", "sfu-1|trainer")}, []string{uuid1, uuid4}},
		{"patterns are whole names", &telemetryv1.WatchRequest{PodFilter: selectors("ml", "inference", "media", "sfu")}, nil},
		{"any pod of a namespace wins over its patterns", &telemetryv1.WatchRequest{PodFilter: selectors("ml", "nothing", "ml", "")}, []string{uuid0, migA, uuid4}},
		{"replaces namespace and pod_pattern", &telemetryv1.WatchRequest{Namespace: "ml", PodPattern: "inference-0", PodFilter: selectors("media", "sfu-0")}, []string{uuid1}},
		{"set and empty: nothing, unattributed neither", &telemetryv1.WatchRequest{PodFilter: &telemetryv1.PodFilter{}, IncludeUnattributed: true}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := uuids(recv(t, h.watch(t, tt.req))); !slices.Equal(got, tt.want) {
				t.Errorf("devices %v, want %v", got, tt.want)
			}
		})
	}
	_, err := h.watch(t, &telemetryv1.WatchRequest{PodFilter: selectors("ml", "ok", "media", "sfu-(")}).Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "pod_filter.selectors[1]") {
		t.Errorf("a bad selector: %v, want InvalidArgument naming it", err)
	}
	_, err = h.watch(t, &telemetryv1.WatchRequest{Heartbeat: durationpb.New(-time.Second)}).Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "heartbeat") {
		t.Errorf("a negative heartbeat: %v, want InvalidArgument naming it", err)
	}
}

// App targets pass the selectors as devices do.
func TestPodFilterApps(t *testing.T) {
	apps := app.NewBoard()
	h := newHarness(t, Options{Apps: apps})
	apps.Publish([]*app.Scrape{sfuScrape("sfu-0", epoch, 10), sfuScrape("other-0", epoch, 4), sfuScrape("sfu-9", epoch, 4)})
	h.store.Publish(snapshot(1))
	m := recv(t, h.watch(t, &telemetryv1.WatchRequest{PodFilter: selectors("ml", "other-0", "media", "sfu-0|other-0"),
		AppFamilies: []string{"livekit_room_total"}}))
	var got []string
	for _, a := range m.GetApps() {
		got = append(got, a.GetPod())
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"other-0", "sfu-0"}) {
		t.Errorf("app targets %v, want sfu-0 and other-0", got)
	}
}

// device_fields sends the identity, the pods' names and the state of
// every device, and of its readings only the named fields; samples only
// of the named utilizations' engines; an unknown name is ignored.
func TestDeviceFieldMask(t *testing.T) {
	h := newHarness(t, Options{}, newTestPods())
	h.store.Publish(snapshot(1))
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

	m := recv(t, h.watch(t, &telemetryv1.WatchRequest{DeviceFields: mask("gpu_util", "samples", "a_field_of_the_future")}))
	d := device(m, uuid0)
	if d.GetModelName() != "Tesla T4" || d.GetPciBusId() == "" || !slices.Equal(podNames(d), []string{"ml/inference-0/server"}) {
		t.Errorf("identity or pods lost: %v", d)
	}
	if d.GpuUtil == nil || d.EncUtil != nil || d.FbUsedBytes != nil || d.EncoderSessions != nil || d.EncoderLatencySeconds != nil {
		t.Errorf("want gpu_util alone: %v", d)
	}
	if got := gpuSamples(d); !slices.Equal(got, []float64{1}) {
		t.Errorf("GPU engine samples %v, want [1]", got)
	}
	if lost := device(m, uuid4); !lost.GetLost() || lost.GpuUtil != nil {
		t.Errorf("the lost GPU: %v", lost)
	}
	if mig := device(m, migA); mig.GetParentUuid() != uuid3 || mig.GetMigProfile() != "1g.5gb" || mig.GetGpuInstanceId() != 7 {
		t.Errorf("MIG identity lost: %v", mig)
	}

	m = recv(t, h.watch(t, &telemetryv1.WatchRequest{DeviceFields: mask("enc_util", "samples")}))
	if d := device(m, uuid0); d.EncUtil == nil || d.GpuUtil != nil || len(d.GetSamples()) != 0 {
		t.Errorf("enc_util with samples: %v; want no GPU-engine samples", d)
	}
	m = recv(t, h.watch(t, &telemetryv1.WatchRequest{DeviceFields: mask()}))
	if d := device(m, uuid0); d.GetUuid() != uuid0 || d.GpuUtil != nil || d.EncUtil != nil || len(d.GetSamples()) != 0 || len(d.GetPods()) != 1 {
		t.Errorf("an empty mask: %v; want identity and pods only", d)
	}
	// Unset: every field, as before.
	if d := device(recv(t, h.watch(t, &telemetryv1.WatchRequest{})), uuid0); d.GpuUtil == nil || d.EncUtil == nil || d.FbUsedBytes == nil {
		t.Errorf("no mask: %v", d)
	}
}

// A pod's own share of a field follows the device field of that name;
// the shared message it is projected from is left whole.
func TestDeviceFieldMaskPodShares(t *testing.T) {
	snap := snapshot(1)
	st := &snap.States[1]
	st.ProcessSupport = telemetry.AllProcessData
	st.Processes = []telemetry.ProcessSample{
		{PID: 10, Has: st.ProcessSupport, SMUtil: 4, EncUtil: 20,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.003}}},
	}
	pp := &attribution.ProcessPods{Seq: 1, Pods: map[uint32]attribution.Pod{10: {Namespace: "media", Name: "sfu-0", Container: "sfu"}}}
	v := attribution.Attribute(snap, newTestPods().a.DevicePods(), pp)
	full := deviceMessage(&v.Devices[1], []*telemetry.Snapshot{snap})
	fm, err := watchreq.NewFieldMask([]string{"enc_util", "encoder_latency_seconds", "unattributed_enc_util"})
	if err != nil {
		t.Fatal(err)
	}
	m := fm.Project(full)
	p := m.GetPods()[0]
	if p.GetName() != "sfu-0" || p.GetContainer() != "sfu" || p.GetEncUtil() != 20 || p.GetEncoderLatencyMaxSeconds() != 0.003 || p.EncoderLatencySeconds == nil {
		t.Errorf("sfu-0's shares of the named fields: %v", p)
	}
	if p.GpuUtil != nil || p.EncoderFps != nil || p.FbUsedBytes != nil {
		t.Errorf("sfu-0 has shares of fields not named: %v", p)
	}
	if m.UnattributedEncUtil == nil || m.UnattributedGpuUtil != nil {
		t.Errorf("unattributed: enc %v, gpu %v", m.UnattributedEncUtil, m.UnattributedGpuUtil)
	}
	if full.GetPods()[0].GpuUtil == nil || full.GpuUtil == nil {
		t.Error("projecting changed the shared message")
	}
}

// swapPods is a pod source the test changes between ticks.
type swapPods struct{ p atomic.Pointer[testPods] }

func (s *swapPods) DevicePods() *attribution.DevicePods { return s.p.Load().DevicePods() }
func (s *swapPods) Stale() bool                         { return false }

// With a heartbeat, a subscriber that nothing passes gets a message with
// no devices once per heartbeat on the sampler's clock, not one per
// snapshot; a device that starts passing is sent at once, and the tick it
// stops, a message without it at once. Each message says when the next
// comes at the latest.
func TestHeartbeat(t *testing.T) {
	none := testPods{a: newTestPods().a}
	pods := &swapPods{}
	pods.p.Store(&testPods{a: podresourcesWithout("inference-0")})
	h := newHarness(t, Options{}, pods)
	h.store.Publish(snapshot(1))
	const beat = 3 * testInterval
	w := h.watch(t, &telemetryv1.WatchRequest{PodFilter: selectors("ml", "inference-0"), Heartbeat: durationpb.New(beat)})
	m := recv(t, w)
	if m.GetSequence() != 1 || len(m.GetDevices()) != 0 || m.GetPeriod().AsDuration() != beat {
		t.Fatalf("first message: seq %d, %d devices, period %v; want 1, none, the heartbeat", m.GetSequence(), len(m.GetDevices()), m.GetPeriod().AsDuration())
	}
	for seq := uint64(2); seq <= 7; seq++ {
		h.store.Publish(snapshot(seq))
	}
	prev := uint64(1)
	for prev < 4 { // 7 is the newest and never dropped; some message after 1 comes by then
		m = recv(t, w)
		if m.GetSequence()-prev < 3 || len(m.GetDevices()) != 0 || m.GetPeriod().AsDuration() != beat {
			t.Fatalf("heartbeat %d after %d: %d devices, period %v; want 3 ticks apart, none, the heartbeat",
				m.GetSequence(), prev, len(m.GetDevices()), m.GetPeriod().AsDuration())
		}
		prev = m.GetSequence()
	}
	// inference-0 comes: sent at once, whatever the heartbeat.
	pods.p.Store(&none)
	h.store.Publish(snapshot(8))
	for m = recv(t, w); m.GetSequence() < 8; m = recv(t, w) {
	}
	if m.GetSequence() != 8 || !slices.Equal(uuids(m), []string{uuid0}) || m.GetPeriod().AsDuration() != testInterval {
		t.Fatalf("tick 8: seq %d, devices %v, period %v; want inference-0's GPU at once, the interval", m.GetSequence(), uuids(m), m.GetPeriod().AsDuration())
	}
	// It goes: the next tick says so at once, then heartbeats again.
	pods.p.Store(&testPods{a: podresourcesWithout("inference-0")})
	h.store.Publish(snapshot(9))
	if m = recv(t, w); m.GetSequence() != 9 || len(m.GetDevices()) != 0 || m.GetPeriod().AsDuration() != beat {
		t.Fatalf("tick 9: seq %d, %d devices, period %v", m.GetSequence(), len(m.GetDevices()), m.GetPeriod().AsDuration())
	}
	for seq := uint64(10); seq <= 12; seq++ {
		h.store.Publish(snapshot(seq))
	}
	if m = recv(t, w); m.GetSequence() != 12 || m.GetSkipped() != 2 {
		t.Fatalf("after tick 9: seq %d skipped %d; want the heartbeat at 12, skipping 10 and 11", m.GetSequence(), m.GetSkipped())
	}
}

// The heartbeat is never shorter than the data period nor longer than
// MaxHeartbeat.
func TestHeartbeatBounds(t *testing.T) {
	for _, tt := range []struct{ minPeriod, heartbeat, want time.Duration }{
		{0, time.Millisecond, testInterval},
		{time.Second, 500 * time.Millisecond, time.Second},
		{0, time.Hour, MaxHeartbeat},
		{0, 0, 0},
	} {
		f := &watchreq.Filter{MinPeriod: tt.minPeriod, Heartbeat: tt.heartbeat}
		f.Settle(testInterval)
		if f.Heartbeat != tt.want {
			t.Errorf("min_period %s, heartbeat %s: %s, want %s", tt.minPeriod, tt.heartbeat, f.Heartbeat, tt.want)
		}
	}
}
