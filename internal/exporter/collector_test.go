package exporter

import (
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	agenttest "github.com/gpu-telemetry/agent/internal/testutil"
)

type snapshots struct{ snap *telemetry.Snapshot }

func (s snapshots) Latest() *telemetry.Snapshot { return s.snap }

// pods answers from a fixed kubelet List response, through the real
// assignment builder and resolver.
type pods struct {
	a  *podresources.Assignments
	st podresources.Status
}

func (p pods) Assignments() *podresources.Assignments { return p.a }
func (p pods) Status() podresources.Status            { return p.st }
func (p pods) DevicePods() *attribution.DevicePods    { return p.a.DevicePods() }
func (p pods) Stale() bool                            { return p.st.Stale }

const (
	uuid0 = "GPU-00000000-0000-0000-0000-000000000000"
	uuid1 = "GPU-11111111-1111-1111-1111-111111111111"
	uuid2 = "GPU-22222222-2222-2222-2222-222222222222"
)

func reading(kv map[telemetry.Field]float64) telemetry.Reading {
	var r telemetry.Reading
	for f, v := range kv {
		r.Set(f, v)
	}
	return r
}

// testSnapshot: GPU 0 whole, GPU 1 time-sliced between two pods, GPU 2
// MIG-enabled with one instance held by a pod.
func testSnapshot() *telemetry.Snapshot {
	devs := []telemetry.Device{
		{Index: 0, UUID: uuid0, Name: "Tesla T4", PCIBusID: "00000000:3B:00.0", Minor: 0},
		{Index: 1, UUID: uuid1, Name: "Tesla T4", PCIBusID: "00000000:3C:00.0", Minor: 1},
		{Index: 2, UUID: uuid2, Name: "NVIDIA A100-SXM4-40GB", PCIBusID: "00000000:3D:00.0", Minor: 2, MIGEnabled: true,
			MIG: []telemetry.MIGDevice{{UUID: "MIG-aaaa", GI: 7, CI: 0, Profile: "1g.5gb"}}},
	}
	full := map[telemetry.Field]float64{
		telemetry.GPUUtil: 87, telemetry.FBUsed: 3 << 30, telemetry.Power: 42.5, telemetry.Energy: 1000,
		telemetry.EncSessions: 4, telemetry.EncLatency: 0.0025,
	}
	states := []telemetry.DeviceState{
		{Reading: reading(full), Supported: telemetry.AllFields},
		{Reading: reading(map[telemetry.Field]float64{telemetry.GPUUtil: 12, telemetry.Power: 30}), Supported: telemetry.AllFields.Without(telemetry.Energy)},
		{Reading: reading(map[telemetry.Field]float64{telemetry.Power: 90}), MIG: []telemetry.Reading{reading(map[telemetry.Field]float64{telemetry.FBUsed: 1 << 30})}},
	}
	states[0].Windows[telemetry.EngineGPU] = telemetry.Window{Count: 90, Max: 100, Mean: 50}
	// The slow fields, on the A100 (GPU 2): HBM, NVLink, row remapping.
	for f, v := range map[telemetry.Field]float64{telemetry.MemoryTemp: 41, telemetry.PCIeReplay: 7,
		telemetry.RemappedRowsCorr: 3, telemetry.RemappedRowsUnc: 1, telemetry.RowRemapFailure: 0,
		telemetry.NVLinkBandwidth: 123456789, telemetry.VGPULicense: 1} {
		states[2].Set(f, v)
	}
	states[0].XID = &telemetry.XIDCounts{Last: 79, Counts: map[uint64]uint64{31: 2, 79: 1}}
	return &telemetry.Snapshot{Seq: 5, Time: time.Now(), Devices: devs, States: states, Window: 15 * time.Second, Ticks: 5}
}

func testPods(t *testing.T) pods {
	t.Helper()
	r := podresources.NewResolver([]podresources.GPU{
		{UUID: uuid0, Minor: 0}, {UUID: uuid1, Minor: 1},
		{UUID: uuid2, Minor: 2, MIG: []podresources.MIGDevice{{UUID: "MIG-aaaa", GI: 7, CI: 0}}},
	})
	resp := listResponse(
		pod("ml", "inference-0", "server", "nvidia.com/gpu", uuid0),
		pod("media", "sfu-0", "sfu", "nvidia.com/gpu.shared", uuid1+"::0"),
		pod("media", "sfu-1", "sfu", "nvidia.com/gpu.shared", uuid1+"::1"),
		pod("ml", "small", "worker", "nvidia.com/mig-1g.5gb", "MIG-aaaa"),
	)
	return pods{a: podresources.BuildAssignments(resp, r), st: podresources.Status{Up: true, Refreshes: 3, LastSuccess: time.Unix(1700000000, 0)}}
}

func newTestCollector(t *testing.T, snap *telemetry.Snapshot) *Collector {
	return NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), nil), Options{Hostname: "node-a", Interval: 250 * time.Millisecond, Build: BuildInfo{Version: "test", Revision: "abc"}, DriverVersion: "550.54.15"})
}

