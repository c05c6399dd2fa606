package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// buildFlags and buildEnv are how every tool is built; they are part of
// the cache key. Static binaries, as Kubernetes and KEDA release them.
var (
	buildFlags = []string{"-trimpath"}
	buildEnv   = []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false"}
)

// Binaries are the built control-plane tools.
type Binaries struct {
	Dir                                    string
	APIServer, ControllerManager           string
	KEDAOperator, KEDAAdapter, KEDACRDsDir string
}

// cacheKey hashes what decides the binaries: the wrapper modules' go.mod
// and go.sum, the Go version, the platform and the build settings.
func cacheKey(buildDir string) (string, error) {
	h := sha256.New()
	for _, m := range []string{"kubernetes", "keda"} {
		for _, f := range []string{"go.mod", "go.sum"} {
			b, err := os.ReadFile(filepath.Join(buildDir, m, f))
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s/%s %d\n", m, f, len(b))
			h.Write(b)
		}
	}
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	fmt.Fprintf(h, "%s %s/%s %q %q %v\n", strings.TrimSpace(string(out)), runtime.GOOS, runtime.GOARCH, buildFlags, buildEnv, tools)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// cacheRoot is where built tools live: outside the repository (they are
// 100-250 MB each), beside the NVML mock the other tests build.
func cacheRoot() (string, error) { return testutil.CacheDir("GPU_AGENT_CLUSTER_CACHE") }

// Build returns the control-plane binaries, building them into the cache
// first when this set of versions has not been built on this machine.
// logf reports progress (a cold build takes minutes). Concurrent callers
// (two test processes) wait on one lock.
func Build(ctx context.Context, logf func(string, ...any)) (*Binaries, error) {
	buildDir, err := filepath.Abs("build")
	if err != nil {
		return nil, err
	}
	key, err := cacheKey(buildDir)
	if err != nil {
		return nil, err
	}
	root, err := cacheRoot()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "cluster-"+key)
	b := &Binaries{
		Dir:               dir,
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		KEDAOperator:      filepath.Join(dir, "keda-operator"),
		KEDAAdapter:       filepath.Join(dir, "keda-adapter"),
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(root, "cluster.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("locking the cluster cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too

	if _, err := os.Stat(filepath.Join(dir, "complete")); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if err := build(ctx, buildDir, dir, logf); err != nil {
			return nil, err
		}
	}
	// The CRDs come from the same module version as the operator.
	kedaDir, err := moduleDir(ctx, filepath.Join(buildDir, "keda"), "github.com/kedacore/keda/v2")
	if err != nil {
		return nil, err
	}
	b.KEDACRDsDir = filepath.Join(kedaDir, "config", "crd", "bases")
	return b, nil
}

func build(ctx context.Context, buildDir, dir string, logf func(string, ...any)) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for _, t := range tools {
		start := time.Now()
		logf("building %s (%s) into %s; a cold build takes minutes", t.name, t.pkg, dir)
		args := append([]string{"build"}, buildFlags...)
		if t.ldflags != "" {
			args = append(args, "-ldflags="+t.ldflags)
		}
		args = append(args, "-o", filepath.Join(tmp, t.name), t.pkg)
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = filepath.Join(buildDir, t.module)
		cmd.Env = append(os.Environ(), buildEnv...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", t.pkg, err, out)
		}
		logf("built %s in %s", t.name, time.Since(start).Round(time.Second))
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// moduleDir returns the module cache directory of a module required by
// the wrapper module at dir, downloading it if needed.
func moduleDir(ctx context.Context, dir, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), buildEnv...)
	out, err := cmd.Output()
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); err != nil || jerr != nil || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %v %v %s", module, err, jerr, m.Error)
	}
	return m.Dir, nil
}
