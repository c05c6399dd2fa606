package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v2"

	"github.com/gpu-telemetry/agent/test/internal/nvmlmock"
)

// mockNVML is NVIDIA's mock libnvidia-ml.so.1 and its profiles: the
// agent's pod watch runs only on NVML (--simulate names its own pods and
// turns it off), so the RBAC test runs the agent on the mock. A missing
// source is errSkip.
func mockNVML() (lib, configs string, err error) {
	lib, configs, err = nvmlmock.Build()
	if errors.Is(err, nvmlmock.ErrUnavailable) {
		err = fmt.Errorf("%w: %v", errSkip, err)
	}
	return lib, configs, err
}

// gpuProc is one process of the mock GPU 0, with its SM utilization.
type gpuProc struct {
	pid, sm int
}

// sharedGPUProfile is the mock's T4 profile with procs on GPU 0, whose
// GPU-wide utilization is their sum, as a real GPU's is; it returns the
// profile and GPU 0's UUID.
func sharedGPUProfile(configs string, procs []gpuProc) ([]byte, string, error) {
	raw, err := os.ReadFile(filepath.Join(configs, "mock-nvml-config-t4.yaml"))
	if err != nil {
		return nil, "", err
	}
	var doc yaml.MapSlice
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, "", err
	}
	var uuid string
	for i, item := range doc {
		if item.Key != "devices" {
			continue
		}
		devs := item.Value.([]any)
		dev := devs[0].(yaml.MapSlice)
		var list []any
		sum := 0
		for _, p := range procs {
			sum += p.sm
			list = append(list, yaml.MapSlice{
				{Key: "pid", Value: p.pid}, {Key: "type", Value: "C"}, {Key: "name", Value: "proc-" + strconv.Itoa(p.pid)},
				{Key: "used_memory_mib", Value: 512}, {Key: "sm_util", Value: p.sm}, {Key: "mem_util", Value: 1},
				{Key: "enc_util", Value: 0}, {Key: "dec_util", Value: 0},
			})
		}
		for _, kv := range dev {
			if kv.Key == "uuid" {
				uuid, _ = kv.Value.(string)
			}
		}
		dev = append(dev,
			yaml.MapItem{Key: "processes", Value: list},
			yaml.MapItem{Key: "utilization", Value: yaml.MapSlice{{Key: "gpu", Value: sum}, {Key: "memory", Value: len(procs)}}},
		)
		devs[0] = dev
		doc[i].Value = devs
	}
	if uuid == "" {
		return nil, "", fmt.Errorf("the T4 profile has no GPU 0 UUID")
	}
	out, err := yaml.Marshal(doc)
	return out, uuid, err
}

// writeCgroup writes <procfs>/<pid>/cgroup for a process of the pod with
// uid, in a container, as cgroup v2 with the systemd driver and
// containerd name it on a GKE or EKS node.
func writeCgroup(procfs string, pid int, uid, containerID string) error {
	dir := filepath.Join(procfs, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	line := fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%s.scope\n",
		strings.ReplaceAll(uid, "-", "_"), containerID)
	return os.WriteFile(filepath.Join(dir, "cgroup"), []byte(line), 0o644)
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// series returns the value of metric with exactly the labels want (among
// others) in a /metrics text body.
func series(body, metric string, want map[string]string) (float64, bool) {
next:
	for _, line := range strings.Split(body, "\n") {
		m := sampleLine.FindStringSubmatch(line)
		if m == nil || m[1] != metric {
			continue
		}
		labels := map[string]string{}
		for _, kv := range labelPair.FindAllStringSubmatch(m[2], -1) {
			labels[kv[1]] = kv[2]
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		v, err := strconv.ParseFloat(m[3], 64)
		return v, err == nil
	}
	return 0, false
}