func TestDCGMMetricsWithPodLabels(t *testing.T) {
	c := newTestCollector(t, testSnapshot())
	const want = `
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0"} 12
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 87
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",container="sfu",device="nvidia1",gpu="1",modelName="Tesla T4",namespace="media",pci_bus_id="00000000:3C:00.0",pod="sfu-0"} 12
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",container="sfu",device="nvidia1",gpu="1",modelName="Tesla T4",namespace="media",pci_bus_id="00000000:3C:00.0",pod="sfu-1"} 12
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{DCGM_FI_DRIVER_VERSION="550.54.15",GPU_I_ID="7",GPU_I_PROFILE="1g.5gb",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",container="worker",device="nvidia2",gpu="2",modelName="NVIDIA A100-SXM4-40GB",namespace="ml",pci_bus_id="00000000:3D:00.0",pod="small"} 1024
DCGM_FI_DEV_FB_USED{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 3072
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 42.5
DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0"} 30
DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",device="nvidia2",gpu="2",modelName="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:3D:00.0"} 90
# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.
# TYPE DCGM_FI_DEV_XID_ERRORS gauge
DCGM_FI_DEV_XID_ERRORS{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",err_code="79",err_msg="GPU has fallen off the bus",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 79
DCGM_FI_DEV_XID_ERRORS{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",device="nvidia1",err_code="0",err_msg="No Error",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0"} 0
DCGM_FI_DEV_XID_ERRORS{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",device="nvidia2",err_code="0",err_msg="No Error",gpu="2",modelName="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:3D:00.0"} 0
# HELP gpu_agent_xid_errors_total XID critical errors seen since the agent started, by XID.
# TYPE gpu_agent_xid_errors_total counter
gpu_agent_xid_errors_total{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0",xid="31"} 2
gpu_agent_xid_errors_total{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0",xid="79"} 1
# HELP gpu_agent_utilization_window_max_ratio Highest hardware utilization sample of the engine within the window (gpu_agent_utilization_window_seconds).
# TYPE gpu_agent_utilization_window_max_ratio gauge
gpu_agent_utilization_window_max_ratio{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",engine="gpu",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 1
# HELP gpu_agent_encoder_latency_seconds Average encode latency over the active encoder sessions.
# TYPE gpu_agent_encoder_latency_seconds gauge
gpu_agent_encoder_latency_seconds{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0"} 0.0025
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want),
		"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_XID_ERRORS",
		"gpu_agent_xid_errors_total", "gpu_agent_utilization_window_max_ratio", "gpu_agent_encoder_latency_seconds"); err != nil {
		t.Error(err)
	}
}

func TestUnsupportedAndLostAreLeftOut(t *testing.T) {
	snap := testSnapshot()
	snap.States[0].Lost = true
	c := newTestCollector(t, snap)
	const want = `
# HELP gpu_agent_device_up 1 while the GPU answers NVML, 0 while NVML reports it lost or the driver unavailable.
# TYPE gpu_agent_device_up gauge
gpu_agent_device_up{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0"} 0
gpu_agent_device_up{UUID="GPU-11111111-1111-1111-1111-111111111111",gpu="1"} 1
gpu_agent_device_up{UUID="GPU-22222222-2222-2222-2222-222222222222",gpu="2"} 1
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
`
	// GPU 0 is lost (its energy reading must not be served as current)
	// and GPU 1 does not support energy: no energy series at all.
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "gpu_agent_device_up", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"); err != nil {
		t.Error(err)
	}
}

// While NVML answers that the driver is unavailable, every GPU is lost
// and so reported, with no device series; the re-initialisations are
// counted.
func TestNVMLDownIsReported(t *testing.T) {
	snap := testSnapshot()
	snap.NVMLDown, snap.NVMLReinits = true, 2
	for i := range snap.States {
		snap.States[i].Lost = true
	}
	c := newTestCollector(t, snap)
	const want = `
# HELP gpu_agent_device_up 1 while the GPU answers NVML, 0 while NVML reports it lost or the driver unavailable.
# TYPE gpu_agent_device_up gauge
gpu_agent_device_up{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0"} 0
gpu_agent_device_up{UUID="GPU-11111111-1111-1111-1111-111111111111",gpu="1"} 0
gpu_agent_device_up{UUID="GPU-22222222-2222-2222-2222-222222222222",gpu="2"} 0
# HELP gpu_agent_nvml_up 1 while NVML answers; 0 while it answers that the driver is unavailable and the agent initialises it again (every GPU is then lost).
# TYPE gpu_agent_nvml_up gauge
gpu_agent_nvml_up 0
# HELP gpu_agent_nvml_reinits_total Times NVML was shut down and initialised again after the driver went away and came back.
# TYPE gpu_agent_nvml_reinits_total counter
gpu_agent_nvml_reinits_total 2
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want),
		"gpu_agent_device_up", "gpu_agent_nvml_up", "gpu_agent_nvml_reinits_total", "DCGM_FI_DEV_GPU_UTIL"); err != nil {
		t.Error(err)
	}
}

