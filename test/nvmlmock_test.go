package test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/gpu-telemetry/agent/test/internal/nvmlmock"
)

// These tests run the real binary over NVIDIA's mock NVML
// (github.com/NVIDIA/k8s-test-infra, pkg/gpu/mocknvml): a real
// libnvidia-ml.so.1 that answers from a YAML GPU profile, so the agent's
// cgo/dlopen path, go-nvml's struct layouts and the driver's call
// semantics are exercised without a GPU.
//
// What the mock models, and these tests check: identity, memory, power,
// temperature, clocks and utilization from the profile; a field left out
// of the profile answers NOT_SUPPORTED; runtime overrides re-read every
// MOCK_NVML_OVERRIDES_TTL; failure injection (mode: lost answers
// GPU_IS_LOST). What it does not model, and is tested over go-nvml mocks
// in internal/nvml instead: call latency (the real GetPcieThroughput blocks
// 20 ms) and calls that hang; the PCIe byte counters (FI 197/198 answer
// NOT_SUPPORTED, so the agent falls back to GetPcieThroughput, which the
// mock answers with 0; the energy counter, FI 83, does answer through the
// same GetFieldValues call, and is checked); GetSamples (NOT_SUPPORTED);
// MIG devices.

// Where the mock's source is, and what builds it.
const (
	mockSrcEnv = nvmlmock.SrcEnv
	mockLibEnv = nvmlmock.LibEnv
	mockTTL    = 50 * time.Millisecond
)

var (
	mockOnce sync.Once
	mockLib  string
	mockCfgs string
	mockErr  error
)

// requireMockNVML returns the built mock library and its profiles'
// directory, building the library once per test run into the user's
// cache (keyed by a hash of its source, so later runs reuse it). Without
// the source the test skips saying how to get it, except under CI=true,
// where a missing source or a failed build fails the test.
func requireMockNVML(t *testing.T) (lib, configs string) {
	t.Helper()
	mockOnce.Do(func() { mockLib, mockCfgs, mockErr = nvmlmock.Build() })
	if mockErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mock NVML unavailable and CI=true: %v", mockErr)
		}
		t.Skipf("mock NVML unavailable: %v\n"+
			"Get it from github.com/NVIDIA/k8s-test-infra (pkg/gpu/mocknvml): clone it and set %s to the clone, "+
			"or build libnvidia-ml.so.1 there (make -C pkg/gpu/mocknvml) and set %s to it and %s to the clone. "+
			"With CI=true this fails instead.", mockErr, mockSrcEnv, mockLibEnv, mockSrcEnv)
	}
	return mockLib, mockCfgs
}

// mockProfile is the part of a mock NVML profile the tests check against.
type mockProfile struct {
	DeviceDefaults struct {
		Name   string `yaml:"name"`
		Memory struct {
			TotalBytes    uint64 `yaml:"total_bytes"`
			ReservedBytes uint64 `yaml:"reserved_bytes"`
		} `yaml:"memory"`
		Power struct {
			CurrentDrawMW uint64 `yaml:"current_draw_mw"`
			EnergyMJ      uint64 `yaml:"total_energy_consumption_mj"`
		} `yaml:"power"`
		Thermal struct {
			TemperatureGPUC    int `yaml:"temperature_gpu_c"`
			TemperatureMemoryC int `yaml:"temperature_memory_c"`
		} `yaml:"thermal"`
		RemappedRows struct {
			Correctable     int  `yaml:"correctable"`
			Uncorrectable   int  `yaml:"uncorrectable"`
			FailureOccurred bool `yaml:"failure_occurred"`
		} `yaml:"remapped_rows"`
		Clocks struct {
			SMCurrent     int `yaml:"sm_current"`
			MemoryCurrent int `yaml:"memory_current"`
		} `yaml:"clocks"`
	} `yaml:"device_defaults"`
	NVLink struct {
		LinksPerGPU   int     `yaml:"links_per_gpu"`
		BandwidthMbps float64 `yaml:"bandwidth_per_link_mbps"`
		Defaults      struct {
			DutyCycle float64 `yaml:"duty_cycle"`
		} `yaml:"defaults"`
	} `yaml:"nvlink"`
	Devices []struct {
		Index int    `yaml:"index"`
		UUID  string `yaml:"uuid"`
		PCI   struct {
			BusID string `yaml:"bus_id"`
		} `yaml:"pci"`
		Minor int `yaml:"minor_number"`
	} `yaml:"devices"`
}

