package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildOptions say how Build compiles a binary.
type BuildOptions struct {
	// Name is the binary's file name; empty: the package's last element.
	Name string
	// CGO builds with cgo (the agent: go-nvml needs it); without it,
	// CGO_ENABLED=0, as the scaler's image is built.
	CGO bool
	// Race builds with the race detector (and cgo, which it needs).
	Race bool
}

// Build compiles the main package pkg of this module ("./cmd/agent")
// into dir and returns the binary's path.
func Build(ctx context.Context, dir, pkg string, o BuildOptions) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	name := o.Name
	if name == "" {
		name = filepath.Base(pkg)
	}
	bin := filepath.Join(dir, name)
	args := []string{"build", "-o", bin}
	if o.Race {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...) // #nosec G204 -- go build of this module's packages
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o.CGO || o.Race {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if os.Getenv("CGO_CFLAGS") == "" {
			// go-nvml's headers use deprecated declarations; the warnings are noise.
			cmd.Env = append(cmd.Env, "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, out)
	}
	return bin, nil
}

// ModuleRoot returns the directory of this module's go.mod: the go
// command's answer, else the first go.mod above the working directory.
func ModuleRoot() (string, error) {
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			return filepath.Dir(mod), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}
