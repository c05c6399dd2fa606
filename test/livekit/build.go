package livekit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// ServerVersion is github.com/livekit/livekit-server, whose cmd/server the
// harness builds with go install pkg@version: the module's own go.mod and
// go.sum decide its dependencies, which is why the version cannot move
// freely. v1.13.5 is the newest whose go.mod needs no replace directives
// and no fork the module proxy refuses to serve.
const ServerVersion = "v1.13.5"

const serverPkg = "github.com/livekit/livekit-server/cmd/server"

// serverBuildFlags and serverBuildEnv are how the server is built; they
// are part of the cache key. A static binary, as LiveKit releases it.
var (
	serverBuildFlags = []string{"-trimpath"}
	serverBuildEnv   = []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false"}
)

// serverCacheKey hashes what decides the binary: the version, the Go
// version, the platform and the build settings.
func serverCacheKey(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s@%s %s %s/%s %q %q\n", serverPkg, ServerVersion, strings.TrimSpace(string(out)),
		runtime.GOOS, runtime.GOARCH, serverBuildFlags, serverBuildEnv)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// cacheRoot is where built tools live: outside the repository (the server
// is 75 MB), beside test/cluster's control plane.
func cacheRoot() (string, error) { return testutil.CacheDir("GPU_AGENT_LIVEKIT_CACHE") }

// BuildServer returns the path of livekit-server ServerVersion, building it
// into the cache first when this machine has not built it with this Go
// version. logf reports progress (a cold build takes minutes). Concurrent
// callers (two test processes) wait on one lock, and a build lands in the
// cache by a rename, so a killed build leaves no half binary behind.
func BuildServer(ctx context.Context, logf func(string, ...any)) (string, error) {
	key, err := serverCacheKey(ctx)
	if err != nil {
		return "", err
	}
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "livekit-"+key)
	bin := filepath.Join(dir, "livekit-server")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(root, "livekit.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking the livekit cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too

	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return bin, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	logf("building livekit-server %s into %s; a cold build takes minutes", ServerVersion, dir)
	args := append(append([]string{"install"}, serverBuildFlags...), serverPkg+"@"+ServerVersion)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = tmp // outside any module: go install pkg@version ignores the current one anyway
	cmd.Env = append(os.Environ(), append(serverBuildEnv, "GOBIN="+tmp)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	if err := os.Rename(filepath.Join(tmp, "server"), filepath.Join(tmp, "livekit-server")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	logf("built livekit-server in %s", time.Since(start).Round(time.Second))
	return bin, nil
}
