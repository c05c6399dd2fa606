package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/stream"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// Every family the agent's /metrics serves, its own (gpu_agent_*) and
// dcgm-exporter's (DCGM_FI_*), has a row in docs/metrics.md, and every
// row there names a family it serves. /metrics is scraped from the
// handler Run serves, over the registry Run builds (tick histogram, pod
// watch, stream), with a collector over a snapshot that has something for
// every family: a family served only on some condition (an XID, a read
// error, a MIG GPU, a pod's encoder sessions) must be in the fixture, or
// its row fails the test.
func TestEveryAgentMetricIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	row := regexp.MustCompile("(?m)^\\| `((?:gpu_agent|DCGM_FI|DCGM_EXP)_[A-Za-z0-9_]+)` \\|")
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}

	served := map[string]bool{}
	for name := range scrapeEveryFamily(t) {
		if strings.HasPrefix(name, exporter.Namespace+"_") || strings.HasPrefix(name, "DCGM_") {
			served[name] = true
		}
	}
	// The scrape must hold every dcgm-exporter family and the families
	// of each registry source, or the comparison below proves little.
	for _, n := range append(exporter.DCGMNames(), "gpu_agent_sample_duration_seconds",
		"gpu_agent_pod_watch_synced", "gpu_agent_stream_subscribers", "gpu_agent_app_targets", "gpu_agent_pod_encoder_latency_seconds", "gpu_agent_dcgm_up", "gpu_agent_dcgm_errors_total",
		"gpu_agent_tls_reloads_total") {
		if !served[n] {
			t.Errorf("the fixture does not make /metrics serve %s", n)
		}
	}
	for _, n := range sortedKeys(served) {
		if !documented[n] {
			t.Errorf("%s is served but has no row in docs/metrics.md", n)
		}
	}
	for _, n := range sortedKeys(documented) {
		if !served[n] {
			t.Errorf("docs/metrics.md has a row for %s, which /metrics does not serve", n)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// scrapeEveryFamily serves /metrics as Run does, over everyFamilySnapshot,
// and returns the families of one text-format scrape.
func scrapeEveryFamily(t *testing.T) map[string]bool {
	t.Helper()
	const interval = 250 * time.Millisecond
	snap := everyFamilySnapshot()
	store := telemetry.NewStore(interval, 15*time.Second)
	store.Publish(snap)

	resolver := podresources.NewResolver(podresources.GPUsOf(snap.Devices))
	uuid := func(i int) string { return snap.Devices[i].UUID }
	list := &podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{
		fakekubelet.Pod("ml", "inference-0", fakekubelet.Container("server", fakekubelet.Devices("nvidia.com/gpu", uuid(0)))),
		fakekubelet.Pod("media", "sfu-0", fakekubelet.Container("sfu", fakekubelet.Devices("nvidia.com/gpu.shared", uuid(1)+"::0"))),
		fakekubelet.Pod("media", "sfu-1", fakekubelet.Container("sfu", fakekubelet.Devices("nvidia.com/gpu.shared", uuid(1)+"::1"))),
		fakekubelet.Pod("ml", "small", fakekubelet.Container("worker", fakekubelet.Devices("nvidia.com/mig-1g.5gb", "MIG-aaaa"))),
	}}
	pods := fixedPods{
		a:  podresources.BuildAssignments(list, resolver),
		st: podresources.Status{Up: true, Refreshes: 3, Failures: 1, LastSuccess: time.Unix(1700000000, 0)},
	}
	procs := fixedProcesses{&attribution.ProcessPods{Seq: snap.Seq, Pods: map[uint32]attribution.Pod{
		10: {Namespace: "media", Name: "sfu-0", Container: "sfu"},
		11: {Namespace: "media", Name: "sfu-1", Container: "sfu"},
	}}}

	// A field list of every name, so that the names of every generation
	// are served.
	every := []dcgmcsv.Field{{Name: "DCGM_FI_DRIVER_VERSION", Type: dcgmcsv.TypeLabel}}
	for _, n := range exporter.DCGMNames() {
		every = append(every, dcgmcsv.Field{Name: n, Type: dcgmcsv.TypeGauge})
	}
	collector := exporter.NewCollector(attribution.NewAttributor(store, pods, procs), exporter.Options{
		Hostname: "node-a", Interval: interval, Counters: every,
		Build: exporter.BuildInfo{Version: "test", Revision: "abc"}, DriverVersion: "550.54.15",
	})
	watcher, err := podwatch.New(noPods{}, "node-a", podwatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ca := tlstest.NewCA(t, "ca")
	vol := tlstest.NewSecretVolume(t, tlstest.Secret(ca, ca.Issue(t, "agent")))
	tlsFiles := tlsfiles.NewSet(tlsfiles.Options{Namespace: exporter.Namespace})
	if _, err := parse(t, "--grpc.tls-cert-file="+vol.Path("tls.crt"), "--grpc.tls-key-file="+vol.Path("tls.key"),
		"--grpc.tls-client-ca-file="+vol.Path("ca.crt")).GRPCTLSConfig(tlsFiles); err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(true, append(watcher.Metrics(), nvml.NewTickHistogram(), podresources.NewMetrics(pods),
		stream.New(store, stream.Options{Node: "node-a", Interval: interval, Logger: log}), tlsFiles,
		app.New(watcher, app.Options{}).Metrics(), dcgm.New(dcgm.Options{Mode: dcgm.Embedded}).Metrics())...)
	handler, err := exporter.NewHandler(reg, collector, exporter.HandlerOptions{Interval: interval, Logger: log, Version: "test", ExporterMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics = %d %q", rec.Code, rec.Body.String())
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for name := range mfs {
		names[name] = true
	}
	return names
}

// everyFamilySnapshot: GPU 0 held by one pod, answering every field, with
// windows on every engine, a read error and XIDs; GPU 1 time-sliced
// between two pods whose processes encode (per-pod shares, and a host
// process left unattributed); GPU 2 MIG-enabled, one instance held by a
// pod, with a failed MIG read.
func everyFamilySnapshot() *telemetry.Snapshot {
	devs := []telemetry.Device{
		{Index: 0, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "Tesla T4", PCIBusID: "00000000:3B:00.0", Minor: 0},
		{Index: 1, UUID: "GPU-11111111-1111-1111-1111-111111111111", Name: "Tesla T4", PCIBusID: "00000000:3C:00.0", Minor: 1},
		{Index: 2, UUID: "GPU-22222222-2222-2222-2222-222222222222", Name: "NVIDIA A100-SXM4-40GB", PCIBusID: "00000000:3D:00.0", Minor: 2, MIGEnabled: true,
			MIG: []telemetry.MIGDevice{{UUID: "MIG-aaaa", GI: 7, CI: 0, Profile: "1g.5gb"}}},
	}
	states := make([]telemetry.DeviceState, len(devs))

	gpu0 := &states[0]
	gpu0.Supported = telemetry.AllFields
	for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
		gpu0.Set(f, 1)
	}
	for e := range gpu0.Windows {
		gpu0.Windows[e] = telemetry.Window{Count: 60, Max: 90, Mean: 40}
	}
	gpu0.Errors[0] = 2
	gpu0.XID = &telemetry.XIDCounts{Last: 79, Counts: map[uint64]uint64{31: 2, 79: 1},
		Recent: []telemetry.XIDEvent{{XID: 79, At: time.Now()}}}

	gpu1 := &states[1]
	gpu1.Supported = telemetry.AllFields
	gpu1.Set(telemetry.GPUUtil, 12)
	gpu1.Set(telemetry.EncUtil, 50)
	gpu1.Set(telemetry.EncSessions, 4)
	gpu1.ProcessSupport = telemetry.AllProcessData
	all := telemetry.AllProcessData
	gpu1.Processes = []telemetry.ProcessSample{
		{PID: 10, Has: all, SMUtil: 4, EncUtil: 20, FBUsed: 1 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecH264: {Sessions: 1, FPS: 30, LatencyMean: 0.002, LatencyMax: 0.002}}},
		{PID: 11, Has: all, SMUtil: 7, EncUtil: 30, FBUsed: 2 << 30,
			Encoder: [telemetry.NumCodecs]telemetry.EncoderSessions{telemetry.CodecHEVC: {Sessions: 3, FPS: 25, LatencyMean: 0.004, LatencyMax: 0.005}}},
		{PID: 12, Has: all, SMUtil: 1}, // a host process
	}

	gpu2 := &states[2]
	gpu2.Set(telemetry.Power, 90)
	gpu2.MIG = []telemetry.Reading{{}}
	gpu2.MIG[0].Set(telemetry.FBUsed, 1<<30)
	gpu2.MIGReadErrors = 1

	return &telemetry.Snapshot{Seq: 5, Time: time.Now(), Devices: devs, States: states,
		Window: 15 * time.Second, Ticks: 5, Rate: 4}
}

type fixedPods struct {
	a  *podresources.Assignments
	st podresources.Status
}

func (p fixedPods) Assignments() *podresources.Assignments { return p.a }
func (p fixedPods) Status() podresources.Status            { return p.st }
func (p fixedPods) DevicePods() *attribution.DevicePods    { return p.a.DevicePods() }
func (p fixedPods) Stale() bool                            { return p.st.Stale }

type fixedProcesses struct{ pp *attribution.ProcessPods }

func (f fixedProcesses) ProcessPods() *attribution.ProcessPods { return f.pp }

// noPods is a pod client the test never runs: the watch's metrics read
// its state (unsynced, no pods, no errors) without an API call.
type noPods struct{}

func (noPods) List(context.Context, metav1.ListOptions) (*corev1.PodList, error) {
	return nil, errors.New("not called")
}

func (noPods) Watch(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return nil, errors.New("not called")
}
