package exporter

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/nvml/calls"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// metaTable is a pod watch's answers, by namespace/name.
type metaTable map[string]*attribution.PodMeta

func (m metaTable) PodMeta(ns, name string) *attribution.PodMeta { return m[ns+"/"+name] }

// The UIDs of testPods' pods.
const (
	uidInference = "0b6f2c3e-5a71-4d2b-9c84-2f1e7a9d3c10"
	uidSFU0      = "7d3e1a2b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
	uidSFU1      = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
	uidSmall     = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
)

// testMetas are the UIDs and labels of testPods' pods, through the real
// constructor (sanitised names). Two labels clash with a series' own
// (sfu-0's "pod", small's "gpu"); sfu-1's note needs escaping.
func testMetas() metaTable {
	return metaTable{
		"ml/inference-0": attribution.NewPodMeta(uidInference, map[string]string{"app.kubernetes.io/name": "inference", "team": "ml"}),
		"media/sfu-0":    attribution.NewPodMeta(uidSFU0, map[string]string{"app.kubernetes.io/name": "sfu", "pod": "not-the-pod"}),
		"media/sfu-1": attribution.NewPodMeta(uidSFU1, map[string]string{"app.kubernetes.io/name": "sfu",
			"note": "a \"quoted\" \\ value\nover two lines"}),
		"ml/small": attribution.NewPodMeta(uidSmall, map[string]string{"app.kubernetes.io/name": "small", "gpu": "7"}),
	}
}

func metaCollector(t *testing.T, snap *telemetry.Snapshot, procs attribution.Processes, metas attribution.PodMetas, opts Options) *Collector {
	t.Helper()
	if opts.Interval == 0 {
		opts.Interval = 250 * time.Millisecond
	}
	return NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), procs, attribution.WithPodMetas(metas)), opts)
}

// Every series of a pod carries its pod_uid and its labels: the one series
// of a GPU one pod holds, each pod's series of a shared GPU (not the
// device-level one), a MIG instance's pod's. A pod label named like one of
// the series' labels is left out: sfu-0's "pod" does not replace its pod
// name, small's "gpu" does not replace its GPU's index.
func TestPodLabels(t *testing.T) {
	c := metaCollector(t, testSnapshot(), nil, testMetas(), Options{Hostname: "node-a", DriverVersion: "550.54.15"})
	const (
		gpu0 = `DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-00000000-0000-0000-0000-000000000000",`
		gpu1 = `DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="node-a",UUID="GPU-11111111-1111-1111-1111-111111111111",`
		gpu2 = `DCGM_FI_DRIVER_VERSION="550.54.15",GPU_I_ID="7",GPU_I_PROFILE="1g.5gb",Hostname="node-a",UUID="GPU-22222222-2222-2222-2222-222222222222",`
		t4_1 = `device="nvidia1",gpu="1",modelName="Tesla T4",`
	)
	const want = `
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{` + gpu0 + `app_kubernetes_io_name="inference",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0",pod_uid="` + uidInference + `",team="ml"} 87
DCGM_FI_DEV_GPU_UTIL{` + gpu1 + t4_1 + `pci_bus_id="00000000:3C:00.0"} 12
DCGM_FI_DEV_GPU_UTIL{` + gpu1 + `app_kubernetes_io_name="sfu",container="sfu",` + t4_1 + `namespace="media",pci_bus_id="00000000:3C:00.0",pod="sfu-0",pod_uid="` + uidSFU0 + `"} 12
DCGM_FI_DEV_GPU_UTIL{` + gpu1 + `app_kubernetes_io_name="sfu",container="sfu",` + t4_1 + `namespace="media",note="a \"quoted\" \\ value\nover two lines",pci_bus_id="00000000:3C:00.0",pod="sfu-1",pod_uid="` + uidSFU1 + `"} 12
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{` + gpu0 + `app_kubernetes_io_name="inference",container="server",device="nvidia0",gpu="0",modelName="Tesla T4",namespace="ml",pci_bus_id="00000000:3B:00.0",pod="inference-0",pod_uid="` + uidInference + `",team="ml"} 3072
DCGM_FI_DEV_FB_USED{` + gpu2 + `app_kubernetes_io_name="small",container="worker",device="nvidia2",gpu="2",modelName="NVIDIA A100-SXM4-40GB",namespace="ml",pci_bus_id="00000000:3D:00.0",pod="small",pod_uid="` + uidSmall + `"} 1024
`
	if err := testutil.CollectAndCompare(c.Latest(), strings.NewReader(want), "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"); err != nil {
		t.Error(err)
	}
	// The pedantic registry checks each series against its own Desc.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Latest())
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("pedantic gather: %v", err)
	}
}

