package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.yaml.in/yaml/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// healthProfile is the part of a mock NVML profile the health fields come
// from (its engine/config_types.go).
type healthProfile struct {
	DeviceDefaults struct {
		ECC struct {
			Errors struct {
				Volatile  eccCounts `yaml:"volatile"`
				Aggregate eccCounts `yaml:"aggregate"`
			} `yaml:"errors"`
		} `yaml:"ecc"`
		RetiredPages struct {
			SingleBit struct {
				Count int `yaml:"count"`
			} `yaml:"single_bit_retirement"`
			DoubleBit struct {
				Count int `yaml:"count"`
			} `yaml:"double_bit_retirement"`
			PendingRetirement bool `yaml:"pending_retirement"`
		} `yaml:"retired_pages"`
		ClocksThrottleReasons struct {
			GPUIdle                   bool `yaml:"gpu_idle"`
			ApplicationsClocksSetting bool `yaml:"applications_clocks_setting"`
			SWPowerCap                bool `yaml:"sw_power_cap"`
			HWSlowdown                bool `yaml:"hw_slowdown"`
			SyncBoost                 bool `yaml:"sync_boost"`
			SWThermalSlowdown         bool `yaml:"sw_thermal_slowdown"`
			HWThermalSlowdown         bool `yaml:"hw_thermal_slowdown"`
			HWPowerBrakeSlowdown      bool `yaml:"hw_power_brake_slowdown"`
			Counters                  struct {
				SWPowerCapUS        uint64 `yaml:"sw_power_cap_us"`
				SyncBoostUS         uint64 `yaml:"sync_boost_us"`
				SWThermalSlowdownUS uint64 `yaml:"sw_thermal_slowdown_us"`
			} `yaml:"counters"`
		} `yaml:"clocks_throttle_reasons"`
		Power struct {
			EnforcedLimitMW uint32 `yaml:"enforced_limit_mw"`
		} `yaml:"power"`
		PerformanceState string `yaml:"performance_state"`
		Fan              struct {
			Count int `yaml:"count"`
		} `yaml:"fan"`
	} `yaml:"device_defaults"`
	Devices []struct {
		UUID string `yaml:"uuid"`
	} `yaml:"devices"`
}

type eccCounts struct {
	SingleBit struct {
		Total uint64 `yaml:"total"`
	} `yaml:"single_bit"`
	DoubleBit struct {
		Total uint64 `yaml:"total"`
	} `yaml:"double_bit"`
}

// setPath sets the value at a path of mapping keys in a YAML document,
// creating the mappings it lacks.
func setPath(doc yaml.MapSlice, v any, path ...string) yaml.MapSlice {
	for i := range doc {
		if doc[i].Key != path[0] {
			continue
		}
		if len(path) == 1 {
			doc[i].Value = v
			return doc
		}
		sub, _ := doc[i].Value.(yaml.MapSlice)
		doc[i].Value = setPath(sub, v, path[1:]...)
		return doc
	}
	if len(path) == 1 {
		return append(doc, yaml.MapItem{Key: path[0], Value: v})
	}
	return append(doc, yaml.MapItem{Key: path[0], Value: setPath(nil, v, path[1:]...)})
}