// A stalled GPU (a read that has not returned) is flagged, and its
// device series are absent rather than stale; the others are unaffected.
func TestStalledIsFlaggedAndLeftOut(t *testing.T) {
	snap := testSnapshot()
	snap.States[1].Stalled = true
	snap.Rate = 6.25
	c := newTestCollector(t, snap)
	const want = `
# HELP gpu_agent_device_stalled 1 while a read of the GPU has not returned for more than 2 sampling intervals; its device series are absent meanwhile.
# TYPE gpu_agent_device_stalled gauge
gpu_agent_device_stalled{UUID="GPU-00000000-0000-0000-0000-000000000000",gpu="0"} 0
gpu_agent_device_stalled{UUID="GPU-11111111-1111-1111-1111-111111111111",gpu="1"} 1
gpu_agent_device_stalled{UUID="GPU-22222222-2222-2222-2222-222222222222",gpu="2"} 0
# HELP gpu_agent_sample_rate_hertz Achieved sampling rate over the latest ticks; below 1/gpu_agent_sampling_interval_seconds when ticks are missed.
# TYPE gpu_agent_sample_rate_hertz gauge
gpu_agent_sample_rate_hertz 6.25
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "gpu_agent_device_stalled", "gpu_agent_sample_rate_hertz"); err != nil {
		t.Error(err)
	}
	var b strings.Builder
	if err := c.WriteDevices(&b, c.views.Latest(), false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "GPU-11111111") {
		t.Errorf("stalled GPU's device series served:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "GPU-00000000") {
		t.Error("healthy GPU's device series missing")
	}
}

func TestNoPodsMeansNoPodLabels(t *testing.T) {
	c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, nil, nil), Options{Hostname: "node-a", Interval: time.Second, DriverVersion: "550.54.15"})
	const want = `
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",device="nvidia0",gpu="0",modelName="Tesla T4",pci_bus_id="00000000:3B:00.0"} 87
DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0"} 12
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "DCGM_FI_DEV_GPU_UTIL"); err != nil {
		t.Error(err)
	}
}

// The kubelet client's own metrics (podresources.NewMetrics, registered
// beside the exporter) say the pod map is stale, and the exporter still
// serves its pods.
func TestKubeletStatus(t *testing.T) {
	p := testPods(t)
	p.st = podresources.Status{Up: false, Stale: true, Failures: 2, Refreshes: 3, LastSuccess: time.Unix(1700000000, 0)}
	c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, p, nil), Options{Hostname: "n", Interval: time.Second})
	const want = `
# HELP gpu_agent_kubelet_up 1 if the last pod-resources List call succeeded.
# TYPE gpu_agent_kubelet_up gauge
gpu_agent_kubelet_up 0
# HELP gpu_agent_kubelet_pod_map_stale 1 if pod labels come from the last good kubelet answer because the latest call failed.
# TYPE gpu_agent_kubelet_pod_map_stale gauge
gpu_agent_kubelet_pod_map_stale 1
# HELP gpu_agent_kubelet_last_success_timestamp_seconds When pod-resources List last succeeded, as a Unix time.
# TYPE gpu_agent_kubelet_last_success_timestamp_seconds gauge
gpu_agent_kubelet_last_success_timestamp_seconds 1.7e+09
`
	if err := testutil.CollectAndCompare(podresources.NewMetrics(p), strings.NewReader(want),
		"gpu_agent_kubelet_up", "gpu_agent_kubelet_pod_map_stale", "gpu_agent_kubelet_last_success_timestamp_seconds"); err != nil {
		t.Error(err)
	}
	// Stale, the last good pod labels are still served: one series per
	// pod, and the time-sliced GPU's device-level one.
	if n := testutil.CollectAndCount(c.Latest(), "DCGM_FI_DEV_GPU_UTIL"); n != 4 {
		t.Errorf("%d GPU_UTIL series with a stale pod map, want 4 (one per pod, one for the shared GPU)", n)
	}
}