// A pod the watch does not know (yet), and metadata with neither a UID nor
// a label (not asked for): the pod's series are as without the watch.
func TestPodLabelsUnknownPod(t *testing.T) {
	metas := metaTable{"ml/inference-0": attribution.NewPodMeta("", nil)}
	with := gatherSeries(t, metaCollector(t, testSnapshot(), nil, metas, Options{Hostname: "node-a"}).Latest())
	without := gatherSeries(t, newTestCollector(t, testSnapshot()).Latest())
	// newTestCollector also sets a driver version and build info.
	for _, m := range []map[string][]string{with, without} {
		for k := range m {
			if !strings.HasPrefix(k, "DCGM_FI_DEV_GPU_UTIL") {
				delete(m, k)
			}
		}
	}
	if len(with) == 0 {
		t.Fatal("no series")
	}
	for name, sets := range with {
		for i, s := range sets {
			sets[i] = strings.Replace(s, `DCGM_FI_DRIVER_VERSION="550.54.15",`, "", 1)
		}
		slices.Sort(sets)
		w := slices.Clone(without[name])
		for i, s := range w {
			w[i] = strings.Replace(s, `DCGM_FI_DRIVER_VERSION="550.54.15",`, "", 1)
		}
		slices.Sort(w)
		if !slices.Equal(sets, w) {
			t.Errorf("%s:\n%v\nwant\n%v", name, sets, w)
		}
	}
}

// gatherSeries gathers c on a pedantic registry: each family's series as
// their sorted name="value" pairs.
func gatherSeries(t *testing.T, c prometheus.Collector) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for name, mf := range gather(t, c) {
		for _, m := range mf.GetMetric() {
			out[name] = append(out[name], pairs(m.GetLabel()))
		}
	}
	return out
}

func pairs(ls []*dto.LabelPair) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.GetName() + "=" + `"` + l.GetValue() + `",`)
	}
	return b.String()
}

// A pod label may be named like any label a pod's series carries, in any
// family: it is left out, and the series are those without pod labels
// plus pod_uid. The label names are read from a scrape, so a family that
// adds a label of its own fails here until familyLabels has it.
func TestPodLabelsNeverClash(t *testing.T) {
	// Every family of every generation: a field list of every name.
	every := []dcgmcsv.Field{{Name: driverVersionLabel, Type: dcgmcsv.TypeLabel}, {Name: systemDriverVersionLabel, Type: dcgmcsv.TypeLabel}}
	for _, n := range DCGMNames() {
		every = append(every, dcgmcsv.Field{Name: n, Type: dcgmcsv.TypeGauge})
	}
	for _, c := range []struct {
		oldNamespace bool
		gen          Generation
	}{{false, Gen482}, {true, Gen482}, {false, Gen49}, {true, Gen410}} {
		oldNamespace := c.oldNamespace
		opts := Options{Hostname: "node-a", DriverVersion: "550.54.15", UseOldNamespace: oldNamespace, Generation: c.gen, Counters: every}
		snap, procs := withProcesses(testSnapshot())                                // the per-pod encoder families too
		snap.States[0].XID.Recent = []telemetry.XIDEvent{{XID: 79, At: time.Now()}} // and the XID window's
		plain := gatherSeries(t, NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), procs), opts).Latest())

		// Every label name of a pod's series, in the layout's spelling.
		podLabel := "pod"
		if oldNamespace {
			podLabel = "pod_name"
		}
		names := map[string]string{}
		for _, sets := range plain {
			for _, s := range sets {
				if !strings.Contains(s, ","+podLabel+`="`) && !strings.HasPrefix(s, podLabel+`="`) {
					continue
				}
				for _, kv := range strings.Split(strings.TrimSuffix(s, ","), `",`) {
					n, _, _ := strings.Cut(kv, "=")
					names[n] = "from-the-pod"
				}
			}
		}
		if len(names) < 10 {
			t.Fatalf("only %d label names on pod series: %v", len(names), slices.Sorted(maps.Keys(names)))
		}
		metas := metaTable{}
		for _, p := range []string{"ml/inference-0", "media/sfu-0", "media/sfu-1", "ml/small"} {
			metas[p] = attribution.NewPodMeta("uid-"+p, names)
		}
		clashing := gatherSeries(t, NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), procs, attribution.WithPodMetas(metas)), opts).Latest())

		for name, sets := range clashing {
			for i, s := range sets {
				// pod_uid is the only label added.
				if j := strings.Index(s, `pod_uid="uid-`); j >= 0 {
					end := strings.Index(s[j:], `",`) + j + 2
					sets[i] = s[:j] + s[end:]
				}
			}
			slices.Sort(sets)
			want := slices.Clone(plain[name])
			slices.Sort(want)
			if !slices.Equal(sets, want) {
				t.Errorf("-o=%v: %s: pod labels named like the series' own changed them:\n%s\nwant\n%s",
					oldNamespace, name, strings.Join(sets, "\n"), strings.Join(want, "\n"))
			}
		}
	}
}

