package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v2"
)

// The agent's pod watch runs only on NVML (--simulate names its own pods
// and turns it off), so the RBAC test runs the agent on NVIDIA's mock
// libnvidia-ml.so.1, found and built as the tests of package test do
// (test/nvmlmock_test.go, which this package cannot import): the source
// at $NVML_MOCK_SRC, by default ../shared/third_party/nvml-mock beside
// the repository, or a built library at $NVML_MOCK_LIB; built once into
// the user's cache keyed by the same hash of the source, so both share it.
func mockNVML() (lib, configs string, err error) {
	src := os.Getenv("NVML_MOCK_SRC")
	if src == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", "", err
		}
		src = filepath.Join(root, "..", "shared", "third_party", "nvml-mock")
	}
	configs = filepath.Join(src, "pkg", "gpu", "mocknvml", "configs")
	if _, err := os.Stat(configs); err != nil {
		return "", "", fmt.Errorf("%w: no mock NVML source at %s (NVML_MOCK_SRC; NVIDIA's k8s-test-infra, pkg/gpu/mocknvml): %v", errSkip, src, err)
	}
	if lib := os.Getenv("NVML_MOCK_LIB"); lib != "" {
		return lib, configs, nil
	}
	script := filepath.Join(src, "..", "..", "tools", "build-nvml-mock")
	if _, err := os.Stat(script); err != nil {
		return "", "", fmt.Errorf("%w: no build script at %s (set NVML_MOCK_LIB to a built library): %v", errSkip, script, err)
	}
	hash, err := hashTree(src)
	if err != nil {
		return "", "", err
	}
	root, err := cacheRoot()
	if err != nil {
		return "", "", err
	}
	out := filepath.Join(root, "nvml-mock-"+hash)
	cmd := exec.Command(script, out) // returns at once when built
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%s %s: %w\n%s", script, out, err, b)
	}
	return filepath.Join(out, "libnvidia-ml.so.1"), configs, nil
}

// hashTree hashes every file's path and content under dir, as
// test/nvmlmock_test.go does for its cache key.
func hashTree(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "%s\x00", rel)
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hashing %s: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
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
