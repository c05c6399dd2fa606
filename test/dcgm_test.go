package test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// startDCGMAgent starts the agent as a dcgm-exporter DaemonSet would, with
// its args and environment only (the listen address from
// $DCGM_EXPORTER_LISTEN), plus --simulate so that it runs without a GPU.
func startDCGMAgent(t *testing.T, env []string, args ...string) *agent {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr := testutil.FreeAddrT(t)
		e := append([]string{"DCGM_EXPORTER_LISTEN=" + addr, "NODE_NAME=golden-node"}, env...)
		a := &agent{addr: addr, Proc: testutil.StartT(t, "gpu-agent", testutil.ProcOptions{Env: e}, agentBin,
			append([]string{"--grpc.listen-address=", "--simulate=2", "--simulate.static"}, args...)...)}
		err := a.waitReady(t)
		if err == nil {
			return a
		}
		if attempt < 3 && a.Exited() && strings.Contains(a.Output(), "address already in use") {
			continue
		}
		t.Fatalf("agent %v %v: %v\n%s", env, args, err, a.Output())
	}
}

// The environment dcgm-exporter's Helm chart sets (templates/daemonset.yaml)
// and the args of a typical DaemonSet: the agent starts, listens where
// $DCGM_EXPORTER_LISTEN says, samples at -c, and warns once about each
// option it ignores.
func TestDCGMExporterCommandLine(t *testing.T) {
	// The chart's default arguments name the list its image ships, which
	// the agent's image ships at the same path (see the Dockerfile).
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	a := startDCGMAgent(t,
		[]string{"DCGM_EXPORTER_KUBERNETES=true", "DCGM_EXPORTER_INTERVAL=3000", "KUBERNETES_ENABLE_DRA=true"},
		"-f", filepath.Join(root, "deploy/dcgm-exporter/dcp-metrics-included.csv"),
		"-c", "500", "--kubernetes-gpu-id-type", "uid", "--fake-gpus", "--remote-hostengine-info=localhost:5555", "--dump-enabled")
	// The chart's liveness and readiness probes.
	if resp, err := httpClient.Get(a.url("/health")); err != nil || resp.StatusCode != 200 {
		t.Errorf("/health: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	s := parseSamples(t, a.scrape(t))
	if err := s.expect("gpu_agent_sampling_interval_seconds", 0.5); err != nil {
		t.Errorf("-c 500 (over $DCGM_EXPORTER_INTERVAL): %v", err)
	}
	out := a.Output()
	for _, opt := range []string{"--fake-gpus", "--remote-hostengine-info", "--dump-enabled", "$KUBERNETES_ENABLE_DRA"} {
		if n := strings.Count(out, "option="+opt+" "); n != 1 {
			t.Errorf("%d warnings about %s, want 1:\n%s", n, opt, out)
		}
	}
	// Its profiling fields need --dcgm (the simulated node has no DCGM):
	// one warning names them.
	if n := strings.Count(out, "DCGM_FI_PROF_GR_ENGINE_ACTIVE"); n != 1 {
		t.Errorf("%d mentions of DCGM_FI_PROF_GR_ENGINE_ACTIVE, want one warning:\n%s", n, out)
	}
	if !strings.Contains(a.scrape(t), "\nDCGM_FI_DEV_GPU_UTIL{") {
		t.Error("DCGM_FI_DEV_GPU_UTIL, listed, is not served")
	}
}

func TestDCGMExporterUnknownFlag(t *testing.T) {
	code, stderr, timedOut := runAgent(t, 10*time.Second, "--simulate=1", "--collectorz=/etc/x.csv")
	if timedOut || code != 2 || !strings.Contains(stderr, "collectorz") {
		t.Errorf("unknown flag: exit %d (timed out %v), want 2 naming it:\n%s", code, timedOut, stderr)
	}
}

// A DaemonSet's own field list: exactly its fields are served (and the
// agent's own families), its label row labels every device series, and
// the field the agent cannot serve is named in one warning.
func TestDCGMExporterFieldList(t *testing.T) {
	csv := filepath.Join(t.TempDir(), "metrics.csv")
	if err := os.WriteFile(csv, []byte(`# Format: DCGM FIELD, Prometheus metric type, help message
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
 DCGM_FI_DEV_FB_USED ,     gauge, Framebuffer memory used (in MiB).
DCGM_FI_PROF_GR_ENGINE_ACTIVE, gauge, Ratio of time the graphics engine is active.
DCGM_FI_DRIVER_VERSION,    label, Driver Version
`), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startDCGMAgent(t, []string{"DCGM_EXPORTER_KUBERNETES=true"}, "-f", csv)
	s := parseSamples(t, a.scrape(t))
	families := map[string]bool{}
	for _, x := range s {
		name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(x.name, "_bucket"), "_sum"), "_count")
		if !strings.HasPrefix(name, "gpu_agent_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") &&
			!strings.HasPrefix(name, "promhttp_") {
			families[name] = true
		}
		if _, device := x.labels["device"]; device && x.labels["DCGM_FI_DRIVER_VERSION"] == "" {
			t.Errorf("%s %v has no DCGM_FI_DRIVER_VERSION", x.name, x.labels)
		}
	}
	if want := map[string]bool{"DCGM_FI_DEV_GPU_UTIL": true, "DCGM_FI_DEV_FB_USED": true}; !maps.Equal(families, want) {
		t.Errorf("served %v besides gpu_agent_*, want exactly %v", slices.Sorted(maps.Keys(families)), slices.Sorted(maps.Keys(want)))
	}
	if _, ok := s.value("gpu_agent_sampling_interval_seconds"); !ok {
		t.Error("the agent's own families are left out")
	}
	if out := a.Output(); strings.Count(out, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") != 1 {
		t.Errorf("want one warning naming DCGM_FI_PROF_GR_ENGINE_ACTIVE:\n%s", out)
	}
	// And 0 in gpu_agent_field_supported, on every GPU.
	var unproduced, gpus int
	for _, x := range s {
		switch {
		case x.name == "gpu_agent_device_up":
			gpus++
		case x.name == "gpu_agent_field_supported" && x.labels["field"] == "DCGM_FI_PROF_GR_ENGINE_ACTIVE":
			unproduced++
			if x.value != 0 {
				t.Errorf("%v = %v, want 0", x.labels, x.value)
			}
		case x.name == "gpu_agent_field_supported" && strings.HasPrefix(x.labels["field"], "DCGM_"):
			t.Errorf("%v: only fields the agent cannot produce are named by their DCGM name", x.labels)
		}
	}
	if unproduced != gpus || gpus == 0 {
		t.Errorf("gpu_agent_field_supported{field=\"DCGM_FI_PROF_GR_ENGINE_ACTIVE\"} on %d of %d GPUs", unproduced, gpus)
	}
}

func TestDCGMExporterMalformedFieldList(t *testing.T) {
	csv := filepath.Join(t.TempDir(), "metrics.csv")
	if err := os.WriteFile(csv, []byte("DCGM_FI_DEV_GPU_UTIL, gauge, GPU utilization (in %).\n\n# no help on the next line\nDCGM_FI_DEV_FB_USED, gauge\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stderr, timedOut := runAgent(t, 10*time.Second, "--simulate=1", "-f", csv)
	if timedOut || code != 2 || !strings.Contains(stderr, csv+":4: 2 fields") {
		t.Errorf("malformed field list: exit %d (timed out %v), want 2 and an error naming %s:4:\n%s", code, timedOut, csv, stderr)
	}
}

// -o and --no-hostname, from the environment: the old label names, no
// Hostname, and the driver's version and XID labels as dcgm-exporter
// writes them.
func TestDCGMExporterOldNamespace(t *testing.T) {
	a := startDCGMAgent(t, []string{"DCGM_EXPORTER_USE_OLD_NAMESPACE=true", "DCGM_EXPORTER_NO_HOSTNAME=true"})
	s := a.waitMetrics(t, 10*time.Second, "pod labels", func(s samples) error {
		for _, x := range s {
			if x.name == "DCGM_FI_DEV_GPU_UTIL" && x.labels["pod_name"] != "" {
				return nil
			}
		}
		return fmt.Errorf("no DCGM_FI_DEV_GPU_UTIL series with pod_name")
	})
	for _, x := range s {
		if _, device := x.labels["device"]; !device {
			continue
		}
		for _, l := range []string{"pod", "namespace", "container", "Hostname", "UUID"} {
			if _, ok := x.labels[l]; ok {
				t.Errorf("%s has %s with -o and --no-hostname: %v", x.name, l, x.labels)
			}
		}
		if x.labels["uuid"] == "" || x.labels["DCGM_FI_DRIVER_VERSION"] == "" {
			t.Errorf("%s lacks uuid or DCGM_FI_DRIVER_VERSION: %v", x.name, x.labels)
		}
		if x.name == "DCGM_FI_DEV_XID_ERRORS" && (x.labels["err_code"] != "0" || x.labels["err_msg"] != "No Error") {
			t.Errorf("%s: %v", x.name, x.labels)
		}
		if _, ok := x.labels["pod_name"]; ok && (x.labels["pod_namespace"] == "" || x.labels["container_name"] == "") {
			t.Errorf("%s: %v", x.name, x.labels)
		}
	}
}

// dcgm-exporter 4.8.4 serves its Go runtime, process and HTTP handler
// families only when asked (--enable-exporter-metrics or its variable);
// the agent does the same with its own, and always serves gpu_agent_*.
func TestDCGMExporterExporterMetrics(t *testing.T) {
	has := func(a *agent, prefix string) bool {
		for _, s := range parseSamples(t, a.scrape(t)) {
			if strings.HasPrefix(s.name, prefix) {
				return true
			}
		}
		return false
	}
	off := startDCGMAgent(t, nil)
	for _, p := range []string{"go_", "process_", "promhttp_"} {
		if has(off, p) {
			t.Errorf("by default /metrics serves %s* families", p)
		}
	}
	if !has(off, "gpu_agent_") {
		t.Error("gpu_agent_* families missing by default")
	}
	for name, a := range map[string]*agent{
		"flag":     startDCGMAgent(t, nil, "--enable-exporter-metrics"),
		"variable": startDCGMAgent(t, []string{"DCGM_EXPORTER_ENABLE_EXPORTER_METRICS=true"}),
		"native":   startDCGMAgent(t, nil, "--web.enable-exporter-metrics"),
	} {
		a.scrape(t) // promhttp counts the scrape before
		for _, p := range []string{"go_", "process_", "promhttp_"} {
			if !has(a, p) {
				t.Errorf("%s: no %s* families", name, p)
			}
		}
	}
}
