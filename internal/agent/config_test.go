package agent

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/podresources"
)

func parse(t *testing.T, args ...string) *Config {
	t.Helper()
	c, err := ParseFlags(args, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("ParseFlags(%v): %v", args, err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	c := parse(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.Interval != 250*time.Millisecond || c.ListenAddress != ":9400" || c.PodResourcesSocket != DefaultPodResourcesSocket || c.KubeletPeriod != time.Second {
		t.Errorf("defaults = %+v", c)
	}
	if c.NodeName == "" {
		t.Error("node name empty: want the host name when $NODE_NAME is unset")
	}
	if c.ProcFS != "/proc" || !c.PodWatch || c.Kubeconfig != "" {
		t.Errorf("per-process defaults: --path.procfs=%q --kubernetes.pod-watch=%v --kubeconfig=%q", c.ProcFS, c.PodWatch, c.Kubeconfig)
	}
}

func TestAppDefaults(t *testing.T) {
	c := parse(t)
	want := AppConfig{Enabled: true, Interval: time.Second, MaxBodyBytes: 4 << 20, MaxSeriesPerPod: 2000, MaxTargets: 256, Concurrency: 4}
	if c.App != want {
		t.Errorf("app defaults %+v, want %+v", c.App, want)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

func TestKubeletMaxStale(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 5 * time.Minute},
		{[]string{"--kubelet.max-stale=90s"}, 90 * time.Second},
		{[]string{"--kubelet.max-stale=0"}, podresources.NoMaxStale}, // forever
	} {
		c := parse(t, tc.args...)
		if err := c.Validate(); err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if got := c.PodMaxStale(); got != tc.want {
			t.Errorf("%v: PodMaxStale() = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestGPUResourceNames(t *testing.T) {
	if c := parse(t); c.GPUResourceNames != nil {
		t.Errorf("default GPUResourceNames = %q, want none (the built-in set)", c.GPUResourceNames)
	}
	c := parse(t, "--kubelet.gpu-resource-names=nvidia.com/t4, example.com/a100,", "--kubelet.gpu-resource-names=nvidia.com/l4")
	if want := []string{"nvidia.com/t4", "example.com/a100", "nvidia.com/l4"}; !slices.Equal(c.GPUResourceNames, want) {
		t.Errorf("GPUResourceNames = %q, want %q", c.GPUResourceNames, want)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

func TestNodeNameFromEnvironment(t *testing.T) {
	c, err := ParseFlags(nil, func(k string) string {
		if k == "NODE_NAME" {
			return "gpu-node-7"
		}
		return ""
	}, &bytes.Buffer{})
	if err != nil || c.NodeName != "gpu-node-7" {
		t.Fatalf("node name = %q, %v", c.NodeName, err)
	}
}

// GOMAXPROCS is one by default, as node_exporter's; $GOMAXPROCS sets the
// default, and the flag wins over both.
func TestMaxProcs(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOMAXPROCS" {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		env  string
		args []string
		want int
	}{
		{"", nil, 1},
		{"4", nil, 4},
		{"4", []string{"--runtime.gomaxprocs=2"}, 2},
		{"", []string{"--runtime.gomaxprocs=0"}, 0},
		{"lots", nil, 1}, // Go ignores a $GOMAXPROCS it cannot read; so does the default
	} {
		c, err := ParseFlags(tc.args, env(tc.env), &bytes.Buffer{})
		if err != nil || c.MaxProcs != tc.want {
			t.Errorf("$GOMAXPROCS=%q %v: %d, %v; want %d", tc.env, tc.args, c.MaxProcs, err, tc.want)
		}
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval=50ms"}, "--interval=50ms: must be at least 100ms"},
		{[]string{"--interval=1s", "--utilization.window=500ms"}, "--utilization.window=500ms"},
		{[]string{"--kubelet.poll-interval=10ms"}, "--kubelet.poll-interval=10ms"},
		{[]string{"--simulate=-1"}, "--simulate=-1"},
		{[]string{"--simulate=1000"}, "--simulate=1000"},
		{[]string{"--simulate=2", "--simulate.hang-gpu=2"}, "--simulate.hang-gpu=2"},
		{[]string{"--simulate.hang-gpu=0"}, "--simulate.hang-gpu=0"},
		{[]string{"--log.level=loud"}, "--log.level=loud"},
		{[]string{"--log.format=xml"}, "--log.format=xml"},
		{[]string{"--web.listen-address="}, "--web.listen-address"},
		{[]string{"--kubelet.pod-resources-socket=/" + strings.Repeat("a", 120)}, "limited to 107 bytes"},
		{[]string{"--kubelet.max-stale=-1s"}, "--kubelet.max-stale=-1s: must not be negative"},
		{[]string{"--kubelet.max-stale=500ms"}, "--kubelet.max-stale=500ms: must be 0 or at least --kubelet.poll-interval (1s)"},
		{[]string{"--kubelet.gpu-resource-names=nvidia.com/t4,t4"}, "--kubelet.gpu-resource-names=t4: want <domain>/<name>"},
		{[]string{"--path.procfs="}, `--path.procfs="": must not be empty`},
		{[]string{"--kubernetes.pod-watch=false", "--kubeconfig=/k"}, "--kubeconfig=/k: needs --kubernetes.pod-watch"},
		{[]string{"--app.interval=50ms"}, "--app.interval=50ms: must be at least 100ms"},
		{[]string{"--app.timeout=-1s"}, "--app.timeout=-1s: must not be negative"},
		{[]string{"--app.interval=1s", "--app.timeout=2s"}, "--app.timeout=2s: must be at most --app.interval (1s)"},
		{[]string{"--app.max-body-bytes=10"}, "--app.max-body-bytes=10"},
		{[]string{"--app.max-series-per-pod=0"}, "--app.max-series-per-pod=0"},
		{[]string{"--app.max-targets=0"}, "--app.max-targets=0"},
		{[]string{"--app.concurrency=0"}, "--app.concurrency=0"},
		{[]string{"--app.concurrency=65"}, "--app.concurrency=65"},
		{[]string{"--runtime.gomaxprocs=-1"}, "--runtime.gomaxprocs=-1: must be 0"},
	} {
		err := parse(t, tc.args...).Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	// Every problem is reported at once.
	err := parse(t, "--interval=1ms", "--log.format=xml").Validate()
	if err == nil || !strings.Contains(err.Error(), "--interval") || !strings.Contains(err.Error(), "--log.format") {
		t.Errorf("two bad flags: %v", err)
	}
}

func TestMainExitCodes(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx := context.Background()
	if code := Main(ctx, []string{"--no-such-flag"}, &stdout, &stderr); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if code := Main(ctx, []string{"--interval=10ms"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "--interval") {
		t.Errorf("bad interval: exit %d, stderr %q", code, stderr.String())
	}
	if code := Main(ctx, []string{"stray"}, &stdout, &stderr); code != 2 {
		t.Errorf("positional argument: exit %d, want 2", code)
	}
	stdout.Reset()
	if code := Main(ctx, []string{"--version"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "gpu-agent") {
		t.Errorf("--version: exit %d, %q", code, stdout.String())
	}
	stderr.Reset()
	if code := Main(ctx, []string{"--nvml.library-path=/nonexistent/libnvidia-ml.so.1", "--web.listen-address=127.0.0.1:0", "--runtime.gomaxprocs=0"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "NVML library") || !strings.Contains(stderr.String(), "--simulate") {
		t.Errorf("no NVML: exit %d, stderr %q", code, stderr.String())
	}
}

// The agent runs on a simulated node and stops cleanly when its context
// ends, as on SIGTERM.
func TestRunStopsOnCancel(t *testing.T) {
	c := parse(t, "--simulate=2", "--web.listen-address=127.0.0.1:0", "--grpc.listen-address=127.0.0.1:0", "--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--interval=100ms")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	var logs bytes.Buffer
	start := time.Now()
	if err := Run(ctx, c, c.NewLogger(&logs)); err != nil {
		t.Fatalf("Run: %v\n%s", err, logs.String())
	}
	if took := time.Since(start); took > 700*time.Millisecond+ShutdownTimeout {
		t.Errorf("shutdown took %s", took)
	}
	if !strings.Contains(logs.String(), "the simulated pods hold the simulated GPUs") {
		t.Errorf("simulated pods not served:\n%s", logs.String())
	}
}

// --compat.dcgm-exporter: the default generation, each generation and a
// release of one, and an unknown one refused with the flag named.
func TestCompatGeneration(t *testing.T) {
	if got := parse(t).Compat; got != exporter.DefaultGeneration || got.String() != "4.8.2" {
		t.Errorf("default generation %v, want 4.8.2", got)
	}
	for in, want := range map[string]string{"4.8.2": "4.8.2", "4.8": "4.8", "4.8.4": "4.8", "4.9": "4.9", "4.10.1": "4.10"} {
		if got := parse(t, "--compat.dcgm-exporter="+in).Compat.String(); got != want {
			t.Errorf("--compat.dcgm-exporter=%s: %s, want %s", in, got, want)
		}
	}
	var stderr bytes.Buffer
	_, err := ParseFlags([]string{"--compat.dcgm-exporter=4.11"}, func(string) string { return "" }, &stderr)
	if err == nil || !strings.Contains(err.Error(), "compat.dcgm-exporter") || !strings.Contains(err.Error(), "4.8.2, 4.8, 4.9, 4.10") {
		t.Errorf("--compat.dcgm-exporter=4.11: %v", err)
	}
}