// The layouts differ, and so do the names a pod label may not take: the
// pod is "pod", or with -o "pod_name", and a pod label of the other name
// is the pod's label.
func TestPodLabelReservedNamesFollowTheLayout(t *testing.T) {
	metas := metaTable{"ml/inference-0": attribution.NewPodMeta("", map[string]string{"pod": "label", "pod_name": "label"})}
	for _, tc := range []struct {
		old        bool
		pod, label string
	}{
		{false, `pod="inference-0"`, `pod_name="label"`},
		{true, `pod_name="inference-0"`, `pod="label"`},
	} {
		c := metaCollector(t, testSnapshot(), nil, metas, Options{Hostname: "node-a", UseOldNamespace: tc.old})
		series := gatherSeries(t, c.Latest())["DCGM_FI_DEV_POWER_USAGE"]
		var found bool
		for _, s := range series {
			if strings.Contains(s, `inference-0`) {
				found = true
				if !strings.Contains(s, tc.pod) || !strings.Contains(s, tc.label) || strings.Count(s, `"label"`) != 1 {
					t.Errorf("-o=%v: %s, want %s and %s only", tc.old, s, tc.pod, tc.label)
				}
			}
		}
		if !found {
			t.Errorf("-o=%v: no series of inference-0 in %v", tc.old, series)
		}
	}
}

// migParent is a simulated GPU in MIG mode, its instances go-nvml mocks
// (neither the simulator nor NVIDIA's mock library has MIG): what the
// sampler reads of a real one, inventory and memory per instance.
type migParent struct {
	*sim.Device
	migs map[int]gonvml.Device
}

func (migParent) GetMigMode() (int, int, gonvml.Return) {
	return gonvml.DEVICE_MIG_ENABLE, gonvml.DEVICE_MIG_ENABLE, gonvml.SUCCESS
}
func (migParent) GetMaxMigDeviceCount() (int, gonvml.Return) { return 7, gonvml.SUCCESS }
func (migParent) GetUtilizationRates() (gonvml.Utilization, gonvml.Return) {
	return gonvml.Utilization{}, gonvml.ERROR_NOT_SUPPORTED // as a MIG-enabled GPU answers
}
func (d migParent) GetMigDeviceHandleByIndex(i int) (gonvml.Device, gonvml.Return) {
	if m, ok := d.migs[i]; ok {
		return m, gonvml.SUCCESS
	}
	return nil, gonvml.ERROR_NOT_FOUND
}

func migInstance(uuid string, gi int, usedMiB uint64) *mock.Device {
	return &mock.Device{
		GetUUIDFunc:              func() (string, gonvml.Return) { return uuid, gonvml.SUCCESS },
		GetGpuInstanceIdFunc:     func() (int, gonvml.Return) { return gi, gonvml.SUCCESS },
		GetComputeInstanceIdFunc: func() (int, gonvml.Return) { return 0, gonvml.SUCCESS },
		GetNameFunc:              func() (string, gonvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 1g.5gb", gonvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (gonvml.Memory_v2, gonvml.Return) {
			return gonvml.Memory_v2{Total: 5 << 30, Used: usedMiB << 20, Free: 5<<30 - usedMiB<<20}, gonvml.SUCCESS
		},
	}
}

// migLibrary is the simulated node with its GPU 2 in MIG mode.
type migLibrary struct {
	*sim.Library
	parent migParent
}

func (l migLibrary) DeviceGetHandleByIndex(i int) (calls.Device, gonvml.Return) {
	if i == 2 {
		return l.parent, gonvml.SUCCESS
	}
	return l.Library.DeviceGetHandleByIndex(i)
}

