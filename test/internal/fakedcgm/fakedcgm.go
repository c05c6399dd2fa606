// Package fakedcgm builds a fake libdcgm.so.4 (csrc/fake_dcgm.c) for tests
// that run internal/dcgm through go-dcgm's real cgo path, without a GPU or
// a host engine. It is built with gcc, against go-dcgm's vendored
// headers, with the soname go-dcgm dlopens.
//
// go-dcgm binds each C call lazily, and a call the library does not
// export kills the process (exit 127). The fake exports every entry point
// internal/dcgm reaches: errorString, dcgmInit, dcgmShutdown,
// dcgmStartEmbedded, dcgmStopEmbedded, dcgmConnect_v2, dcgmConnect_v3,
// dcgmDisconnect, dcgmGetAllSupportedDevices, dcgmGetAllDevices,
// dcgmEntitiesGetLatestValues (the UUID, field 54), dcgmGroupCreate,
// dcgmGroupAddEntity, dcgmGroupAddDevice, dcgmGroupDestroy,
// dcgmFieldGroupCreate, dcgmFieldGroupDestroy, dcgmWatchFields,
// dcgmUnwatchFields, dcgmUpdateAllFields, dcgmGetValuesSince_v2.
//
// The library reads its control file ($FAKEDCGM_CONTROL) on every call,
// so a test steps values and injects failures while it runs (Control).
// glibc reads LD_LIBRARY_PATH only at start: the test binary re-executes
// itself with Env set.
package fakedcgm

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed csrc/fake_dcgm.c
var source []byte

// ControlEnv names the control file's environment variable.
const ControlEnv = "FAKEDCGM_CONTROL"

// ErrNoCompiler marks a machine without gcc: tests skip, except under
// CI=true.
var ErrNoCompiler = errors.New("gcc not found: cannot build the fake libdcgm.so.4")

// Build compiles the fake into dir/libdcgm.so.4 and returns dir.
func Build(dir string) (string, error) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", ErrNoCompiler
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/NVIDIA/go-dcgm").Output()
	if err != nil {
		return "", fmt.Errorf("finding go-dcgm's headers: %w", err)
	}
	headers := filepath.Join(strings.TrimSpace(string(out)), "pkg", "dcgm")
	src := filepath.Join(dir, "fake_dcgm.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", err
	}
	cmd := exec.Command(gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I"+headers,
		"-Wl,-soname,libdcgm.so.4", "-o", filepath.Join(dir, "libdcgm.so.4"), src)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the fake libdcgm.so.4: %w\n%s", err, b)
	}
	return dir, nil
}

// Control is the fake's control file: one key=value a line.
//
//	gpus=GPU-a,GPU-b           the GPUs' UUIDs (default two fixed ones)
//	instances=0/1,0/2          MIG GPU instances, <DCGM GPU ID>/<NVML GPU instance ID>
//	                           (none by default); entity IDs are GPU ID * 8 + place,
//	                           as the host engine numbers them; each has one compute instance
//	value.<field>=<v>          every entity's value of a profiling field (1001-1012)
//	value.<gpu>.<field>=<v>    one GPU's (its DCGM ID, 0-based)
//	value.i<entity>.<field>=<v> one GPU instance's (its entity ID)
//	fail.<function>=<code>     the function returns that dcgmReturn_t (-21: disconnected, -34: in use)
//	fail.*=<code>              every function but dcgmShutdown and errorString does
//	hang.<function>=<ms>       the function sleeps that long before answering
type Control struct {
	Path string
}

// Set replaces the file's content with lines, atomically.
func (c Control) Set(lines ...string) error {
	tmp := c.Path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.Path)
}