// TestKubeletDownPastMaxStale runs the real pod-resources client against
// the fake kubelet on a fake clock: past --kubelet.max-stale the GPU
// series lose their pod labels and gpu_agent_kubelet_pod_map_expired is 1,
// logged once; with the kubelet back, the labels and 0 return.
func TestKubeletDownPastMaxStale(t *testing.T) {
	kl, err := fakekubelet.Start(fakekubelet.TempSocketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kl.Stop)
	kl.SetPods(listResponse(
		pod("ml", "inference-0", "server", "nvidia.com/gpu", uuid0),
		pod("media", "sfu-0", "sfu", "nvidia.com/gpu", uuid1),
	).GetPodResources())
	var now atomic.Int64
	now.Store(time.Unix(1700000000, 0).UnixNano())
	var logs strings.Builder
	var logMu sync.Mutex
	client, err := podresources.NewClient(kl.Path(),
		podresources.NewResolver([]podresources.GPU{{UUID: uuid0, Minor: 0}, {UUID: uuid1, Minor: 1}, {UUID: uuid2, Minor: 2}}),
		podresources.Options{
			Period: 10 * time.Millisecond, MaxStale: 5 * time.Minute,
			Now:    func() time.Time { return time.Unix(0, now.Load()) },
			Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)),
		})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, client, nil), Options{Hostname: "n", Interval: time.Second})
	ctx := context.Background()
	check := func(when string, expired float64, podSeries int) {
		t.Helper()
		fams := gather(t, c.Latest(), podresources.NewMetrics(client))
		if got := fams["gpu_agent_kubelet_pod_map_expired"].GetMetric()[0].GetGauge().GetValue(); got != expired {
			t.Errorf("%s: gpu_agent_kubelet_pod_map_expired = %v, want %v", when, got, expired)
		}
		const series = "DCGM_FI_DEV_GPU_UTIL"
		if n := len(fams[series].GetMetric()); n != 2 {
			t.Errorf("%s: %d %s series, want 2 (one per GPU)", when, n, series)
		}
		withPod := 0
		for _, m := range fams[series].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pod" {
					withPod++
				}
			}
		}
		if withPod != podSeries {
			t.Errorf("%s: %d %s series with a pod label, want %d", when, withPod, series, podSeries)
		}
	}

	if err := client.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	check("kubelet up", 0, 2)
	kl.Stop()
	now.Add(int64(4 * time.Minute))
	if client.Refresh(ctx) == nil {
		t.Fatal("Refresh succeeded with the kubelet down")
	}
	check("4 minutes down", 0, 2) // the last good map, still
	now.Add(int64(time.Minute))
	for range 3 {
		if client.Refresh(ctx) == nil {
			t.Fatal("Refresh succeeded with the kubelet down")
		}
	}
	check("5 minutes down", 1, 0)
	logMu.Lock()
	n := strings.Count(logs.String(), "kubelet pod map expired")
	logMu.Unlock()
	if n != 1 {
		t.Errorf("expiry logged %d times, want once:\n%s", n, logs.String())
	}

	if err := kl.Restart(); err != nil {
		t.Fatal(err)
	}
	agenttest.Eventually(t, 5*time.Second, "the kubelet answering again", func() bool { return client.Refresh(ctx) == nil })
	check("kubelet back", 0, 2)
}

// gather collects cs on a pedantic registry, by family name.
func gather(t *testing.T, cs ...prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cs...)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	return byName
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestPedanticRegistryAndLint(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newTestCollector(t, testSnapshot()).Latest())
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("pedantic gather: %v", err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if !LintExempt(p.Metric, p.Text) {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	// The exemption is narrow: a made-up name is still linted.
	if LintExempt("gpu_agent_fooBar", "metric names should be written in 'snake_case' not 'camelCase'") {
		t.Error("LintExempt exempts a name it should not")
	}
}

func TestBeforeFirstSnapshot(t *testing.T) {
	c := NewCollector(attribution.NewAttributor(snapshots{nil}, nil, nil), Options{Hostname: "n", Interval: time.Second})
	if n := testutil.CollectAndCount(c.Latest(), "DCGM_FI_DEV_GPU_UTIL"); n != 0 {
		t.Errorf("%d GPU series before the first snapshot", n)
	}
	if n := testutil.CollectAndCount(c.Latest(), "gpu_agent_build_info"); n != 1 {
		t.Errorf("build info missing before the first snapshot")
	}
}

func TestReadiness(t *testing.T) {
	now := time.Now()
	if ok, why := Readiness(snapshots{nil}, time.Second, now); ok || !strings.Contains(why, "no GPU sample") {
		t.Errorf("no snapshot: ready=%v %q", ok, why)
	}
	fresh := &telemetry.Snapshot{Time: now.Add(-2 * time.Second)}
	if ok, _ := Readiness(snapshots{fresh}, time.Second, now); !ok {
		t.Error("snapshot 2 intervals old: not ready")
	}
	stale := &telemetry.Snapshot{Time: now.Add(-4 * time.Second)}
	if ok, why := Readiness(snapshots{stale}, time.Second, now); ok || !strings.Contains(why, "stalled") {
		t.Errorf("snapshot 4 intervals old: ready=%v %q", ok, why)
	}
}

func TestHandler(t *testing.T) {
	src := &snapshots{}
	h := newTestHandler(t, NewCollector(attribution.NewAttributor(src, nil, nil), Options{Hostname: "n", Interval: time.Second}), time.Second)
	get := func(path, accept string) (int, string, string) {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Header().Get("Content-Type"), rec.Body.String()
	}
	if code, _, _ := get("/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _, body := get("/readyz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the first sample = %d %q", code, body)
	}
	src.snap = testSnapshot()
	if code, _, body := get("/readyz", ""); code != http.StatusOK {
		t.Errorf("/readyz after a sample = %d %q", code, body)
	}
	code, ctype, body := get("/metrics", "application/openmetrics-text;version=1.0.0")
	if code != http.StatusOK || !strings.HasPrefix(ctype, "application/openmetrics-text") {
		t.Fatalf("/metrics (OpenMetrics) = %d %s", code, ctype)
	}
	// dcgm-exporter's counters keep their names under OpenMetrics, which
	// wants counters named _total: typed unknown there, as expfmt does.
	for _, re := range []string{`(?m)^DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\{`, `(?m)^# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown$`} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("OpenMetrics: no %s:\n%s", re, grep(body, "ENERGY"))
		}
	}
	if strings.Contains(body, "ENERGY_CONSUMPTION_total") {
		t.Errorf("energy series renamed under OpenMetrics:\n%s", grep(body, "ENERGY"))
	}
	code, ctype, body = get("/metrics", "text/plain")
	if code != http.StatusOK || !strings.HasPrefix(ctype, "text/plain") || !strings.Contains(body, "DCGM_FI_DEV_GPU_UTIL{") {
		t.Errorf("/metrics (text) = %d %s", code, ctype)
	}
	// The classic text format, dcgm-exporter's only one, says counter.
	if !strings.Contains(body, "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n") {
		t.Errorf("text: energy not a counter:\n%s", grep(body, "ENERGY"))
	}
}

