package test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/gpu-telemetry/agent/test/internal/fakedcgm"
)

// DCGM's profiling fields on /metrics, through the agent binary over
// NVIDIA's mock NVML and the fake libdcgm.so.4 (--dcgm=embedded), which
// lists the mock's GPUs: each GPU's values under the 4.8 names and, with
// --compat.dcgm-exporter=4.9, DCGM 4.7's; stepped values followed; DCGM
// failing takes the profiling series away (gpu_agent_dcgm_up 0) while
// NVML's stay, and returning brings them back; a hung DCGM read neither
// stops NVML's sampling nor holds up SIGTERM.
func TestMockNVMLWithDCGM(t *testing.T) {
	_, configs := requireMockNVML(t)
	dir, err := fakedcgm.Build(t.TempDir())
	if err == fakedcgm.ErrNoCompiler && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	const profileFile = "mock-nvml-config-t4.yaml"
	raw, err := os.ReadFile(filepath.Join(configs, profileFile))
	if err != nil {
		t.Fatal(err)
	}
	var profile mockProfile
	if err := yaml.Unmarshal(raw, &profile); err != nil {
		t.Fatal(err)
	}
	var uuids []string
	for _, d := range profile.Devices {
		uuids = append(uuids, d.UUID)
	}
	if len(uuids) < 2 {
		t.Fatalf("profile %s has %d GPUs, want at least 2", profileFile, len(uuids))
	}
	// DCGM lists the GPUs in reverse: it matches them to NVML's by UUID,
	// not by index.
	var reversed []string
	for i := len(uuids) - 1; i >= 0; i-- {
		reversed = append(reversed, uuids[i])
	}
	ctl := fakedcgm.Control{Path: filepath.Join(t.TempDir(), "control")}
	values := func(gr float64, extra ...string) []string {
		// DCGM GPU 0 is the last NVML GPU.
		return append([]string{"gpus=" + strings.Join(reversed, ","),
			fmt.Sprintf("value.1001=%g", gr), "value.1004=0.75", "value.1005=0.125",
			"value.1009=3000000000", "value.1010=4000000000", fmt.Sprintf("value.0.1001=%g", gr/2)}, extra...)
	}
	if err := ctl.Set(values(0.5)...); err != nil {
		t.Fatal(err)
	}
	env := []string{"LD_LIBRARY_PATH=" + dir, fakedcgm.ControlEnv + "=" + ctl.Path}
	n48 := startMockNodeEnv(t, profileFile, nil, env, "--dcgm=embedded")
	n49 := startMockNodeEnv(t, profileFile, nil, env, "--dcgm=embedded", "--compat.dcgm-exporter=4.9")

	// profSeries checks that each GPU has exactly the profiling series
	// want (by name; gr is GR_ENGINE's value on all but the last GPU).
	last := uuids[len(uuids)-1]
	profSeries := func(s samples, want map[string]float64, grName string, gr float64) error {
		got := map[string]map[string]float64{}
		for _, x := range s {
			if strings.HasPrefix(x.name, "DCGM_FI_PROF_") {
				if got[x.labels["UUID"]] == nil {
					got[x.labels["UUID"]] = map[string]float64{}
				}
				got[x.labels["UUID"]][x.name] = x.value
			}
		}
		for _, u := range uuids {
			w := map[string]float64{grName: gr}
			if u == last {
				w[grName] = gr / 2
			}
			for k, v := range want {
				w[k] = v
			}
			if !maps.Equal(got[u], w) {
				return fmt.Errorf("GPU %s: %v, want %v", u, got[u], w)
			}
		}
		return nil
	}
	names48 := map[string]float64{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.75, "DCGM_FI_PROF_DRAM_ACTIVE": 0.125,
		"DCGM_FI_PROF_PCIE_TX_BYTES": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 4e9}
	names49 := map[string]float64{"DCGM_FI_PROF_TENSOR_UTIL_RATIO": 0.75, "DCGM_FI_PROF_DRAM_UTIL_RATIO": 0.125,
		"DCGM_FI_PROF_PCIE_TX_BYTES": 3e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 4e9}
	const wait = 30 * time.Second
	for _, gr := range []float64{0.5, 0.25} {
		if err := ctl.Set(values(gr)...); err != nil {
			t.Fatal(err)
		}
		s := n48.waitMetrics(t, wait, fmt.Sprintf("4.8 names, GR_ENGINE %v", gr), func(s samples) error {
			return profSeries(s, names48, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", gr)
		})
		if err := s.expect("gpu_agent_dcgm_up", 1); err != nil {
			t.Error(err)
		}
		checkNode(t, n48, s) // supported exactly where served, the profiling fields too
		for _, u := range uuids {
			if v := s.supported(u, "prof_gr_engine_active"); v != 1 {
				t.Errorf("GPU %s: gpu_agent_field_supported{field=prof_gr_engine_active} = %v, want 1", u, v)
			}
		}
		n49.waitMetrics(t, wait, fmt.Sprintf("4.9 names, GR_ENGINE %v", gr), func(s samples) error {
			return profSeries(s, names49, "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", gr)
		})
	}

	// DCGM fails: the profiling series go, NVML's stay.
	if err := ctl.Set(values(0.25, "fail.*=-21")...); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*mockNode{n48, n49} {
		s := n.waitMetrics(t, wait, "the profiling series gone", func(s samples) error {
			for _, x := range s {
				if strings.HasPrefix(x.name, "DCGM_FI_PROF_") {
					return fmt.Errorf("%s %v served", x.name, x.labels)
				}
			}
			return s.expect("gpu_agent_dcgm_up", 0)
		})
		for _, u := range uuids {
			if len(s.values("DCGM_FI_DEV_POWER_USAGE", u)) == 0 && len(s.values("DCGM_FI_DEV_BOARD_POWER_WATTS", u)) == 0 {
				t.Errorf("GPU %s: NVML's power series gone with DCGM", u)
			}
			if v := s.supported(u, "prof_gr_engine_active"); v != 0 {
				t.Errorf("GPU %s: gpu_agent_field_supported{field=prof_gr_engine_active} = %v with DCGM down, want 0", u, v)
			}
		}
	}

	// The host engine returns: reconnected (backoff from 1 s), served again.
	if err := ctl.Set(values(0.75)...); err != nil {
		t.Fatal(err)
	}
	n48.waitMetrics(t, wait, "the profiling series back", func(s samples) error {
		if err := s.expect("gpu_agent_dcgm_up", 1); err != nil {
			return err
		}
		return profSeries(s, names48, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.75)
	})

	// A read that never returns: DCGM down after the call timeout (10 s),
	// NVML sampled and served on, and SIGTERM still ends the agent within
	// 5 s with the call in flight.
	if err := ctl.Set(values(0.75, "hang.dcgmGetValuesSince_v2=600000")...); err != nil {
		t.Fatal(err)
	}
	s := n48.waitMetrics(t, wait, "DCGM down on a hung read", func(s samples) error {
		timeouts := 0.0
		for _, x := range s {
			if x.name == "gpu_agent_dcgm_errors_total" && x.labels["reason"] == "timeout" {
				timeouts = x.value
			}
		}
		if timeouts < 1 {
			return fmt.Errorf("no timeout counted")
		}
		return s.expect("gpu_agent_dcgm_up", 0)
	})
	ticks, _ := s.value("gpu_agent_samples_total")
	const more = 5
	s = n48.waitMetrics(t, wait, fmt.Sprintf("%d more ticks while DCGM's read hangs", more), func(s samples) error {
		if n, _ := s.value("gpu_agent_samples_total"); n < ticks+more {
			return fmt.Errorf("%v ticks since DCGM hung", n-ticks)
		}
		return nil
	})
	for _, u := range uuids {
		if len(s.values("DCGM_FI_DEV_POWER_USAGE", u)) == 0 {
			t.Errorf("GPU %s: NVML's power series gone while DCGM's read hangs", u)
		}
	}
	sent := time.Now()
	if err := n48.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n48.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("agent still running 5s after SIGTERM with a DCGM call in flight")
	}
	if code := n48.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	t.Logf("exited %s after SIGTERM with DCGM's read hung", time.Since(sent).Round(time.Millisecond))
}
