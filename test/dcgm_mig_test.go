package test

import (
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/prometheus/client_golang/prometheus"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	internalagent "github.com/gpu-telemetry/agent/internal/agent"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/nvml/calls"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/test/internal/fakedcgm"
)

// TestDCGMOverMIG maps DCGM's GPU instance entities to the agent's MIG
// devices, in one process: the real sampler over a simulated node whose
// GPU 1 is in MIG mode (its instances go-nvml mocks: neither NVIDIA's
// mock library nor the simulator has MIG), the real Source over the fake
// libdcgm.so.4 listing that GPU's two GPU instances, the agent's extra
// source joining them, and the exporter writing them. Each instance's
// profiling series carries its own values, under dcgm-exporter's MIG
// labels (GPU_I_PROFILE, GPU_I_ID) and the pod that holds it; the parent
// and the other GPU keep theirs.
func TestDCGMOverMIG(t *testing.T) {
	if os.Getenv(dcgmChildEnv) == "mig" {
		dcgmMIGChild(t)
		return
	}
	dir, err := fakedcgm.Build(t.TempDir())
	if err == fakedcgm.ErrNoCompiler && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	runDCGMChild(t, "TestDCGMOverMIG", "mig", dir)
}

// migGPU is a simulated GPU in MIG mode with go-nvml mock instances.
type migGPU struct {
	*sim.Device
	migs map[int]gonvml.Device
}

func (migGPU) GetMigMode() (int, int, gonvml.Return) {
	return gonvml.DEVICE_MIG_ENABLE, gonvml.DEVICE_MIG_ENABLE, gonvml.SUCCESS
}
func (migGPU) GetMaxMigDeviceCount() (int, gonvml.Return) { return 7, gonvml.SUCCESS }
func (migGPU) GetUtilizationRates() (gonvml.Utilization, gonvml.Return) {
	return gonvml.Utilization{}, gonvml.ERROR_NOT_SUPPORTED // as a MIG-enabled GPU answers
}
func (d migGPU) GetMigDeviceHandleByIndex(i int) (gonvml.Device, gonvml.Return) {
	if m, ok := d.migs[i]; ok {
		return m, gonvml.SUCCESS
	}
	return nil, gonvml.ERROR_NOT_FOUND
}

func migDevice(uuid string, gi, ci int) *mock.Device {
	return &mock.Device{
		GetUUIDFunc:              func() (string, gonvml.Return) { return uuid, gonvml.SUCCESS },
		GetGpuInstanceIdFunc:     func() (int, gonvml.Return) { return gi, gonvml.SUCCESS },
		GetComputeInstanceIdFunc: func() (int, gonvml.Return) { return ci, gonvml.SUCCESS },
		GetNameFunc:              func() (string, gonvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 1g.5gb", gonvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (gonvml.Memory_v2, gonvml.Return) {
			return gonvml.Memory_v2{Total: 5 << 30, Used: 1 << 30, Free: 4 << 30}, gonvml.SUCCESS
		},
	}
}

// migNodeLibrary is the simulated node with its GPU 1 in MIG mode.
type migNodeLibrary struct {
	*sim.Library
	parent migGPU
}

func (l migNodeLibrary) DeviceGetHandleByIndex(i int) (calls.Device, gonvml.Return) {
	if i == 1 {
		return l.parent, gonvml.SUCCESS
	}
	return l.Library.DeviceGetHandleByIndex(i)
}

// kubeletPods is a fixed kubelet answer.
type kubeletPods struct{ a *podresources.Assignments }

func (p kubeletPods) DevicePods() *attribution.DevicePods { return p.a.DevicePods() }
func (p kubeletPods) Stale() bool                         { return false }