// While the agent starts, /healthz is 200 and everything else 503
// "starting"; then the real handler serves every path.
func TestStarting(t *testing.T) {
	var h Starting
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	for _, path := range []string{"/healthz", "/health"} {
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("%s while starting = %d, want 200", path, code)
		}
	}
	for _, path := range []string{"/readyz", "/metrics", "/"} {
		if code, body := get(path); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "starting") {
			t.Errorf("%s while starting = %d %q, want 503 starting", path, code, body)
		}
	}
	src := &snapshots{snap: testSnapshot()}
	src.snap.Time = time.Now()
	h.Ready(newTestHandler(t, NewCollector(attribution.NewAttributor(src, nil, nil), Options{Hostname: "n", Interval: time.Second}), time.Second))
	for _, path := range []string{"/healthz", "/health", "/readyz", "/metrics"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("%s once started = %d %q, want 200", path, code, body)
		}
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Every metric the agent serves is documented in docs/metrics.md.
func TestEveryMetricIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatalf("reading docs/metrics.md: %v", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newTestCollector(t, testSnapshot()).Latest())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"gpu_agent_sample_duration_seconds"} // registered by the agent, beside the collector
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	// Families a test snapshot does not produce.
	names = append(names, DCGMNames()...)
	names = append(names, "gpu_agent_read_errors_total", "gpu_agent_encoder_fps", "gpu_agent_encoder_sessions",
		"gpu_agent_utilization_sampling_period_seconds", "gpu_agent_kubelet_refresh_failures_total",
		"gpu_agent_mig_read_errors_total", "gpu_agent_pod_encoder_sessions", "gpu_agent_pod_encoder_fps",
		"gpu_agent_pod_encoder_latency_seconds", "gpu_agent_unattributed_processes")
	for _, n := range names {
		if !strings.Contains(string(doc), "`"+n+"`") {
			t.Errorf("metric %s is not documented in docs/metrics.md (as `%s`)", n, n)
		}
	}
}

// With a field list (-f), exactly its fields are served, plus the agent's
// own families; its DCGM_FI_DRIVER_VERSION row is a label on every device
// series; what the agent cannot serve is reported, not served.
func TestFieldList(t *testing.T) {
	fields := []dcgmcsv.Field{
		{Name: "DCGM_FI_DEV_GPU_UTIL", Type: dcgmcsv.TypeGauge},
		{Name: "DCGM_FI_DEV_POWER_USAGE", Type: dcgmcsv.TypeGauge},
		{Name: "DCGM_FI_PROF_GR_ENGINE_ACTIVE", Type: dcgmcsv.TypeGauge},
		{Name: "DCGM_FI_DRIVER_VERSION", Type: dcgmcsv.TypeLabel},
		{Name: "DCGM_FI_DEV_SERIAL", Type: dcgmcsv.TypeLabel},
		{Name: "DCGM_FI_DEV_FB_USED", Type: dcgmcsv.TypeLabel}, // a metric field cannot be a label here
	}
	if got, want := Unsupported(fields), []string{"DCGM_FI_DEV_SERIAL", "DCGM_FI_DEV_FB_USED"}; !slices.Equal(got, want) {
		t.Errorf("Unsupported = %v, want %v", got, want)
	}
	if got, want := ProfilingNames(fields), []string{"DCGM_FI_PROF_GR_ENGINE_ACTIVE"}; !slices.Equal(got, want) {
		t.Errorf("ProfilingNames = %v, want %v", got, want)
	}
	c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, testPods(t), nil), Options{Hostname: "node-a", Interval: time.Second, Counters: fields, DriverVersion: "550.54.15"})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Latest())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var dcgm []string
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, Namespace+"_") {
			dcgm = append(dcgm, name)
		}
		device := slices.ContainsFunc(mf.GetMetric()[0].GetLabel(), func(p *dto.LabelPair) bool { return p.GetName() == "device" })
		for _, m := range mf.GetMetric() {
			var driver string
			for _, p := range m.GetLabel() {
				if p.GetName() == "DCGM_FI_DRIVER_VERSION" {
					driver = p.GetValue()
				}
			}
			if device && driver != "550.54.15" {
				t.Errorf("%s %v: DCGM_FI_DRIVER_VERSION=%q, want the driver's", name, m.GetLabel(), driver)
			}
		}
	}
	if want := []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE"}; !slices.Equal(dcgm, want) {
		t.Errorf("served %v, want exactly %v", dcgm, want)
	}
	if got := grep(scrape(t, c), "gpu_agent_encoder_latency_seconds{"); got == "" {
		t.Error("the agent's own device families are left out")
	}
	// What it cannot produce is 0 in gpu_agent_field_supported, per GPU;
	// what it can is not named there by its DCGM name.
	supported := grep(scrape(t, c), `gpu_agent_field_supported{`)
	for _, n := range append(Unsupported(fields), ProfilingNames(fields)...) {
		for _, g := range []string{`UUID="GPU-00000000-0000-0000-0000-000000000000",field="` + n + `",gpu="0"} 0`,
			`UUID="GPU-22222222-2222-2222-2222-222222222222",field="` + n + `",gpu="2"} 0`} {
			if !strings.Contains(supported, g) {
				t.Errorf("no gpu_agent_field_supported{%s:\n%s", g, supported)
			}
		}
	}
	if strings.Contains(supported, `field="DCGM_FI_DEV_GPU_UTIL"`) || strings.Contains(supported, `field="DCGM_FI_DRIVER_VERSION"`) {
		t.Errorf("a field the agent produces is reported unsupported:\n%s", supported)
	}

	// An empty list serves none of dcgm-exporter's families.
	c = NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, nil, nil), Options{Interval: time.Second, Counters: []dcgmcsv.Field{}})
	if got := scrape(t, c); strings.Contains(got, "DCGM_") {
		t.Errorf("an empty field list serves:\n%s", grep(got, "DCGM_"))
	}
	// Without a list, nothing is reported unproduced.
	c = newTestCollector(t, testSnapshot())
	if got := grep(scrape(t, c), `gpu_agent_field_supported{`); strings.Contains(got, `field="DCGM_`) {
		t.Errorf("without -f: %s", got)
	}
}

