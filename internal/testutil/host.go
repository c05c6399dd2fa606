package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// CacheDir is where the harnesses keep what they build once per machine
// (the control plane, LiveKit's server, NVIDIA's mock NVML): $env when
// set, else gpu-agent under the user's cache directory, outside the
// repository (the binaries are 75-250 MB each).
func CacheDir(env string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "gpu-agent"), nil
}

// RemoveStaleNetns deletes the network namespaces named prefix<pid> or
// prefix<pid>-<anything> whose process is gone: those of a harness run
// killed by a timeout or SIGKILL. Deleting one deletes its ends of its
// veth pairs, and with them the host's.
func RemoveStaleNetns(prefix string) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", name).Run() // #nosec G204 -- a namespace the tests named
	}
}
