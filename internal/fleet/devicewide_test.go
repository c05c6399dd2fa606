package fleet

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// gpu is a whole GPU's message with its own figures: temperature (°C),
// power and enforced limit (W), PCIe and NVLink throughput (B/s), held by
// pods "ns/name" with util on every engine.
func gpu(uuid string, util, temp, watts, limit, nvlink float64, pods ...string) *telemetryv1.Device {
	d := dev(uuid, util, pods...)
	memTemp, tx, rx := temp+10, 1e9, 2e9
	d.TemperatureCelsius, d.MemoryTemperatureCelsius = &temp, &memTemp
	d.PowerWatts, d.EnforcedPowerLimitWatts = &watts, &limit
	d.PcieTxBytesPerSecond, d.PcieRxBytesPerSecond, d.NvlinkBytesPerSecond = &tx, &rx, &nvlink
	return d
}

// The GPU's own figures are read as the existing device-wide values are:
// a pod's value is its GPU's (no pod has a share of a temperature), the
// mean over the GPUs it holds; every pod of a shared GPU reads the GPU's
// value, per-process shares of its utilization or not; a pod on a MIG
// instance has none (the instance's message carries none: they are its
// GPU's).
func TestDeviceWideMetrics(t *testing.T) {
	s, _ := newTestStore(t)
	shared := gpu("GPU-T4", 80, 66, 50, 70, 0)
	shared.Pods = []*telemetryv1.Pod{shareOf("default", "webrtc-0", 25, 30), shareOf("default", "webrtc-1", 55, 50)}
	mig := dev("MIG-1", 0, "default/small-0")
	mig.ParentUuid = "GPU-A100"
	ingest(t, s,
		snap("n1", 1, epoch,
			gpu("GPU-1", 40, 60, 35, 70, 4e9, "default/inference-0"),
			gpu("GPU-2", 90, 80, 70, 70, 6e9, "default/inference-1"),
			shared, mig),
		snap("n2", 1, epoch,
			// A pod with two GPUs is at their mean.
			gpu("GPU-3", 50, 50, 20, 40, 1e9, "default/inference-2"),
			gpu("GPU-4", 50, 70, 40, 40, 3e9, "default/inference-2"),
			// A GPU that answered no power limit: no ratio, the rest is there.
			func() *telemetryv1.Device {
				d := gpu("GPU-5", 10, 45, 30, 70, 0, "default/inference-3")
				d.EnforcedPowerLimitWatts = nil
				return d
			}()),
	)
	for _, c := range []struct {
		metric, pattern, agg string
		want                 float64
		pods                 int
	}{
		// Pods 60, 80, (50+70)/2, 45.
		{"temperature", "inference-.*", "avg", (60 + 80 + 60 + 45) / 4.0, 4},
		{"temperature", "inference-.*", "max", 80, 4},
		{"memory_temperature", "inference-.*", "max", 90, 4},
		{"power", "inference-.*", "sum", 35 + 70 + 30 + 30, 4},
		// 0.5, 1, (0.5+1)/2; GPU-5 has no limit: not counted, not 0.
		{"power_ratio", "inference-.*", "avg", (0.5 + 1 + 0.75) / 3, 3},
		{"power_ratio", "inference-.*", "max", 1, 3},
		{"pcie_tx", "inference-.*", "sum", 4e9, 4},
		{"pcie_rx", "inference-.*", "avg", 2e9, 4},
		{"nvlink", "inference-.*", "avg", (4e9 + 6e9 + 2e9 + 0) / 4, 4},
		// Both pods of the shared T4 read its temperature and power, their
		// own utilization shares notwithstanding; a sum over them counts
		// the GPU once per pod, as with any device value without shares.
		{"temperature", "webrtc-.*", "avg", 66, 2},
		{"power", "webrtc-.*", "sum", 100, 2},
		{"power_ratio", "webrtc-0", "avg", 50.0 / 70, 1},
		{"enc_util", "webrtc-.*", "sum", 80, 2}, // the shares, as before
	} {
		res, err := evaluate(t, s, "metric", c.metric, "podPattern", c.pattern, "aggregation", c.agg, "target", "1")
		if err != nil || math.Abs(res.Value-c.want) > 1e-9*math.Max(1, c.want) || res.Pods != c.pods {
			t.Errorf("%s %s over %s = %v, %v; want %v over %d pods", c.agg, c.metric, c.pattern, res, err, c.want, c.pods)
		}
	}
	// The MIG instance's pod: no temperature of its own, not a 0.
	if _, err := evaluate(t, s, "metric", "temperature", "podPattern", "small-.*", "target", "1"); !errors.Is(err, ErrNoReading) {
		t.Errorf("temperature of a pod on a MIG instance: %v, want ErrNoReading", err)
	}
	// A stalled GPU has no reading: its pod drops out, it does not read 0.
	st := gpu("GPU-1", 40, 60, 35, 70, 4e9, "default/inference-0")
	st.Stalled = true
	ingest(t, s, snap("n1", 2, epoch.Add(250*time.Millisecond), st))
	if res, err := evaluate(t, s, "metric", "temperature", "podPattern", "inference-0", "target", "1"); !errors.Is(err, ErrNoReading) {
		t.Errorf("temperature of a stalled GPU's pod: %v, %v; want ErrNoReading", res, err)
	}
}