func scrape(t *testing.T, c *Collector) string {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	newTestHandler(t, c, time.Second).ServeHTTP(rec, req)
	return rec.Body.String()
}

// Labels as dcgm-exporter writes them with -o and --no-hostname: pod_name,
// pod_namespace, container_name and uuid; no Hostname; device is
// nvidia<GPU index> even where the minor number differs; an XID past the
// catalogue is "Unknown Error"; no DCGM_FI_DRIVER_VERSION when NVML did
// not say.
func TestOldNamespaceNoHostname(t *testing.T) {
	snap := testSnapshot()
	snap.Devices[0].Minor, snap.Devices[1].Minor = 1, 0
	snap.States[0].XID = &telemetry.XIDCounts{Last: 999, Counts: map[uint64]uint64{999: 1}}
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), nil), Options{Interval: time.Second, UseOldNamespace: true})
	const want = `
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0",uuid="GPU-11111111-1111-1111-1111-111111111111"} 12
DCGM_FI_DEV_GPU_UTIL{container_name="server",device="nvidia0",gpu="0",modelName="Tesla T4",pci_bus_id="00000000:3B:00.0",pod_name="inference-0",pod_namespace="ml",uuid="GPU-00000000-0000-0000-0000-000000000000"} 87
DCGM_FI_DEV_GPU_UTIL{container_name="sfu",device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0",pod_name="sfu-0",pod_namespace="media",uuid="GPU-11111111-1111-1111-1111-111111111111"} 12
DCGM_FI_DEV_GPU_UTIL{container_name="sfu",device="nvidia1",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0",pod_name="sfu-1",pod_namespace="media",uuid="GPU-11111111-1111-1111-1111-111111111111"} 12
# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.
# TYPE DCGM_FI_DEV_XID_ERRORS gauge
DCGM_FI_DEV_XID_ERRORS{container_name="server",device="nvidia0",err_code="999",err_msg="Unknown Error",gpu="0",modelName="Tesla T4",pci_bus_id="00000000:3B:00.0",pod_name="inference-0",pod_namespace="ml",uuid="GPU-00000000-0000-0000-0000-000000000000"} 999
DCGM_FI_DEV_XID_ERRORS{device="nvidia1",err_code="0",err_msg="No Error",gpu="1",modelName="Tesla T4",pci_bus_id="00000000:3C:00.0",uuid="GPU-11111111-1111-1111-1111-111111111111"} 0
DCGM_FI_DEV_XID_ERRORS{device="nvidia2",err_code="0",err_msg="No Error",gpu="2",modelName="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:3D:00.0",uuid="GPU-22222222-2222-2222-2222-222222222222"} 0
# HELP gpu_agent_device_up 1 while the GPU answers NVML, 0 while NVML reports it lost or the driver unavailable.
# TYPE gpu_agent_device_up gauge
gpu_agent_device_up{gpu="0",uuid="GPU-00000000-0000-0000-0000-000000000000"} 1
gpu_agent_device_up{gpu="1",uuid="GPU-11111111-1111-1111-1111-111111111111"} 1
gpu_agent_device_up{gpu="2",uuid="GPU-22222222-2222-2222-2222-222222222222"} 1
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_XID_ERRORS", "gpu_agent_device_up"); err != nil {
		t.Error(err)
	}
}

// The slow fields under dcgm-exporter's names, units and types, in the
// classic text format dcgm-exporter serves.
func TestSlowFieldsExported(t *testing.T) {
	c := newTestCollector(t, testSnapshot())
	body := scrape(t, c)
	const gpu2 = `{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",device="nvidia2",gpu="2",modelName="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:3D:00.0"} `
	for _, m := range []struct {
		name, typ, value string
	}{
		{"DCGM_FI_DEV_MEMORY_TEMP", "gauge", "41"},
		{"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "7"},
		{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "3"},
		{"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "1"},
		{"DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "0"},
		{"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "gauge", "120.5632705078125"}, // DCGM's rate: B/s / 1024 / 1000
		{"DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "1"},
	} {
		if !strings.Contains(body, "# TYPE "+m.name+" "+m.typ+"\n") {
			t.Errorf("%s: not a %s:\n%s", m.name, m.typ, grep(body, m.name))
		}
		if !strings.Contains(body, m.name+gpu2+m.value+"\n") {
			t.Errorf("%s: want %s on GPU 2:\n%s", m.name, m.value, grep(body, m.name))
		}
		// GPUs 0 and 1 have no value: absent, not 0.
		if n := strings.Count(body, m.name+"{"); n != 1 {
			t.Errorf("%s: %d series, want 1", m.name, n)
		}
	}
}

// Every XID of the catalogue has its name; the table is dense from 0.
func TestXIDLabels(t *testing.T) {
	for xid, want := range map[uint64][2]string{0: {"0", "No Error"}, 31: {"31", "GPU memory page fault"}, 79: {"79", "GPU has fallen off the bus"},
		172: {"172", "Uncorrectable SRAM Error"}, 173: {"173", "Unknown Error"}} {
		code, msg := xidLabels(xid)
		if code.GetName() != "err_code" || msg.GetName() != "err_msg" || code.GetValue() != want[0] || msg.GetValue() != want[1] {
			t.Errorf("XID %d: %v %v, want %v", xid, code, msg, want)
		}
	}
}

// advancing is a snapshot source that publishes a new snapshot on every
// read, as a sampler at full speed may between two reads of a scrape.
type advancing struct{ n atomic.Int64 }

func (a *advancing) Latest() *telemetry.Snapshot {
	n := a.n.Add(1)
	snap := testSnapshot()
	snap.Seq, snap.Ticks = uint64(n), uint64(n)
	snap.States[0].Set(telemetry.GPUUtil, float64(n))
	return snap
}

// One scrape reads one snapshot for everything it writes: the agent's own
// families (gathered through the registry) and the device families
// (written as text) come from the same view, even when the sampler
// publishes between the two.
func TestScrapeReadsOneSnapshot(t *testing.T) {
	src := &advancing{}
	c := NewCollector(attribution.NewAttributor(src, nil, nil), Options{Hostname: "n", Interval: time.Second})
	for range 3 {
		var ticks, util float64
		for _, l := range strings.Split(scrape(t, c), "\n") {
			i := strings.LastIndexByte(l, ' ')
			if i < 0 {
				continue
			}
			name, v := l[:i], l[i+1:]
			switch {
			case name == "gpu_agent_samples_total":
				ticks, _ = strconv.ParseFloat(v, 64)
			case strings.HasPrefix(name, "DCGM_FI_DEV_GPU_UTIL{") && strings.Contains(name, `gpu="0"`):
				util, _ = strconv.ParseFloat(v, 64)
			}
		}
		if ticks == 0 || ticks != util {
			t.Fatalf("gpu_agent_samples_total %v and GPU 0's utilization %v: from two snapshots", ticks, util)
		}
	}
}

// blockingCollector holds a scrape in Collect until released.
type blockingCollector struct {
	entered chan struct{} // one slot: says a scrape is in Collect
	release chan struct{}
}

func (b *blockingCollector) Describe(chan<- *prometheus.Desc) {}
func (b *blockingCollector) Collect(chan<- prometheus.Metric) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
}

// Past --web.max-requests a scrape is answered 503 at once, and counted
// by promhttp's handler metrics (--web.enable-exporter-metrics); the
// health endpoints are not limited.
func TestMaxRequests(t *testing.T) {
	block := &blockingCollector{entered: make(chan struct{}, 1), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	h, err := NewHandler(reg, NewCollector(attribution.NewAttributor(&snapshots{snap: testSnapshot()}, nil, nil), Options{Hostname: "n", Interval: time.Second}),
		HandlerOptions{Interval: time.Second, Logger: discardLogger(), ExporterMetrics: true, MaxRequests: 1})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(block)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	first := make(chan int)
	go func() { code, _ := get("/metrics"); first <- code }()
	<-block.entered
	if code, body := get("/metrics"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Limit of concurrent requests reached (1)") {
		t.Errorf("a second scrape while one runs, limit 1: %d %q, want 503", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while a scrape runs: %d", code)
	}
	close(block.release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("the first scrape: %d", code)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, `promhttp_metric_handler_requests_total{code="503"} 1`) {
		t.Errorf("the next scrape: %d, want 200 counting the 503 once; body has %q", code, grepLines(body, "promhttp_metric_handler_requests_total"))
	}
}

func grepLines(s, substr string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// --web.enable-pprof mounts Go's profiles on the agent's mux; off, they
// are not there.
func TestPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		h, err := NewHandler(prometheus.NewRegistry(), NewCollector(attribution.NewAttributor(&snapshots{snap: testSnapshot()}, nil, nil), Options{Hostname: "n", Interval: time.Second}),
			HandlerOptions{Interval: time.Second, Logger: discardLogger(), Pprof: on})
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/goroutine?debug=1"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			served := rec.Code == http.StatusOK && (strings.Contains(rec.Body.String(), "goroutine") || strings.Contains(rec.Body.String(), "heap profile"))
			if served != on {
				t.Errorf("pprof %v: GET %s = %d, served %v", on, path, rec.Code, served)
			}
		}
	}
}

// Compressed scrapes of one view that arrive while it is being rendered
// share that rendering: one gather for all of them, each answered the
// whole body. A scrape after it renders again, and an uncompressed one
// renders its own.
func TestConcurrentScrapesShareARendering(t *testing.T) {
	block := &blockingCollector{entered: make(chan struct{}, 1), release: make(chan struct{})}
	var gathers atomic.Int32
	reg := prometheus.NewRegistry()
	reg.MustRegister(block, prometheus.CollectorFunc(func(chan<- prometheus.Metric) { gathers.Add(1) }))
	gathers.Store(0) // CollectorFunc's Describe collects once
	c := NewCollector(attribution.NewAttributor(&snapshots{snap: testSnapshot()}, nil, nil), Options{Hostname: "n", Interval: time.Second})
	h := &metricsHandler{reg: reg, c: c, log: discardLogger()}
	get := func(gzipped bool) string {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if gzipped {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !gzipped {
			return rec.Body.String()
		}
		if got := rec.Header().Get("Content-Length"); got != strconv.Itoa(rec.Body.Len()) {
			t.Errorf("Content-Length %s for %d bytes", got, rec.Body.Len())
		}
		zr, err := gzip.NewReader(rec.Body)
		if err != nil {
			t.Error(err)
			return ""
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
	const n = 8
	bodies := make(chan string, n)
	go func() { bodies <- get(true) }()
	<-block.entered
	key := renderKey{view: c.views.Latest(), format: expfmt.NegotiateAccept(http.Header{}, textFormats...)}
	for range n - 1 {
		go func() { bodies <- get(true) }()
	}
	agenttest.Eventually(t, 5*time.Second, "the other scrapes waiting on the first's rendering", func() bool { return h.renders.waiting(key) == n-1 })
	close(block.release)
	first := <-bodies
	if !strings.Contains(first, "DCGM_FI_DEV_GPU_UTIL{") || !strings.Contains(first, "gpu_agent_samples_total") {
		t.Fatalf("the shared body lacks the device or agent families:\n%s", first)
	}
	for range n - 1 {
		if b := <-bodies; b != first {
			t.Error("a scrape sharing the rendering got another body")
		}
	}
	if g := gathers.Load(); g != 1 {
		t.Errorf("%d gathers for %d concurrent scrapes of one view, want 1", g, n)
	}
	if get(true) != first || gathers.Load() != 2 {
		t.Errorf("a later scrape: %d gathers, want its own (2)", gathers.Load())
	}
	if plain := get(false); plain != first || gathers.Load() != 3 {
		t.Errorf("an uncompressed scrape: %d gathers, want its own (3), same text", gathers.Load())
	}
}

// The agent's own families of a scrape, built without a registry, are
// what a registry gathers of the same view: the same families, in the
// same order, each with the same series in the same order.
func TestGatherAsRegistry(t *testing.T) {
	lost := testSnapshot()
	lost.States[1].Lost, lost.States[2].Stalled, lost.NVMLDown = true, true, true
	lost.States[0].Errors[telemetry.Power], lost.States[0].MIGReadErrors = 3, 2
	withProcs, procs := withProcesses(testSnapshot())
	fields := []dcgmcsv.Field{{Name: "DCGM_FI_DEV_GPU_UTIL", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_FI_PROF_SM_ACTIVE", Type: dcgmcsv.TypeGauge}}
	for name, c := range map[string]*Collector{
		"healthy":          newTestCollector(t, testSnapshot()),
		"lost and failing": newTestCollector(t, lost),
		"per-process":      NewCollector(attribution.NewAttributor(snapshots{withProcs}, testPods(t), procs), Options{Hostname: "node-a", Interval: time.Second}),
		"field list":       NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, testPods(t), nil), Options{Interval: time.Second, Counters: fields}),
		"no snapshot yet":  NewCollector(attribution.NewAttributor(snapshots{}, nil, nil), Options{Interval: time.Second}),
	} {
		view := c.views.Latest()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(viewCollector{c: c, view: view})
		want, err := reg.Gather()
		if err != nil {
			t.Fatalf("%s: registry: %v", name, err)
		}
		got, err := c.gatherAgent(view)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d families, the registry %d", name, len(got), len(want))
		}
		for i := range min(len(got), len(want)) {
			if !proto.Equal(got[i], want[i]) {
				t.Errorf("%s: family %d:\n%v\nthe registry's:\n%v", name, i, got[i], want[i])
			}
		}
	}
}