// The health fields through the real library: the agent's sampler
// (internal/nvml, the code the binary runs) over NVIDIA's mock
// libnvidia-ml.so.1, with a T4 profile edited so that nothing is zero by
// default: ECC errors of every kind, pages retired and one pending, clock
// event reasons, time throttled, a power limit below the default, P8.
// Each value must be the profile's, in the agent's units: read by the
// sampler, and pushed on the binary's stream.
//
// The sampler runs in a child process (this test binary again, see
// mockHealthChild): the mock is a Go library whose runtime reads the
// environment the process started with, so MOCK_NVML_CONFIG must be set
// before the process starts, not by t.Setenv.
//
// What the mock (k8s-test-infra 3b2b865d) answers, seen here: ECC totals
// from ecc.errors.*.*.total; the violation times from
// clocks_throttle_reasons.counters (µs in the profile, ns through NVML);
// the reasons bitmask from the flags; P-state from performance_state; the
// enforced_limit_mw for both power limits (a real GPU answers the limit
// asked for, power_management_limit, separately); fan NOT_SUPPORTED with
// no fan. Retired pages are NOT modelled: its GetRetiredPages answers no
// page and GetRetiredPagesPendingStatus "not pending" whatever the
// profile's retired_pages says, so those two are checked against the
// library's own answer, not the profile.
func TestMockNVMLHealthFields(t *testing.T) {
	if os.Getenv(mockHealthChildEnv) != "" {
		mockHealthChild(t)
		return
	}
	lib, configs := requireMockNVML(t)
	raw, err := os.ReadFile(filepath.Join(configs, "mock-nvml-config-t4.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.MapSlice
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc = withHealthErrors(doc)
	if raw, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	var p healthProfile
	if err := yaml.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	profile := filepath.Join(t.TempDir(), "profile.yaml")
	if err := os.WriteFile(profile, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	got := runMockHealthChild(t, lib, profile)
	dp := p.DeviceDefaults
	ecc := dp.ECC.Errors
	if ecc.Volatile.SingleBit.Total == 0 || ecc.Aggregate.DoubleBit.Total == 0 {
		t.Fatal("the edited profile has no ECC errors: the checks below prove nothing")
	}
	bit := func(b bool, mask uint64) uint64 {
		if b {
			return mask
		}
		return 0
	}
	ctr := dp.ClocksThrottleReasons
	reasons := bit(ctr.GPUIdle, gonvml.ClocksEventReasonGpuIdle) |
		bit(ctr.ApplicationsClocksSetting, gonvml.ClocksEventReasonApplicationsClocksSetting) |
		bit(ctr.SWPowerCap, gonvml.ClocksEventReasonSwPowerCap) |
		bit(ctr.HWSlowdown, gonvml.ClocksThrottleReasonHwSlowdown) |
		bit(ctr.SyncBoost, gonvml.ClocksEventReasonSyncBoost) |
		bit(ctr.SWThermalSlowdown, gonvml.ClocksEventReasonSwThermalSlowdown) |
		bit(ctr.HWThermalSlowdown, gonvml.ClocksThrottleReasonHwThermalSlowdown) |
		bit(ctr.HWPowerBrakeSlowdown, gonvml.ClocksThrottleReasonHwPowerBrakeSlowdown)
	pstate := map[string]float64{"P0": 0, "P2": 2, "P8": 8, "P12": 12}[dp.PerformanceState]
	if reasons == 0 || pstate == 0 {
		t.Fatalf("reasons %#x, P%v: the edited profile should make both non-zero", reasons, pstate)
	}
	want := map[telemetry.Field]float64{
		telemetry.ECCSBEVolatile:     float64(ecc.Volatile.SingleBit.Total),
		telemetry.ECCDBEVolatile:     float64(ecc.Volatile.DoubleBit.Total),
		telemetry.ECCSBEAggregate:    float64(ecc.Aggregate.SingleBit.Total),
		telemetry.ECCDBEAggregate:    float64(ecc.Aggregate.DoubleBit.Total),
		telemetry.ClocksEventReasons: float64(reasons),
		// The profile's counters are µs; the agent's seconds.
		telemetry.PowerViolation:       float64(ctr.Counters.SWPowerCapUS) / 1e6,
		telemetry.ThermalViolation:     float64(ctr.Counters.SWThermalSlowdownUS) / 1e6,
		telemetry.SyncBoostViolation:   float64(ctr.Counters.SyncBoostUS) / 1e6,
		telemetry.BoardLimitViolation:  0, // limiters the mock does not model answer 0
		telemetry.LowUtilViolation:     0,
		telemetry.ReliabilityViolation: 0,
		telemetry.EnforcedPowerLimit:   float64(dp.Power.EnforcedLimitMW) / 1000,
		telemetry.PState:               pstate,
		// What the mock answers whatever the profile says (above).
		telemetry.RetiredPagesSBE:     got.Library.RetiredSBE,
		telemetry.RetiredPagesDBE:     got.Library.RetiredDBE,
		telemetry.RetiredPagesPending: got.Library.Pending,
		telemetry.PowerMgmtLimit:      got.Library.PowerMgmtLimitMW / 1000,
	}
	for f, w := range want {
		v, ok := got.Values[f.String()]
		if !ok || math.Abs(v-w) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", f, v, ok, w)
		}
	}
	if rp := dp.RetiredPages; got.Library.RetiredSBE != float64(rp.SingleBit.Count) || got.Library.RetiredDBE != float64(rp.DoubleBit.Count) {
		t.Logf("the mock answers %v + %v retired pages (pending %v) where the profile says %d + %d (pending %v): it does not model retired_pages",
			got.Library.RetiredSBE, got.Library.RetiredDBE, got.Library.Pending, rp.SingleBit.Count, rp.DoubleBit.Count, rp.PendingRetirement)
	}
	if dp.Fan.Count != 0 {
		t.Fatal("the T4 profile has fans: the fan check below proves nothing")
	}
	if _, ok := got.Values["fan_speed"]; ok || got.Supported["fan_speed"] {
		t.Error("a T4 without fans: fan speed served or supported")
	}
	for f := range telemetry.NumFields {
		if telemetry.HealthFields.Has(f) && got.Errors[f.String()] != 0 {
			t.Errorf("%s: %d read errors", f, got.Errors[f.String()])
		}
	}

	// The same values through the agent's binary over the library, as its
	// push stream carries them (the proto's units are the agent's here).
	grpcAddr := testutil.FreeAddrT(t)
	startAgentEnv(t, []string{"MOCK_NVML_CONFIG=" + profile}, "--nvml.library-path="+lib, "--interval=250ms",
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--grpc.listen-address="+grpcAddr)
	d := watchDevice(t, grpcAddr, p.Devices[0].UUID, func(d *telemetryv1.Device) bool {
		return d.EccSbeVolatile != nil && d.EnforcedPowerLimitWatts != nil
	})
	pending := 0.0
	if d.GetRetiredPagesPending() {
		pending = 1
	}
	streamed := map[telemetry.Field]float64{
		telemetry.ECCSBEVolatile:       float64(d.GetEccSbeVolatile()),
		telemetry.ECCDBEVolatile:       float64(d.GetEccDbeVolatile()),
		telemetry.ECCSBEAggregate:      float64(d.GetEccSbeAggregate()),
		telemetry.ECCDBEAggregate:      float64(d.GetEccDbeAggregate()),
		telemetry.ClocksEventReasons:   float64(d.GetClocksEventReasons()),
		telemetry.PowerViolation:       d.GetPowerViolationSeconds(),
		telemetry.ThermalViolation:     d.GetThermalViolationSeconds(),
		telemetry.SyncBoostViolation:   d.GetSyncBoostViolationSeconds(),
		telemetry.BoardLimitViolation:  d.GetBoardLimitViolationSeconds(),
		telemetry.LowUtilViolation:     d.GetLowUtilViolationSeconds(),
		telemetry.ReliabilityViolation: d.GetReliabilityViolationSeconds(),
		telemetry.EnforcedPowerLimit:   d.GetEnforcedPowerLimitWatts(),
		telemetry.PState:               float64(d.GetPstate()),
		telemetry.RetiredPagesSBE:      float64(d.GetRetiredPagesSbe()),
		telemetry.RetiredPagesDBE:      float64(d.GetRetiredPagesDbe()),
		telemetry.RetiredPagesPending:  pending,
		telemetry.PowerMgmtLimit:       d.GetPowerManagementLimitWatts(),
	}
	for f, w := range want {
		if v := streamed[f]; math.Abs(v-w) > 1e-9 {
			t.Errorf("streamed %s = %v, want %v", f, v, w)
		}
	}
	if d.FanSpeedPercent != nil {
		t.Errorf("streamed a fan speed (%v) of a GPU without fans", d.GetFanSpeedPercent())
	}
}

// watchDevice subscribes to the agent's push stream at addr and returns
// the first message's device uuid for which ready holds.
func watchDevice(t *testing.T, addr, uuid string, ready func(*telemetryv1.Device) bool) *telemetryv1.Device {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var w telemetryv1.Telemetry_WatchClient
	if err := testutil.Poll(ctx, 10*time.Second, func() (bool, error) {
		w, err = telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{IncludeUnattributed: true})
		if err != nil {
			return false, err
		}
		return true, nil
	}); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for {
		m, err := w.Recv()
		if err != nil {
			t.Fatalf("no message with device %s ready: %v", uuid, err)
		}
		for _, d := range m.GetDevices() {
			if d.GetUuid() == uuid && ready(d) {
				return d
			}
		}
	}
}

// mockHealthChildEnv names the child's environment variable: the mock
// library's path.
const mockHealthChildEnv = "GPU_AGENT_TEST_MOCK_HEALTH_LIB"

// mockHealth is what the child reports of GPU 0: the agent's reading by
// field name, and the library's own answers where the mock does not take
// them from the profile.
type mockHealth struct {
	Values    map[string]float64
	Supported map[string]bool
	Errors    map[string]uint64
	Library   struct {
		RetiredSBE, RetiredDBE, Pending, PowerMgmtLimitMW float64
	}
}

const mockHealthMarker = "MOCK-HEALTH: "

// runMockHealthChild runs this test in a child process over lib with the
// profile, and returns what it reported.
func runMockHealthChild(t *testing.T, lib, profile string) mockHealth {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMockNVMLHealthFields$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), mockHealthChildEnv+"="+lib, "MOCK_NVML_CONFIG="+profile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.Index(l, mockHealthMarker); i >= 0 {
			var h mockHealth
			if err := json.Unmarshal([]byte(l[i+len(mockHealthMarker):]), &h); err != nil {
				t.Fatalf("child's report %q: %v", l, err)
			}
			return h
		}
	}
	t.Fatalf("child reported nothing:\n%s", out)
	return mockHealth{}
}

