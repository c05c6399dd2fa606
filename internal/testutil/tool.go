package testutil

import (
	"os"
	"os/exec"
)

// RequireTool returns the path of a binary a test needs, from the Debian
// package pkg. Without it the test skips on a laptop; under CI=true,
// where a missing tool is a broken CI image, it fails.
func RequireTool(t TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not on PATH and CI=true: install it (Debian package %s)", name, pkg)
	}
	t.Skipf("%s is not on PATH: skipping (install Debian's %s package; with CI=true this fails)", name, pkg)
	return ""
}
