// Package nvmlmock finds and builds NVIDIA's mock libnvidia-ml.so.1 for
// the tests that run the agent on it: the source at $NVML_MOCK_SRC (by
// default ../shared/third_party/nvml-mock beside the repository), or a
// library already built at $NVML_MOCK_LIB. It is built once into the
// user's cache, keyed by a hash of the source, so every test package
// shares the one build.
package nvmlmock

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const (
	SrcEnv = "NVML_MOCK_SRC" // default: ../shared/third_party/nvml-mock beside the repository
	LibEnv = "NVML_MOCK_LIB" // a libnvidia-ml.so.1 already built: skips the build
)

// ErrUnavailable marks a missing source or build script: the callers skip
// on a laptop and fail under CI=true. A failed build is another error.
var ErrUnavailable = errors.New("mock NVML unavailable")

// Build returns the built library and the directory of the mock's
// profiles (mock-nvml-config-*.yaml).
func Build() (lib, configs string, err error) {
	src := os.Getenv(SrcEnv)
	if src == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", "", err
		}
		src = filepath.Join(root, "..", "shared", "third_party", "nvml-mock")
	}
	configs = filepath.Join(src, "pkg", "gpu", "mocknvml", "configs")
	if _, err := os.Stat(configs); err != nil {
		return "", "", fmt.Errorf("%w: no mock NVML source at %s (%s; NVIDIA's k8s-test-infra, pkg/gpu/mocknvml): %v", ErrUnavailable, src, SrcEnv, err)
	}
	if lib := os.Getenv(LibEnv); lib != "" {
		return lib, configs, nil
	}
	// The build script sits in the shared tree beside third_party.
	script := filepath.Join(src, "..", "..", "tools", "build-nvml-mock")
	if _, err := os.Stat(script); err != nil {
		return "", "", fmt.Errorf("%w: no build script at %s (set %s to a built library): %v", ErrUnavailable, script, LibEnv, err)
	}
	hash, err := hashTree(src)
	if err != nil {
		return "", "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	out := filepath.Join(cache, "gpu-agent", "nvml-mock-"+hash)
	cmd := exec.Command(script, out) // returns at once when built
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%s %s: %w\n%s", script, out, err, b)
	}
	return filepath.Join(out, "libnvidia-ml.so.1"), configs, nil
}

// hashTree hashes every file's path and content under dir.
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

// moduleRoot is the agent module's directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the module")
	}
	return filepath.Dir(mod), nil
}
