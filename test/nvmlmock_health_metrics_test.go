package test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The health fields on /metrics, through the agent binary over NVIDIA's
// mock library, with a field list that names them under dcgm-exporter's
// 4.8 names and DCGM 4.7's, served as generation 4.9: each name in its
// unit, each value the profile's. ECC counts are not zero, so a field
// read as 0 fails.
func TestMockNVMLHealthMetrics(t *testing.T) {
	list := filepath.Join(t.TempDir(), "health.csv")
	names := []string{
		"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
		"DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION", "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
		"DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS", "DCGM_FI_DEV_PSTATE", "DCGM_FI_DEV_GPU_PSTATE",
		"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_FAN_SPEED",
		"DCGM_FI_DEV_RETIRED_SBE", "DCGM_FI_DEV_PAGE_RETIRED_SBE_TOTAL",
	}
	var csv strings.Builder
	for _, n := range names {
		fmt.Fprintf(&csv, "%s, counter, x\n", n)
	}
	if err := os.WriteFile(list, []byte(csv.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startMockNodeArgs(t, "mock-nvml-config-t4.yaml", withHealthErrors, "-f", list, "--compat.dcgm-exporter=4.9")
	uuid := n.profile.Devices[0].UUID
	want := map[string]float64{
		"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 3, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 1,
		"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": 41, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": 2,
		"DCGM_FI_DEV_POWER_VIOLATION": 1.5e9, "DCGM_FI_DEV_THERMAL_VIOLATION": 0.25e9, // ns
		"DCGM_FI_DEV_ENFORCED_POWER_LIMIT": 65, "DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS": 65,
		"DCGM_FI_DEV_PSTATE": 8, "DCGM_FI_DEV_GPU_PSTATE": 8,
		"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": 0xA, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 0xA,
	}
	s := n.agent.waitMetrics(t, 15*time.Second, "the health fields", func(s samples) error {
		for name := range want {
			if s.find(name, uuid) == nil {
				return fmt.Errorf("no %s yet", name)
			}
		}
		return nil
	})
	for name, w := range want {
		if got := s.get(name, uuid); math.IsNaN(got) || math.Abs(got-w) > 1e-6*max(1, w) {
			t.Errorf("%s = %v, want %v", name, got, w)
		}
		// Generation 4.9's labels.
		if smp := s.find(name, uuid); smp != nil {
			if _, ok := smp.labels["hostname"]; !ok {
				t.Errorf("%s: no hostname label: %v", name, smp.labels)
			}
		}
	}
	// The T4 has no fan: absent, not 0, and reported unsupported. The
	// mock answers no retired page whatever its profile says: the series
	// is there under both names, with the library's answer.
	if s.find("DCGM_FI_DEV_FAN_SPEED", uuid) != nil || s.supported(uuid, "fan_speed") != 0 {
		t.Errorf("fan speed on a fanless T4: %v, supported %v", s.get("DCGM_FI_DEV_FAN_SPEED", uuid), s.supported(uuid, "fan_speed"))
	}
	if a, b := s.get("DCGM_FI_DEV_RETIRED_SBE", uuid), s.get("DCGM_FI_DEV_PAGE_RETIRED_SBE_TOTAL", uuid); math.IsNaN(a) || a != b {
		t.Errorf("retired pages: %v and %v", a, b)
	}
	// A default name the list does not name is not served.
	if s.find("DCGM_FI_DEV_GPU_UTIL_RATIO", uuid) != nil || s.find("DCGM_FI_DEV_GPU_UTIL", uuid) != nil {
		t.Error("a field the list does not name is served")
	}
}