// mockHealthChild opens the sampler over the mock library, reads GPU 0
// until its health fields are in, and prints them.
func mockHealthChild(t *testing.T) {
	library := nvml.NewLibrary(os.Getenv(mockHealthChildEnv))
	s, err := nvml.Open(t.Context(), library, nvml.Config{Interval: nvml.MinInterval})
	if err != nil {
		t.Fatalf("Open over the mock library: %v", err)
	}
	defer s.Close()
	var st telemetry.DeviceState
	testutil.Eventually(t, 10*time.Second, "the health fields of GPU 0", func() bool {
		s.Tick()
		st = s.Latest().States[0]
		return st.Has.Has(telemetry.ECCSBEVolatile) && st.Has.Has(telemetry.EnforcedPowerLimit)
	})
	h := mockHealth{Values: map[string]float64{}, Supported: map[string]bool{}, Errors: map[string]uint64{}}
	for f := range telemetry.NumFields {
		if v, ok := st.Get(f); ok {
			h.Values[f.String()] = v
		}
		h.Supported[f.String()] = st.Supported.Has(f)
		h.Errors[f.String()] = st.Errors[f]
	}
	d, ret := library.DeviceGetHandleByIndex(0)
	if ret != gonvml.SUCCESS {
		t.Fatal(ret)
	}
	sbe, r1 := d.GetRetiredPages(gonvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
	dbe, r2 := d.GetRetiredPages(gonvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
	pending, r3 := d.GetRetiredPagesPendingStatus()
	mgmt, r4 := d.GetPowerManagementLimit()
	if r1 != gonvml.SUCCESS || r2 != gonvml.SUCCESS || r3 != gonvml.SUCCESS || r4 != gonvml.SUCCESS {
		t.Fatalf("the library's own answers: %v %v %v %v", r1, r2, r3, r4)
	}
	h.Library.RetiredSBE, h.Library.RetiredDBE = float64(len(sbe)), float64(len(dbe))
	if pending == gonvml.FEATURE_ENABLED {
		h.Library.Pending = 1
	}
	h.Library.PowerMgmtLimitMW = float64(mgmt)
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(mockHealthMarker + string(b))
}

// withHealthErrors edits a mock profile so that its health fields are not
// zero: ECC 3/1/41/2, retired pages (which the mock ignores), clock event
// reasons 0xA, power and thermal violations 1.5 s and 0.25 s, sync boost
// 7 us, enforced limit 65 W, P8.
func withHealthErrors(doc yaml.MapSlice) yaml.MapSlice {
	dd := "device_defaults"
	for _, e := range []struct {
		v    any
		path []string
	}{
		{3, []string{dd, "ecc", "errors", "volatile", "single_bit", "total"}},
		{1, []string{dd, "ecc", "errors", "volatile", "double_bit", "total"}},
		{41, []string{dd, "ecc", "errors", "aggregate", "single_bit", "total"}},
		{2, []string{dd, "ecc", "errors", "aggregate", "double_bit", "total"}},
		{2, []string{dd, "retired_pages", "single_bit_retirement", "count"}},
		{[]string{"0x1000", "0x2000"}, []string{dd, "retired_pages", "single_bit_retirement", "addresses"}},
		{1, []string{dd, "retired_pages", "double_bit_retirement", "count"}},
		{[]string{"0x9000"}, []string{dd, "retired_pages", "double_bit_retirement", "addresses"}},
		{true, []string{dd, "retired_pages", "pending_retirement"}},
		// Flags whose time is not accrued while the test runs (no
		// counter of their own), so the counters stay the profile's.
		{false, []string{dd, "clocks_throttle_reasons", "gpu_idle"}},
		{true, []string{dd, "clocks_throttle_reasons", "applications_clocks_setting"}},
		{true, []string{dd, "clocks_throttle_reasons", "hw_slowdown"}},
		{1_500_000, []string{dd, "clocks_throttle_reasons", "counters", "sw_power_cap_us"}},
		{250_000, []string{dd, "clocks_throttle_reasons", "counters", "sw_thermal_slowdown_us"}},
		{7, []string{dd, "clocks_throttle_reasons", "counters", "sync_boost_us"}},
		{65000, []string{dd, "power", "enforced_limit_mw"}},
		{"P8", []string{dd, "performance_state"}},
	} {
		doc = setPath(doc, e.v, e.path...)
	}
	return doc
}
