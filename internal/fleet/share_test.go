package fleet

import (
	"errors"
	"math"
	"testing"
	"time"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// shareOf is a Pod message with its own share of a device's SM and
// encoder utilization, as the agent sends it where it maps processes to
// pods.
func shareOf(ns, name string, sm, enc float64) *telemetryv1.Pod {
	return &telemetryv1.Pod{Namespace: ns, Name: name, Container: "c", GpuUtil: &sm, EncUtil: &enc}
}

// evaluate answers kv both ways, from scratch and from a maintained
// aggregate, and fails the test when they differ.
func evaluate(t *testing.T, s *Store, kv ...string) (Result, error) {
	t.Helper()
	q := mustQuery(t, kv...)
	res, err := s.Evaluate(q)
	got, gotErr := s.Answer(q)
	if d := sameAnswer(got, gotErr, res, err); d != "" {
		t.Errorf("%v: %s", kv, d)
	}
	return res, err
}

// Two WebRTC pods time-sharing one T4 are scaled on their own load, not
// both on the GPU's: the GPU's encoder at 80 is 30 and 50 of theirs.
func TestSharedDevicePodsOwnShares(t *testing.T) {
	s, _ := newTestStore(t)
	shared := dev("GPU-T4", 80)
	shared.Pods = []*telemetryv1.Pod{shareOf("media", "webrtc-0", 25, 30), shareOf("media", "webrtc-1", 55, 50)}
	// An inference pod alone on its GPU, from an agent without per-process
	// data: the device's value is its value.
	alone := dev("GPU-A", 20, "media/webrtc-2")
	ingest(t, s, snap("n1", 1, epoch, shared, alone))

	for _, c := range []struct {
		metric, pattern, agg string
		want                 float64
	}{
		{"enc_util", "webrtc-0", "avg", 30},
		{"enc_util", "webrtc-1", "avg", 50},
		{"gpu_util", "webrtc-0", "avg", 25},
		{"gpu_util", "webrtc-1", "max", 55},
		{"enc_util", "webrtc-.*", "avg", (30 + 50 + 20) / 3.0},
		{"enc_util", "webrtc-.*", "max", 50},
		// The shares add up to the device: the sum over pods no longer
		// counts the shared GPU twice (80 + 80 + 20).
		{"enc_util", "webrtc-.*", "sum", 100},
		{"enc_util", "webrtc-[01]", "sum", 80},
		{"gpu_util", "webrtc-.*", "p95", 55},
	} {
		res, err := evaluate(t, s, "metric", c.metric, "namespace", "media", "podPattern", c.pattern, "aggregation", c.agg, "target", "1")
		if err != nil || math.Abs(res.Value-c.want) > 1e-9 {
			t.Errorf("%s %s over %s = %v, %v; want %v", c.agg, c.metric, c.pattern, res, err, c.want)
		}
	}
}

// A share is per field: where the agent sent no share of a metric (no
// per-process source of it), the device's value stands; a share of 0 is
// the pod's own 0, not a missing value.
func TestShareFallsBackPerField(t *testing.T) {
	s, _ := newTestStore(t)
	d := dev("GPU-1", 70)
	idle, busy := 0.0, 40.0
	d.Pods = []*telemetryv1.Pod{
		{Namespace: "default", Name: "idle", EncUtil: &idle}, // no process this tick
		{Namespace: "default", Name: "busy", EncUtil: &busy},
	}
	ingest(t, s, snap("n", 1, epoch, d))
	for _, c := range []struct {
		metric, pod string
		want        float64
	}{
		{"enc_util", "idle", 0},
		{"enc_util", "busy", 40},
		{"gpu_util", "idle", 70}, // no share of SM: the device's
		{"gpu_util", "busy", 70},
	} {
		res, err := evaluate(t, s, "metric", c.metric, "podPattern", c.pod, "target", "1")
		if err != nil || res.Value != c.want || res.Pods != 1 {
			t.Errorf("%s of %s = %v, %v; want %v over 1 pod", c.metric, c.pod, res, err, c.want)
		}
	}
}

// A pod holding two GPUs is at the mean of its values on them: its share
// of the one the agent attributes, the device's value of the other.
func TestShareTwoDevices(t *testing.T) {
	s, _ := newTestStore(t)
	a := dev("GPU-1", 90)
	a.Pods = []*telemetryv1.Pod{shareOf("default", "big", 40, 40), shareOf("default", "small", 50, 50)}
	b := dev("GPU-2", 80, "default/big")
	ingest(t, s, snap("n", 1, epoch, a, b))
	if res, err := evaluate(t, s, "metric", "gpu_util", "podPattern", "big", "target", "1"); err != nil || res.Value != 60 {
		t.Errorf("pod on two GPUs = %v, %v; want (40+80)/2 = 60", res, err)
	}
}

// Two containers of one pod on one device are one pod: utilizations and
// framebuffer add up, encoder fps and latency are means over every
// session; the framebuffer share is a fraction of the device's.
func TestShareContainersMerge(t *testing.T) {
	s, _ := newTestStore(t)
	total, used := uint64(16<<30), uint64(10<<30)
	u1, u2 := 10.0, 15.0
	fb1, fb2 := uint64(2<<30), uint64(2<<30)
	n1, n2 := uint32(1), uint32(3)
	fps1, fps2 := 60.0, 20.0
	lat1, lat2 := 0.002, 0.010
	devFPS, devLat := 99.0, 0.5
	d := &telemetryv1.Device{Uuid: "GPU-1", FbTotalBytes: &total, FbUsedBytes: &used, EncoderFps: &devFPS, EncoderLatencySeconds: &devLat,
		Pods: []*telemetryv1.Pod{
			{Namespace: "default", Name: "sfu", Container: "a", EncUtil: &u1, FbUsedBytes: &fb1, EncoderSessions: &n1, EncoderFps: &fps1, EncoderLatencySeconds: &lat1},
			{Namespace: "default", Name: "sfu", Container: "b", EncUtil: &u2, FbUsedBytes: &fb2, EncoderSessions: &n2, EncoderFps: &fps2, EncoderLatencySeconds: &lat2},
		}}
	ingest(t, s, snap("n", 1, epoch, d))
	for m, want := range map[string]float64{
		"enc_util":        25,
		"fb_used_ratio":   0.25,
		"encoder_fps":     (60 + 3*20) / 4.0,
		"encoder_latency": (0.002 + 3*0.010) / 4,
	} {
		res, err := evaluate(t, s, "metric", m, "podPattern", "sfu", "target", "1", "aggregation", "sum")
		if err != nil || math.Abs(res.Value-want) > 1e-12 || res.Pods != 1 {
			t.Errorf("%s = %v, %v; want %v over 1 pod", m, res, err, want)
		}
	}
}

// A stalled device has no reading, shares included: absent, not stale.
func TestShareOfStalledDevice(t *testing.T) {
	s, _ := newTestStore(t)
	d := dev("GPU-1", 70)
	d.Pods = []*telemetryv1.Pod{shareOf("default", "p", 20, 20)}
	d.Stalled = true
	ingest(t, s, snap("n", 1, epoch, d))
	if _, err := evaluate(t, s, "metric", "gpu_util", "podPattern", "p", "target", "1"); !errors.Is(err, ErrNoReading) {
		t.Errorf("stalled device: err = %v, want ErrNoReading", err)
	}
}

// With a window, a pod with a share is reduced over its own values, one
// per snapshot, not over the device's hardware samples; a pod without
// keeps the device's samples.
func TestShareWindow(t *testing.T) {
	s, _ := newTestStore(t)
	q := mustQuery(t, "metric", "enc_util", "namespace", "media", "podPattern", "webrtc-0", "target", "1", "aggregation", "max", "window", "2s")
	s.Retain(q)
	at := func(d time.Duration) time.Time { return epoch.Add(d) }
	tick := func(seq uint64, t0 time.Duration, devSample, share0, share1 float64) *telemetryv1.NodeSnapshot {
		d := dev("GPU-T4", share0+share1)
		d.Samples = []*telemetryv1.EngineSamples{{Engine: telemetryv1.Engine_ENGINE_ENCODER,
			Samples: []*telemetryv1.Sample{{TimeUnixMicro: at(t0 - 50*time.Millisecond).UnixMicro(), Value: devSample}}}}
		d.Pods = []*telemetryv1.Pod{shareOf("media", "webrtc-0", 0, share0), shareOf("media", "webrtc-1", 0, share1)}
		other := dev("GPU-B", 10, "media/webrtc-2")
		other.Samples = []*telemetryv1.EngineSamples{{Engine: telemetryv1.Engine_ENGINE_ENCODER,
			Samples: []*telemetryv1.Sample{{TimeUnixMicro: at(t0 - 50*time.Millisecond).UnixMicro(), Value: devSample}}}}
		return snap("n", seq, at(t0), d, other)
	}
	// webrtc-0 peaks at 45 at the second tick; the device's spike to 95 is
	// webrtc-1's.
	ingest(t, s, tick(1, 300*time.Millisecond, 40, 20, 20), tick(2, 600*time.Millisecond, 95, 45, 50), tick(3, 900*time.Millisecond, 30, 10, 20))
	for _, c := range []struct {
		pattern, agg string
		want         float64
	}{
		{"webrtc-0", "max", 45},
		{"webrtc-1", "max", 50},
		{"webrtc-0", "avg", 25},
		{"webrtc-0", "sum", 25},    // its mean over the window
		{"webrtc-2", "max", 95},    // no share: the device's hardware samples
		{"webrtc-[01]", "sum", 55}, // 25 + 30
	} {
		res, err := evaluate(t, s, "metric", "enc_util", "namespace", "media", "podPattern", c.pattern, "target", "1", "aggregation", c.agg, "window", "2s")
		if err != nil || math.Abs(res.Value-c.want) > 1e-9 {
			t.Errorf("window %s over %s = %v, %v; want %v", c.agg, c.pattern, res, err, c.want)
		}
	}
	// History is kept of the metrics asked a window of only.
	if h := s.byName["n"].hist["GPU-T4"]; len(h.pods) != 2 {
		t.Errorf("share histories of %d pods, want 2", len(h.pods))
	} else if enc, sm := len(h.pods[0].series[EncUtil]), len(h.pods[0].series[GPUUtil]); enc != 3 || sm != 0 {
		t.Errorf("share history: %d enc_util and %d gpu_util points; want 3 and 0", enc, sm)
	}
	// Three seconds on, the peak has left the window.
	ingest(t, s, tick(4, 3600*time.Millisecond, 30, 12, 18))
	if res, err := evaluate(t, s, "metric", "enc_util", "namespace", "media", "podPattern", "webrtc-0", "target", "1", "aggregation", "max", "window", "2s"); err != nil || res.Value != 12 {
		t.Errorf("window max after the peak left = %v, %v; want 12", res, err)
	}
	// The pod leaves the device: its history goes with it.
	ingest(t, s, snap("n", 5, at(3700*time.Millisecond), dev("GPU-T4", 5, "media/webrtc-1")))
	n := s.byName["n"]
	if h := n.hist["GPU-T4"]; len(h.pods) != 0 {
		t.Errorf("share histories after the pods left or lost their shares: %d, want 0", len(h.pods))
	}
}

// A pod may never look idler than it may be: where the agent reports more
// of a shared device's utilization unexplained by its pods' processes
// than MaxUnattributedLoad (a host process, a PID whose pod is not
// known), every pod of the device reads the device's value of that
// utilization; at or below it, each its own share. Per metric: here the
// SM load is explained, the encoder's is not.
func TestUnattributedLoadDistrustsShares(t *testing.T) {
	for _, c := range []struct {
		name          string
		max           float64 // Options.MaxUnattributedLoad
		unattributed  float64 // of the encoder, percentage points
		wantEnc0      float64
		wantEncSumAll float64
	}{
		{"explained", 0, 10, 30, 80},      // the default, 10: the shares stand
		{"unexplained", 0, 10.5, 90, 180}, // above it: the device's 90 for each pod
		{"off", -1, 60, 30, 80},           // negative: shares always
		{"strict", 5, 6, 90, 180},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{t: epoch}
			s := NewStore(Options{StaleAfter: time.Second, ForgetAfter: time.Minute, MaxWindow: time.Minute, Now: clk.Now, MaxUnattributedLoad: c.max})
			d := dev("GPU-T4", 90)
			sm := 80.0 - 25 - 55
			d.GpuUtil = new(80.0)
			d.UnattributedGpuUtil = &sm
			d.UnattributedEncUtil = &c.unattributed
			d.Pods = []*telemetryv1.Pod{shareOf("media", "webrtc-0", 25, 30), shareOf("media", "webrtc-1", 55, 50)}
			ingest(t, s, snap("n1", 1, epoch, d))
			for _, q := range []struct {
				metric, pattern, agg string
				want                 float64
			}{
				{"enc_util", "webrtc-0", "avg", c.wantEnc0},
				{"enc_util", "webrtc-.*", "sum", c.wantEncSumAll},
				{"gpu_util", "webrtc-0", "avg", 25},
				{"gpu_util", "webrtc-1", "avg", 55},
			} {
				res, err := evaluate(t, s, "metric", q.metric, "namespace", "media", "podPattern", q.pattern, "aggregation", q.agg, "target", "1")
				if err != nil || math.Abs(res.Value-q.want) > 1e-9 {
					t.Errorf("%s %s over %s = %v, %v; want %v", q.agg, q.metric, q.pattern, res, err, q.want)
				}
			}
		})
	}
}