// DCGM's profiling ratios are the GPU's own figures too: every pod holding
// the GPU reads its value; a GPU without one (no DCGM, DCGM down) is left
// out, not read as 0.
func TestProfilingMetrics(t *testing.T) {
	s, _ := newTestStore(t)
	withProf := func(d *telemetryv1.Device, gr, sm, tensor, dram float64) *telemetryv1.Device {
		d.GrEngineActiveRatio, d.SmActiveRatio, d.TensorActiveRatio, d.DramActiveRatio = &gr, &sm, &tensor, &dram
		return d
	}
	shared := withProf(gpu("GPU-T4", 80, 66, 50, 70, 0), 0.9, 0.8, 0.1, 0.3)
	shared.Pods = []*telemetryv1.Pod{shareOf("default", "webrtc-0", 25, 30), shareOf("default", "webrtc-1", 55, 50)}
	ingest(t, s, snap("n1", 1, epoch,
		withProf(gpu("GPU-1", 40, 60, 35, 70, 0, "default/inference-0"), 0.5, 0.4, 0.25, 0.2),
		gpu("GPU-2", 90, 80, 70, 70, 0, "default/inference-1"), // no DCGM values
		shared))
	for _, c := range []struct {
		metric, pattern, agg string
		want                 float64
		pods                 int
	}{
		{"gr_engine_active", "inference-.*", "avg", 0.5, 1},
		{"sm_active", "inference-.*", "max", 0.4, 1},
		{"tensor_active", "inference-.*", "avg", 0.25, 1},
		{"dram_active", "inference-.*", "avg", 0.2, 1},
		{"gr_engine_active", "webrtc-.*", "avg", 0.9, 2},
		{"tensor_active", "webrtc-.*", "max", 0.1, 2},
	} {
		res, err := evaluate(t, s, "metric", c.metric, "podPattern", c.pattern, "aggregation", c.agg, "target", "1")
		if err != nil || math.Abs(res.Value-c.want) > 1e-9 || res.Pods != c.pods {
			t.Errorf("%s %s over %s = %v, %v; want %v over %d pods", c.agg, c.metric, c.pattern, res, err, c.want, c.pods)
		}
	}
	if _, err := evaluate(t, s, "metric", "gr_engine_active", "podPattern", "inference-1", "target", "1"); !errors.Is(err, ErrNoReading) {
		t.Errorf("gr_engine_active of a GPU without DCGM values: %v, want ErrNoReading", err)
	}
}

// A window over a device-wide metric reduces the snapshots' values in it;
// their history is kept only once a window of that metric is asked for
// (a point per device per snapshot, for metrics few triggers name).
func TestDeviceWideWindow(t *testing.T) {
	s, _ := newTestStore(t)
	util := mustQuery(t, "metric", "gpu_util", "target", "1", "window", "5s")
	s.Retain(util)
	at := func(ms int) time.Time { return epoch.Add(time.Duration(ms) * time.Millisecond) }
	ingest(t, s, snap("n", 1, at(0), gpu("GPU-1", 40, 60, 35, 70, 0, "default/a")))
	if v := s.nodes.Load(); len((*v)[0].view.Load().devices[0].series[Temperature]) != 0 {
		t.Error("temperature history kept with no window of it asked for")
	}
	temp := mustQuery(t, "metric", "temperature", "aggregation", "max", "target", "1", "window", "5s")
	s.Retain(temp)
	for i, c := range []float64{61, 83, 70} {
		ingest(t, s, snap("n", uint64(2+i), at(250*(1+i)), gpu("GPU-1", 40, c, 35, 70, 0, "default/a")))
	}
	res, err := s.Evaluate(temp)
	if err != nil || res.Value != 83 {
		t.Errorf("max temperature over 5 s = %v, %v; want the 83 between the latest values", res, err)
	}
	if v := s.nodes.Load(); len((*v)[0].view.Load().devices[0].series[Temperature]) != 3 {
		t.Errorf("temperature history: %d points, want the 3 since the window was asked for", len((*v)[0].view.Load().devices[0].series[Temperature]))
	}
}

// The new metrics parse, by name, with every aggregation.
func TestParseDeviceWideMetrics(t *testing.T) {
	for _, name := range []string{"temperature", "memory_temperature", "power", "power_ratio", "pcie_tx", "pcie_rx", "nvlink",
		"gr_engine_active", "sm_active", "tensor_active", "dram_active"} {
		q, err := ParseMetadata(md("metric", name, "target", "1", "aggregation", "p95"), "default", time.Minute)
		if err != nil || q.Metric.String() != name || !deviceWide.has(q.Metric) {
			t.Errorf("metric %s: %v, %v", name, q, err)
		}
	}
	for _, name := range []string{"pstate", "clocks_event_reasons", "ecc_dbe_volatile", "fan_speed"} {
		if _, err := ParseMetadata(md("metric", name, "target", "1"), "default", time.Minute); err == nil {
			t.Errorf("metric %s accepted: not one to scale on", name)
		}
	}
}

// Every trigger metric is named in docs/stream-and-scaler.md's `metric`
// row, and the row names no other.
func TestTriggerMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "stream-and-scaler.md"))
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(l, "| `metric` |") {
			row = l
		}
	}
	if row == "" {
		t.Fatal("no `metric` row in docs/stream-and-scaler.md's trigger table")
	}
	named := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(row, -1) {
		named[m[1]] = true
	}
	delete(named, "metric")
	for _, n := range metricNames {
		if !named[n] {
			t.Errorf("metric %s is not documented in the `metric` row", n)
		}
		delete(named, n)
	}
	for n := range named {
		t.Errorf("the `metric` row names %s, which is no metric", n)
	}
}
