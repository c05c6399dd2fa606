package deploy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// privHelperEnv makes TestPrivilegeHelper do its probe instead of
// skipping: the test binary re-executed under setpriv.
const privHelperEnv = "GPU_AGENT_PRIV_HELPER_SOCKET"

// TestPrivilegeHelper is not a test of its own: run by TestPrivileges
// with the DaemonSet's user and no capabilities, it reports what such a
// process can do: connect to a socket laid out as the kubelet's
// pod-resources socket, read another process's cgroup, read its environ.
func TestPrivilegeHelper(t *testing.T) {
	sock := os.Getenv(privHelperEnv)
	if sock == "" {
		t.Skip("run by TestPrivileges")
	}
	result := func(err error) string {
		switch {
		case err == nil:
			return "ok"
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return "denied"
		default:
			return "error:" + err.Error()
		}
	}
	c, err := net.Dial("unix", sock)
	if err == nil {
		c.Close()
	}
	_, cgErr := os.ReadFile("/proc/1/cgroup")
	_, envErr := os.ReadFile("/proc/1/environ")
	fmt.Printf("socket=%s cgroup=%s environ=%s\n", result(err), result(cgErr), result(envErr))
}

// What the agent's securityContext lets it do, measured: the DaemonSet's
// user with every capability dropped connects to a socket laid out as the
// kubelet makes its pod-resources socket (root's, 0755, in a 0750
// directory) and reads a host process's /proc/<pid>/cgroup, and cannot
// read its environ (so the capabilities are really gone); an unprivileged
// user cannot connect (so UID 0 is needed). Needs root and setpriv
// (util-linux); skipped without them, except under CI=true.
func TestPrivileges(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if os.Geteuid() != 0 || err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: needs root and setpriv (euid %d, %v)", os.Geteuid(), err)
		}
		t.Skip("needs root and setpriv")
	}
	ds := one[*appsv1.DaemonSet](t, kustomized(t, "deploy"), "DaemonSet", "")
	psc := ds.Spec.Template.Spec.SecurityContext
	if psc == nil || psc.RunAsUser == nil || psc.RunAsGroup == nil {
		t.Fatal("the DaemonSet sets no runAsUser and runAsGroup")
	}
	c := container(t, ds.Spec.Template.Spec, "gpu-agent")
	if c.SecurityContext == nil || c.SecurityContext.Capabilities == nil || len(c.SecurityContext.Capabilities.Add) > 0 {
		t.Fatalf("the agent's capabilities: %+v; this measures the default, with none", c.SecurityContext)
	}

	// The kubelet's layout: /var/lib/kubelet/pod-resources 0750 root,
	// kubelet.sock 0755 root (the kubelet's umask).
	base, err := os.MkdirTemp("", "gpu-agent-priv")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "pod-resources")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "kubelet.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(sock, 0o755); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// The test binary, where any user may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(base, "helper")
	copyFile(t, self, helper)

	run := func(uid, gid int64) string {
		t.Helper()
		cmd := exec.Command(setpriv, "--reuid="+strconv.FormatInt(uid, 10), "--regid="+strconv.FormatInt(gid, 10), "--clear-groups",
			"--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
			helper, "-test.run=^TestPrivilegeHelper$", "-test.v")
		cmd.Env = append(os.Environ(), privHelperEnv+"="+sock)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setpriv %v: %v\n%s", cmd.Args[1:], err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "socket=") {
				return line
			}
		}
		t.Fatalf("helper said:\n%s", out)
		return ""
	}
	if got, want := run(*psc.RunAsUser, *psc.RunAsGroup), "socket=ok cgroup=ok environ=denied"; got != want {
		t.Errorf("UID %d, no capabilities: %s, want %s", *psc.RunAsUser, got, want)
	} else {
		t.Logf("UID %d, no capabilities: %s", *psc.RunAsUser, got)
	}
	if got, want := run(65534, 65534), "socket=denied cgroup=ok environ=denied"; got != want {
		t.Errorf("UID 65534, no capabilities: %s, want %s", got, want)
	} else {
		t.Logf("UID 65534, no capabilities: %s", got)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
