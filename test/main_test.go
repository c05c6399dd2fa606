package test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from the agent's output")

// agentBin is the agent binary TestMain built for every test to run.
var agentBin string

// Bounds of the waits; generous because the agent may run under the race
// detector on a loaded two-core CI machine. Polls stop as soon as they pass.
const (
	readyTimeout = 20 * time.Second
	stopTimeout  = 5 * time.Second
	pollEvery    = 50 * time.Millisecond
)

// httpClient bounds every request; no test may hang on a stuck server.
var httpClient = &http.Client{Timeout: 5 * time.Second}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "gpu-agent-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	agentBin = filepath.Join(dir, "gpu-agent")
	args := []string{"build", "-o", agentBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/agent")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if os.Getenv("CGO_CFLAGS") == "" {
		// go-nvml's headers use deprecated declarations; the warnings are noise.
		cmd.Env = append(cmd.Env, "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, out)
		return 1
	}
	return m.Run()
}

// moduleRoot asks the go command for go.mod, falling back to a walk up
// from the test's directory.
func moduleRoot() (string, error) {
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
			return "", errors.New("no go.mod above the test directory")
		}
		dir = parent
	}
}

// requireTool returns the path of a tool the test needs. Without it the
// test skips, unless CI=true, where a missing tool is a broken CI image.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not on PATH and CI=true: install it (Debian package prometheus)", name)
	}
	t.Skipf("%s is not on PATH: skipping (install Debian's prometheus package; with CI=true this fails)", name)
	return ""
}

// freeAddr returns a loopback address whose port was free a moment ago.
// Another process may take it before we do: callers retry on collision.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("freeing port: %v", err)
	}
	return addr
}

// syncBuffer collects a child's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a child process the test owns: it is always stopped and waited
// for at cleanup.
type proc struct {
	name   string
	cmd    *exec.Cmd
	output *syncBuffer // stdout and stderr
	done   chan struct{}
	err    error // Wait's result, set before done is closed
}

func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, name, nil, bin, args...)
}

// startProcEnv is startProc with env added to the test's environment.
func startProcEnv(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), output: &syncBuffer{}, done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode is the exit status once the process has exited; -1 if a
// signal killed it.
func (p *proc) exitCode() int {
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// stop asks the process to exit (SIGTERM, so it cleans up its temp files),
// kills it if it does not, and waits for it. It reports a race the race
// detector found in the child, and the child's output if the test failed.
func (p *proc) stop(t *testing.T) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	out := p.output.String()
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in %s", p.name)
	}
	if t.Failed() {
		t.Logf("%s %s output:\n%s", p.name, strings.Join(p.cmd.Args[1:], " "), out)
	}
}

// agent is a running agent process serving on addr.
type agent struct {
	*proc
	addr string
}

// startAgent runs the agent with args on a free loopback port, as node
// golden-node, and waits until /readyz is 200. The gRPC server is off
// unless args set --grpc.listen-address (the last one given wins).
func startAgent(t *testing.T, args ...string) *agent {
	t.Helper()
	return startAgentEnv(t, nil, args...)
}

// startAgentEnv is startAgent with env added to the agent's environment.
func startAgentEnv(t *testing.T, env []string, args ...string) *agent {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		a := &agent{addr: addr, proc: startProcEnv(t, "gpu-agent", env, agentBin,
			append([]string{"--web.listen-address=" + addr, "--grpc.listen-address=", "--node-name=golden-node"}, args...)...)}
		err := a.waitReady()
		if err == nil {
			return a
		}
		if attempt < 3 && a.exited() && strings.Contains(a.output.String(), "address already in use") {
			continue // someone took the port between freeAddr and the agent's listen
		}
		t.Fatalf("agent %v: %v", args, err)
	}
}

func (a *agent) url(path string) string { return "http://" + a.addr + path }

func (a *agent) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		if a.exited() {
			return fmt.Errorf("exited with code %d before becoming ready", a.exitCode())
		}
		resp, err := httpClient.Get(a.url("/readyz"))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(pollEvery)
	}
	return fmt.Errorf("/readyz not 200 within %s; last: %s", readyTimeout, last)
}

// scrape fetches /metrics in the Prometheus text format.
func (a *agent) scrape(t *testing.T) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, a.url("/metrics"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("scraping: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading scrape: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s: %s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape Content-Type %q, want the text format", ct)
	}
	return string(body)
}

// waitMetrics scrapes until check passes on one scrape, and returns that
// scrape. check says what is missing, which the failure reports.
func (a *agent) waitMetrics(t *testing.T, timeout time.Duration, what string, check func(samples) error) samples {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := parseSamples(t, a.scrape(t))
		err := check(s)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %v", timeout, what, err)
		}
		if a.exited() {
			t.Fatalf("waiting for %s: agent exited with code %d", what, a.exitCode())
		}
		time.Sleep(pollEvery)
	}
}

// runAgent runs the agent to completion, killing it after timeout, and
// returns its exit code and stderr; timedOut says it had to be killed.
func runAgent(t *testing.T, timeout time.Duration, args ...string) (code int, stderr string, timedOut bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, agentBin, args...)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if strings.Contains(errBuf.String(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in gpu-agent %v:\n%s", args, errBuf.String())
	}
	if ctx.Err() != nil {
		return -1, errBuf.String(), true
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), errBuf.String(), false
	case err != nil:
		t.Fatalf("running agent: %v", err)
	}
	return 0, errBuf.String(), false
}
