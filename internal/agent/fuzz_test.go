package agent

import (
	"io"
	"strings"
	"testing"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
)

// A load file, whatever it holds, is read or refused; never a panic. What
// is read sets only GPUs that exist, and the simulator takes it or says
// why (a load outside 0-100).
func FuzzLoadFile(f *testing.F) {
	f.Add([]byte(`{"gpu_util": 90, "enc_util": 80, "gpus": {"1": {"gpu_util": 10}}}`), uint8(2))
	f.Add([]byte("gpu_util: 50\ngpus:\n  \"0\": {dec_util: 100}\n"), uint8(1))
	f.Add([]byte(`{"gpus": {"-1": {}, "x": {}}}`), uint8(4))
	f.Add([]byte(`{"gpu_util": .nan, "mem_copy_util": 1e309}`), uint8(1))
	f.Add([]byte("gpus: [1, 2]\n"), uint8(0))
	f.Add([]byte("&a [*a]"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		gpus := int(n%8) + 1
		loads, err := parseLoadFile(data, gpus)
		if err != nil {
			return
		}
		if len(loads) != gpus {
			t.Fatalf("%d loads for %d GPUs", len(loads), gpus)
		}
		ctl := sim.NewControl(sim.New(sim.Options{Devices: gpus, Seed: 1, Static: true}))
		for i, l := range loads {
			if err := ctl.SetLoad(i, l); err != nil && !strings.Contains(err.Error(), "0-100") {
				t.Fatalf("GPU %d: %v", i, err)
			}
		}
	})
}

// The agent's command line and environment, whatever they say, parse and
// validate to a Config or an error; never a panic. Every dcgm-exporter
// variable is offered, so the environment path is fuzzed too.
func FuzzAgentFlags(f *testing.F) {
	f.Add("--interval=100ms\x00--simulate=4\x00--dcgm=off", "NODE_NAME=n\x00DCGM_EXPORTER_INTERVAL=1000")
	f.Add("-f\x00/nonexistent.csv\x00--kubernetes-gpu-id-type=uid", "DCGM_EXPORTER_COLLECTORS=/x")
	f.Add("--dcgm=standalone\x00--dcgm.hostengine-address=unix:///x", "DCGM_REMOTE_HOSTENGINE_INFO=localhost:5555")
	f.Add("--web.max-connections=-1\x00--compat.dcgm-exporter=4.99\x00--interval=1ns", "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS=maybe")
	f.Add("--kubernetes-pod-label-allowlist-regex=(\x00-x\x00-1", "")
	f.Fuzz(func(t *testing.T, args, env string) {
		vars := map[string]string{}
		for _, kv := range strings.Split(env, "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				vars[k] = v
			}
		}
		var argv []string
		if args != "" {
			argv = strings.Split(args, "\x00")
		}
		c, err := ParseFlags(argv, func(k string) string { return vars[k] }, io.Discard)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no text")
			}
			return
		}
		if err := c.Validate(); err != nil && err.Error() == "" {
			t.Fatal("a validation error with no text")
		}
	})
}