func dcgmMIGChild(t *testing.T) {
	const (
		migA = "MIG-5f1e6a2b-0c3d-5e4f-8a9b-1c2d3e4f5a6b"
		migB = "MIG-6a2b7c3d-1e4f-5a6b-9c0d-2e3f4a5b6c7d"
	)
	node := sim.New(sim.Options{Devices: 2, Seed: 7, Static: true})
	devs := node.Devices()
	// GI 1 has a second compute instance: still one MIG device, one
	// GPU instance entity.
	lib := migNodeLibrary{Library: node, parent: migGPU{Device: devs[1], migs: map[int]gonvml.Device{
		0: migDevice(migA, 1, 0), 1: migDevice("MIG-7b3c8d4e-2f5a-4b6c-8d0e-3f4a5b6c7d8e", 1, 1), 3: migDevice(migB, 2, 0)}}}

	// DCGM lists the GPUs in the other order: DCGM GPU 0 is NVML's GPU 1,
	// whose GPU instances 1 and 2 are entities 0 and 1.
	ctl := fakedcgm.Control{Path: os.Getenv(fakedcgm.ControlEnv)}
	if err := ctl.Set("gpus="+devs[1].UUID()+","+devs[0].UUID(), "instances=0/1,0/2",
		"value.0.1001=0.5", "value.1.1001=0.125", "value.i0.1001=0.25", "value.i1.1001=0.75",
		"value.i0.1004=0.625"); err != nil {
		t.Fatal(err)
	}
	src, stop := startDCGM(t, dcgm.Embedded, "")
	defer stop()
	waitDCGM(t, src, "up", func() bool { r := src.Latest(); return r != nil && len(r.Instances) == 2 })

	store := telemetry.NewStore(nvml.MinInterval, time.Second)
	s, err := nvml.Open(t.Context(), lib, nvml.Config{Interval: nvml.MinInterval, Window: time.Second, Store: store,
		Extra: internalagent.NewDCGMExtra(src), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	s.Tick()
	snap := store.Latest()
	if len(snap.Devices) != 2 || len(snap.Devices[1].MIG) != 2 {
		t.Fatalf("inventory: %+v", snap.Devices)
	}
	a := podresources.BuildAssignments(&podresourcesv1.ListPodResourcesResponse{PodResources: []*podresourcesv1.PodResources{{
		Namespace: "ml", Name: "small", Containers: []*podresourcesv1.ContainerResources{{Name: "worker",
			Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nvidia.com/mig-1g.5gb", DeviceIds: []string{migA}}}}},
	}}}, podresources.InventoryResolver(store))
	c := exporter.NewCollector(attribution.NewAttributor(store, kubeletPods{a}, nil),
		exporter.Options{Hostname: "node-a", Interval: nvml.MinInterval})

	key := func(labels map[string]string) string {
		return fmt.Sprintf("UUID=%s GPU_I_ID=%s GPU_I_PROFILE=%s pod=%s", labels["UUID"], labels["GPU_I_ID"], labels["GPU_I_PROFILE"], labels["pod"])
	}
	got := map[string]map[string]float64{}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Latest())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if got[key(l)] == nil {
				got[key(l)] = map[string]float64{}
			}
			got[key(l)][mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	for k, want := range map[string]map[string]float64{
		key(map[string]string{"UUID": devs[0].UUID()}): {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.125},
		key(map[string]string{"UUID": devs[1].UUID()}): {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.5},
		key(map[string]string{"UUID": devs[1].UUID(), "GPU_I_ID": "1", "GPU_I_PROFILE": "1g.5gb", "pod": "small"}): {
			"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.25, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.625},
		key(map[string]string{"UUID": devs[1].UUID(), "GPU_I_ID": "2", "GPU_I_PROFILE": "1g.5gb"}): {
			"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.75},
	} {
		series, ok := got[k]
		if !ok {
			t.Errorf("no series %s; have %v", k, keys(got))
			continue
		}
		for name, v := range want {
			if series[name] != v {
				t.Errorf("%s %s = %v, want %v", name, k, series[name], v)
			}
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
