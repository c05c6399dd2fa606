package cluster

import (
	"errors"
	"path/filepath"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// startProcess runs bin as name the way this harness runs every process:
// in a process group of its own, so that stopping it also stops anything
// it started, with its output in name.log in the run's directory (kept
// for a failed test's report), and env added to its environment.
func startProcess(dir, name string, env []string, bin string, args ...string) (*testutil.Proc, error) {
	return testutil.Start(name, testutil.ProcOptions{Env: env, Group: true, LogFile: filepath.Join(dir, name+".log")}, bin, args...)
}

// stopGrace is how long a process may take to exit after SIGTERM. How it
// exits is not checked: the control plane's components do not all exit 0
// on SIGTERM.
const stopGrace = testutil.StopTimeout

// errSkip marks a missing prerequisite: skipped on a laptop, failed
// under CI=true.
var errSkip = errors.New("missing prerequisite")