// Pod labels through the real sampler, over a node whose GPU 0 one pod
// holds, GPU 1 two pods share, and GPU 2 is in MIG mode with an instance
// for each of two pods (go-nvml mocks), the pods mapped from a kubelet
// answer by the real assignment builder: every pod series has its pod's
// labels, a pod the watch does not know has none, and no series outside
// a pod has any.
func TestPodLabelsOverMockNVML(t *testing.T) {
	const (
		migA = "MIG-5f1e6a2b-0c3d-5e4f-8a9b-1c2d3e4f5a6b"
		migB = "MIG-6a2b7c3d-1e4f-5a6b-9c0d-2e3f4a5b6c7d"
	)
	node := sim.New(sim.Options{Devices: 3, Seed: 7, Static: true})
	devs := node.Devices()
	lib := migLibrary{Library: node, parent: migParent{Device: devs[2], migs: map[int]gonvml.Device{
		0: migInstance(migA, 1, 1024), 3: migInstance(migB, 2, 2048)}}}
	store := telemetry.NewStore(nvml.MinInterval, time.Second)
	s, err := nvml.Open(t.Context(), lib, nvml.Config{Interval: nvml.MinInterval, Window: time.Second, Store: store, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	s.Tick()
	snap := store.Latest()
	if len(snap.Devices) != 3 || len(snap.Devices[2].MIG) != 2 {
		t.Fatalf("inventory: %+v", snap.Devices)
	}

	a := podresources.BuildAssignments(listResponse(
		pod("ml", "inference-0", "server", "nvidia.com/gpu", devs[0].UUID()),
		pod("media", "sfu-0", "sfu", "nvidia.com/gpu.shared", devs[1].UUID()+"::0"),
		pod("media", "sfu-1", "sfu", "nvidia.com/gpu.shared", devs[1].UUID()+"::1"),
		pod("ml", "small", "worker", "nvidia.com/mig-1g.5gb", migA),
		pod("ml", "unknown", "worker", "nvidia.com/mig-1g.5gb", migB),
	), podresources.InventoryResolver(store))
	c := NewCollector(attribution.NewAttributor(store, pods{a: a}, nil, attribution.WithPodMetas(testMetas())),
		Options{Hostname: "node-a", Interval: nvml.MinInterval, DriverVersion: "550.54.15"})

	wantPod := map[string]map[string]string{ // pod -> the labels it must have
		"inference-0": {"pod_uid": uidInference, "app_kubernetes_io_name": "inference", "team": "ml", "gpu": "0"},
		"sfu-0":       {"pod_uid": uidSFU0, "app_kubernetes_io_name": "sfu", "gpu": "1"},
		"sfu-1":       {"pod_uid": uidSFU1, "app_kubernetes_io_name": "sfu", "note": "a \"quoted\" \\ value\nover two lines", "gpu": "1"},
		"small":       {"pod_uid": uidSmall, "app_kubernetes_io_name": "small", "gpu": "2", "GPU_I_ID": "1"},
		"unknown":     {"gpu": "2", "GPU_I_ID": "2"},
	}
	seen := map[string]int{}
	for name, mf := range gather(t, c.Latest()) {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			p, ok := l["pod"]
			if !ok {
				for _, n := range []string{"pod_uid", "app_kubernetes_io_name", "team", "note"} {
					if _, bad := l[n]; bad {
						t.Errorf("%s%v: a series without a pod has %s", name, l, n)
					}
				}
				continue
			}
			seen[p]++
			for k, v := range wantPod[p] {
				if l[k] != v {
					t.Errorf("%s%v: %s=%q, want %q", name, l, k, l[k], v)
				}
			}
			if p == "unknown" {
				if _, bad := l["pod_uid"]; bad {
					t.Errorf("%s%v: a pod the watch does not know has a pod_uid", name, l)
				}
			}
		}
	}
	for p := range wantPod {
		if seen[p] == 0 {
			t.Errorf("no series of pod %s", p)
		}
	}
	// MIG instances: FB_USED of each, its pod's labels on it.
	if n := testutil.CollectAndCount(c.Latest(), "DCGM_FI_DEV_FB_USED"); n != 1+3+3 {
		t.Errorf("%d DCGM_FI_DEV_FB_USED series, want 7 (GPU 0's pod; GPU 1's device and its two pods; GPU 2 and its two MIG instances)", n)
	}
}