// mockNode is one agent over the mock library with a profile.
type mockNode struct {
	*agent
	profile   mockProfile
	overrides string
	interval  time.Duration
}

// startMockNode runs the agent over the mock library with the profile
// file, after edit (if not nil) rewrote the profile's YAML.
func startMockNode(t *testing.T, profileFile string, edit func(yaml.MapSlice) yaml.MapSlice) *mockNode {
	t.Helper()
	return startMockNodeArgs(t, profileFile, edit)
}

// startMockNodeArgs is startMockNode with more agent flags.
func startMockNodeArgs(t *testing.T, profileFile string, edit func(yaml.MapSlice) yaml.MapSlice, args ...string) *mockNode {
	t.Helper()
	return startMockNodeEnv(t, profileFile, edit, nil, args...)
}

// startMockNodeEnv is startMockNodeArgs with more environment (the fake
// libdcgm.so.4's LD_LIBRARY_PATH, say).
func startMockNodeEnv(t *testing.T, profileFile string, edit func(yaml.MapSlice) yaml.MapSlice, env []string, args ...string) *mockNode {
	t.Helper()
	lib, configs := requireMockNVML(t)
	raw, err := os.ReadFile(filepath.Join(configs, profileFile))
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		var doc yaml.MapSlice
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		if raw, err = yaml.Marshal(edit(doc)); err != nil {
			t.Fatal(err)
		}
	}
	n := &mockNode{interval: 250 * time.Millisecond}
	if err := yaml.Unmarshal(raw, &n.profile); err != nil {
		t.Fatalf("reading profile %s: %v", profileFile, err)
	}
	dir := t.TempDir()
	profile := filepath.Join(dir, "profile.yaml")
	n.overrides = filepath.Join(dir, "overrides.yaml")
	if err := os.WriteFile(profile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	n.setOverrides(t, "")
	n.agent = startAgentEnv(t, append([]string{
		"MOCK_NVML_CONFIG=" + profile,
		"MOCK_NVML_OVERRIDES=" + n.overrides,
		"MOCK_NVML_OVERRIDES_TTL=" + mockTTL.String(),
	}, env...), append([]string{"--nvml.library-path=" + lib, "--interval=" + n.interval.String(),
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock"}, args...)...)
	return n
}

// setOverrides replaces the mock's runtime override file, whole, with a
// rename so the mock never reads half of it.
func (n *mockNode) setOverrides(t *testing.T, doc string) {
	t.Helper()
	tmp := n.overrides + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, n.overrides); err != nil {
		t.Fatal(err)
	}
}

// fieldMetrics maps the agent's field names (gpu_agent_field_supported's
// field label) to the metric that serves the field, for every field
// served on its own.
var fieldMetrics = map[string]string{
	"gpu_util":            "DCGM_FI_DEV_GPU_UTIL",
	"mem_copy_util":       "DCGM_FI_DEV_MEM_COPY_UTIL",
	"enc_util":            "DCGM_FI_DEV_ENC_UTIL",
	"dec_util":            "DCGM_FI_DEV_DEC_UTIL",
	"fb_used":             "DCGM_FI_DEV_FB_USED",
	"fb_free":             "DCGM_FI_DEV_FB_FREE",
	"fb_reserved":         "DCGM_FI_DEV_FB_RESERVED",
	"temperature":         "DCGM_FI_DEV_GPU_TEMP",
	"power":               "DCGM_FI_DEV_POWER_USAGE",
	"energy":              "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
	"sm_clock":            "DCGM_FI_DEV_SM_CLOCK",
	"mem_clock":           "DCGM_FI_DEV_MEM_CLOCK",
	"pcie_tx":             "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
	"pcie_rx":             "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
	"enc_sessions":        "gpu_agent_encoder_sessions",
	"enc_fps":             "gpu_agent_encoder_fps",
	"enc_latency":         "gpu_agent_encoder_latency_seconds",
	"enc_sampling_period": "gpu_agent_utilization_sampling_period_seconds",
	"dec_sampling_period": "gpu_agent_utilization_sampling_period_seconds",
	// DCGM's (--dcgm), those of the default list.
	"prof_gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
	"prof_tensor_active":    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
	"prof_dram_active":      "DCGM_FI_PROF_DRAM_ACTIVE",
	"prof_pcie_tx":          "DCGM_FI_PROF_PCIE_TX_BYTES",
	"prof_pcie_rx":          "DCGM_FI_PROF_PCIE_RX_BYTES",
	// The slow fields.
	"memory_temperature":          "DCGM_FI_DEV_MEMORY_TEMP",
	"pcie_replay":                 "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
	"remapped_rows_correctable":   "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
	"remapped_rows_uncorrectable": "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
	"row_remap_failure":           "DCGM_FI_DEV_ROW_REMAP_FAILURE",
	"vgpu_license":                "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
	"nvlink_bandwidth":            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
}

// checkNode asserts what every mock node serves: each profile GPU with
// its identity, values in the exported units, and a field present exactly
// where gpu_agent_field_supported says it is supported.
func checkNode(t *testing.T, n *mockNode, s samples) {
	t.Helper()
	p := n.profile
	if got := len(s.series("gpu_agent_device_up")); got != len(p.Devices) {
		t.Errorf("%d GPUs served, the profile has %d", got, len(p.Devices))
	}
	for _, d := range p.Devices {
		temp := s.find("DCGM_FI_DEV_GPU_TEMP", d.UUID)
		if temp == nil {
			t.Errorf("GPU %s (%d): no temperature", d.UUID, d.Index)
			continue
		}
		want := map[string]string{
			"gpu":        strconv.Itoa(d.Index),
			"pci_bus_id": "0000" + d.PCI.BusID, // NVML's busId has the 8-digit domain
			"device":     "nvidia" + strconv.Itoa(d.Minor),
			"modelName":  p.DeviceDefaults.Name,
			"Hostname":   "golden-node",
		}
		for k, v := range want {
			if temp.labels[k] != v {
				t.Errorf("GPU %s: label %s=%q, want %q", d.UUID, k, temp.labels[k], v)
			}
		}
	}

	// Units, on GPU 0 (per-device values in the profile override the
	// defaults only where a device says so; GPU 0 of these does not).
	uuid := p.Devices[0].UUID
	const mib = 1 << 20
	dd := p.DeviceDefaults
	used, free, reserved := s.get("DCGM_FI_DEV_FB_USED", uuid), s.get("DCGM_FI_DEV_FB_FREE", uuid), s.get("DCGM_FI_DEV_FB_RESERVED", uuid)
	if total := float64(dd.Memory.TotalBytes) / mib; math.Abs(used+free+reserved-total) > 1 {
		t.Errorf("FB used %v + free %v + reserved %v MiB = %v, want the profile's %v MiB", used, free, reserved, used+free+reserved, total)
	}
	if want := float64(dd.Memory.ReservedBytes) / mib; math.Abs(reserved-want) > 1 {
		t.Errorf("FB reserved %v MiB, want %v", reserved, want)
	}
	if got, want := s.get("DCGM_FI_DEV_POWER_USAGE", uuid), float64(dd.Power.CurrentDrawMW)/1000; got != want {
		t.Errorf("power %v W, want the profile's %v mW in W (%v)", got, dd.Power.CurrentDrawMW, want)
	}
	// Energy comes through GetFieldValues (FI_DEV_TOTAL_ENERGY_CONSUMPTION),
	// which the mock answers from the profile: the cgo path of the batch.
	if got := s.get("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", uuid); got != float64(dd.Power.EnergyMJ) {
		t.Errorf("energy %v mJ, want the profile's %d", got, dd.Power.EnergyMJ)
	}
	if got := s.get("DCGM_FI_DEV_GPU_TEMP", uuid); got != float64(dd.Thermal.TemperatureGPUC) {
		t.Errorf("temperature %v, want %d °C", got, dd.Thermal.TemperatureGPUC)
	}
	if dd.Clocks.SMCurrent != 0 {
		if got := s.get("DCGM_FI_DEV_SM_CLOCK", uuid); got != float64(dd.Clocks.SMCurrent) {
			t.Errorf("SM clock %v, want %d MHz", got, dd.Clocks.SMCurrent)
		}
	}

	// Supported exactly where served, on every GPU.
	for _, sup := range s.series("gpu_agent_field_supported") {
		metric, ok := fieldMetrics[sup.labels["field"]]
		if !ok {
			continue // fb_total: served only as part of the others
		}
		present := s.find(metric, sup.labels["UUID"]) != nil
		if present != (sup.value == 1) {
			t.Errorf("GPU %s field %s: gpu_agent_field_supported %v but %s present=%v",
				sup.labels["UUID"], sup.labels["field"], sup.value, metric, present)
		}
	}
}

func TestMockNVMLProfiles(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		// unsupported are the fields the profile does not model: no
		// vGPU licensing in either (its calls are stubs answering
		// NOT_SUPPORTED, as bare metal does), no NVLink fabric on the T4,
		// no fan on either (a passively cooled T4, a liquid-cooled SXM
		// H100: fan count 0, NOT_SUPPORTED).
		unsupported []string
		nvlink      bool
	}{
		{"T4", "mock-nvml-config-t4.yaml", []string{"vgpu_license", "nvlink_bandwidth", "fan_speed"}, false},
		{"H100", "mock-nvml-config-h100.yaml", []string{"vgpu_license", "fan_speed"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startMockNode(t, tc.file, nil)
			s := n.waitMetrics(t, 10*time.Second, "PCIe throughput from the fallback, and the NVLink rate", func(s samples) error {
				if s.find("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", n.profile.Devices[0].UUID) == nil {
					return fmt.Errorf("no PCIe TX yet")
				}
				// A rate needs two slow reads: absent until the second.
				for _, d := range n.profile.Devices {
					if tc.nvlink && s.find("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", d.UUID) == nil {
						return fmt.Errorf("no NVLink rate of GPU %d yet", d.Index)
					}
				}
				return nil
			})
			checkNode(t, n, s)
			for _, sup := range s.series("gpu_agent_field_supported") {
				if sup.labels["field"] == "fb_total" {
					continue // served only as part of the others
				}
				// DCGM's fields need --dcgm, which these nodes run without.
				want := !slices.Contains(tc.unsupported, sup.labels["field"]) && !strings.HasPrefix(sup.labels["field"], "prof_")
				if (sup.value == 1) != want {
					t.Errorf("GPU %s: %s supported %v, want %v: the %s profile models every field but %v", sup.labels["UUID"], sup.labels["field"], sup.value, want, tc.name, tc.unsupported)
				}
			}
			// The slow fields, from the profile, through the real cgo
			// calls (GetFieldValues, GetPcieReplayCounter, GetRemappedRows).
			uuid := n.profile.Devices[0].UUID
			dd := n.profile.DeviceDefaults
			rr := dd.RemappedRows
			for metric, want := range map[string]float64{
				"DCGM_FI_DEV_MEMORY_TEMP":                 float64(dd.Thermal.TemperatureMemoryC),
				"DCGM_FI_DEV_PCIE_REPLAY_COUNTER":         0, // the mock's counter is always 0
				"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS":   float64(rr.Correctable),
				"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": float64(rr.Uncorrectable),
				"DCGM_FI_DEV_ROW_REMAP_FAILURE":           map[bool]float64{false: 0, true: 1}[rr.FailureOccurred],
			} {
				if got := s.get(metric, uuid); got != want {
					t.Errorf("%s on GPU 0 = %v, want the profile's %v", metric, got, want)
				}
			}
			if dd.Thermal.TemperatureMemoryC == 0 {
				t.Error("the profile has no memory temperature: the check above proves nothing")
			}
			if tc.nvlink {
				// The mock's NVLink data counters accrue at the link's
				// line rate times its duty cycle (default 0.05), TX and
				// RX alike, on every link (its engine/topology.go). It
				// takes bandwidth_per_link_mbps as MB/s and accrues those
				// bytes into counters NVML documents in KiB, so a
				// second's increase is 1024 times the profile's line
				// rate: the agent reads them as NVML says (KiB), and the
				// rate, once two slow reads are in, in DCGM's unit
				// (KiB/s / 1000), is that increase / 1000.
				nv := n.profile.NVLink
				duty := nv.Defaults.DutyCycle
				if duty == 0 {
					duty = 0.05
				}
				want := float64(nv.LinksPerGPU) * 2 * nv.BandwidthMbps * 1e6 * duty / 1000
				if want == 0 {
					t.Fatal("the profile has no NVLink rate: the check below proves nothing")
				}
				n.waitMetrics(t, 10*time.Second, "the NVLink rate", func(s samples) error {
					if v := s.get("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", uuid); !(math.Abs(v-want) <= want/100) {
						return fmt.Errorf("NVLink bandwidth %v, want the profile's %v within 1%%", v, want)
					}
					return nil
				})
			}

			// A load step through the override file shows in /metrics.
			// How soon is logged, not asserted: the bench harness
			// measures latency, a loaded machine would fail a bound.
			n.setOverrides(t, "all:\n  utilization:\n    gpu: 87\n    memory: 41\n")
			written := time.Now()
			s = n.waitMetrics(t, 10*time.Second, "the load step", func(s samples) error {
				for _, d := range n.profile.Devices {
					if v := s.get("DCGM_FI_DEV_GPU_UTIL", d.UUID); v != 87 {
						return fmt.Errorf("GPU %d utilization %v", d.Index, v)
					}
				}
				return nil
			})
			at, _ := s.value("gpu_agent_last_sample_timestamp_seconds")
			took := time.Unix(0, int64(at*1e9)).Sub(written)
			if v := s.get("DCGM_FI_DEV_MEM_COPY_UTIL", n.profile.Devices[0].UUID); v != 41 {
				t.Errorf("memory copy utilization %v, want 41", v)
			}
			t.Logf("load step in /metrics from a sample %s after the write (interval %s, the mock's TTL %s)", took.Round(time.Millisecond), n.interval, mockTTL)
		})
	}
}

// A field the profile leaves out answers NOT_SUPPORTED: the agent leaves
// it out and says so.
func TestMockNVMLUnsupportedField(t *testing.T) {
	n := startMockNode(t, "mock-nvml-config-t4.yaml", func(doc yaml.MapSlice) yaml.MapSlice {
		for i, item := range doc {
			if item.Key != "device_defaults" {
				continue
			}
			defaults := item.Value.(yaml.MapSlice)
			kept := defaults[:0:0]
			for _, kv := range defaults {
				if kv.Key != "clocks" {
					kept = append(kept, kv)
				}
			}
			doc[i].Value = kept
		}
		return doc
	})
	s := n.waitMetrics(t, 10*time.Second, "a sample", func(s samples) error {
		if s.find("DCGM_FI_DEV_GPU_TEMP", n.profile.Devices[0].UUID) == nil {
			return fmt.Errorf("no temperature yet")
		}
		return nil
	})
	checkNode(t, n, s)
	for _, d := range n.profile.Devices {
		for _, f := range []string{"sm_clock", "mem_clock"} {
			if v := s.supported(d.UUID, f); v != 0 {
				t.Errorf("GPU %d: %s supported = %v without clocks in the profile", d.Index, f, v)
			}
		}
		if s.find("DCGM_FI_DEV_SM_CLOCK", d.UUID) != nil {
			t.Errorf("GPU %d: SM clock served without clocks in the profile", d.Index)
		}
	}
}

// One GPU made to fail through the mock's failure injection (lost, as a
// GPU that fell off the bus): it is reported down, its series go, and the
// others keep being sampled.
func TestMockNVMLLostGPU(t *testing.T) {
	n := startMockNode(t, "mock-nvml-config-t4.yaml", nil)
	lost := n.profile.Devices[1]
	n.waitMetrics(t, 10*time.Second, "GPU 1 up", func(s samples) error { return s.expectUp(lost.UUID, 1) })
	n.setOverrides(t, fmt.Sprintf("devices:\n  %q:\n    failure:\n      mode: lost\n", strconv.Itoa(lost.Index)))
	s := n.waitMetrics(t, 10*time.Second, "GPU 1 reported lost", func(s samples) error { return s.expectUp(lost.UUID, 0) })
	if s.find("DCGM_FI_DEV_GPU_TEMP", lost.UUID) != nil {
		t.Error("lost GPU's temperature still served")
	}
	ticks, _ := s.value("gpu_agent_samples_total")
	s = n.waitMetrics(t, 10*time.Second, "more samples of the others", func(s samples) error {
		if v, _ := s.value("gpu_agent_samples_total"); v < ticks+4 {
			return fmt.Errorf("gpu_agent_samples_total %v", v)
		}
		return nil
	})
	for _, d := range n.profile.Devices {
		if d.UUID == lost.UUID {
			continue
		}
		if err := s.expectUp(d.UUID, 1); err != nil {
			t.Error(err)
		}
		if s.find("DCGM_FI_DEV_GPU_TEMP", d.UUID) == nil {
			t.Errorf("GPU %d stopped being served after GPU %d was lost", d.Index, lost.Index)
		}
	}
	if !strings.Contains(n.Output(), "GPU lost") {
		t.Errorf("loss not logged:\n%s", n.Output())
	}
}

// series returns every sample of metric.
func (ss samples) series(metric string) []sample {
	var out []sample
	for _, s := range ss {
		if s.name == metric {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].labels["gpu"] < out[j].labels["gpu"] })
	return out
}

// find returns the first sample of metric for the GPU with uuid, or nil.
func (ss samples) find(metric, uuid string) *sample {
	for i := range ss {
		if ss[i].name == metric && ss[i].labels["UUID"] == uuid {
			return &ss[i]
		}
	}
	return nil
}

// get returns the value of metric for the GPU with uuid, NaN if absent.
func (ss samples) get(metric, uuid string) float64 {
	if s := ss.find(metric, uuid); s != nil {
		return s.value
	}
	return math.NaN()
}

// supported returns gpu_agent_field_supported for a GPU and field, NaN if absent.
func (ss samples) supported(uuid, field string) float64 {
	for _, s := range ss {
		if s.name == "gpu_agent_field_supported" && s.labels["UUID"] == uuid && s.labels["field"] == field {
			return s.value
		}
	}
	return math.NaN()
}

func (ss samples) expectUp(uuid string, want float64) error {
	if got := ss.get("gpu_agent_device_up", uuid); got != want {
		return fmt.Errorf("gpu_agent_device_up{UUID=%q} = %v, want %v", uuid, got, want)
	}
	return nil
}
