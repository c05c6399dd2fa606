package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopTimeout is how long a process may take to exit after SIGTERM: the
// agent's and the scaler's shutdown budget.
const StopTimeout = 5 * time.Second

// ProcOptions say how a child process runs.
type ProcOptions struct {
	// Env is added to the environment the process inherits.
	Env []string
	// Group puts the process in a process group of its own, so that Stop,
	// Kill and Signal reach whatever it started too, and kills it if this
	// process dies first.
	Group bool
	// LogFile, when set, receives the process's output (kept for a failed
	// run's report) instead of memory; Output reads it back.
	LogFile string
}

// Proc is a running child process whose output is kept and whose exit is
// watched.
type Proc struct {
	Name string
	opts ProcOptions
	cmd  *exec.Cmd
	out  *syncBuffer // nil with a LogFile
	done chan struct{}
	err  error // Wait's result, set before done is closed

	stopOnce sync.Once
	stopErr  error
}

// Start runs bin with args as name.
func Start(name string, o ProcOptions, bin string, args ...string) (*Proc, error) {
	// #nosec G204 -- tests run the binaries they built, with the flags under test
	p := &Proc{Name: name, opts: o, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	if o.Env != nil {
		p.cmd.Env = append(os.Environ(), o.Env...)
	}
	if o.Group {
		p.cmd.SysProcAttr = groupAttr()
	}
	var log *os.File
	if o.LogFile != "" {
		f, err := os.Create(o.LogFile)
		if err != nil {
			return nil, fmt.Errorf("starting %s: %w", name, err)
		}
		log = f
		p.cmd.Stdout, p.cmd.Stderr = f, f
	} else {
		p.out = &syncBuffer{}
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	}
	if err := p.cmd.Start(); err != nil {
		if log != nil {
			_ = log.Close()
		}
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		if log != nil {
			_ = log.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// StartT is Start for a test: it fails t if the process does not start,
// and stops it at cleanup (SIGTERM, then SIGKILL after StopTimeout). At
// cleanup it also fails t if the race detector reported a race in the
// process, and logs the process's output if t failed.
func StartT(t TB, name string, o ProcOptions, bin string, args ...string) *Proc {
	t.Helper()
	p, err := Start(name, o, bin, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		_ = p.Stop(StopTimeout) // how it ended is the test's to check
		out := p.Output()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in %s", p.Name)
		}
		if t.Failed() {
			t.Logf("%s %s output:\n%s", p.Name, strings.Join(p.cmd.Args[1:], " "), out)
		}
	})
	return p
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Args returns the command line the process was started with.
func (p *Proc) Args() []string { return p.cmd.Args }

// LogFile returns the file the output goes to; empty if kept in memory.
func (p *Proc) LogFile() string { return p.opts.LogFile }

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode waits for the process to exit and returns its exit status; -1
// if a signal ended it.
func (p *Proc) ExitCode() int {
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

// Output returns what the process has written so far, stdout and stderr
// together.
func (p *Proc) Output() string {
	if p.out != nil {
		return p.out.String()
	}
	b, _ := os.ReadFile(p.opts.LogFile)
	return string(b)
}

// Tail returns the last n lines of the output.
func (p *Proc) Tail(n int) string { return Tail(p.Output(), n) }

// Alive returns an error, with the end of the output, once the process
// has exited.
func (p *Proc) Alive() error {
	if !p.Exited() {
		return nil
	}
	return fmt.Errorf("%s exited (%v)%s", p.Name, p.err, p.lastOutput(30))
}

// lastOutput introduces the last n lines of output in an error message.
func (p *Proc) lastOutput(n int) string {
	where := "its last output"
	if p.opts.LogFile != "" {
		where = "the end of " + p.opts.LogFile
	}
	return fmt.Sprintf("; %s:\n%s", where, p.Tail(n))
}

// Signal sends sig to the process, or to its group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.opts.Group {
		return syscall.Kill(-p.cmd.Process.Pid, sig)
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits for the process to exit; after grace it
// sends SIGKILL. A process group is sent SIGKILL in any case once its
// leader has exited (before Stop too), as the group may outlive it.
// Stop returns an error if the process exited before Stop, did not exit
// within grace, or exited with a non-zero status; callers that expect
// one of those (a control plane component that exits 1 on SIGTERM)
// ignore it. Only the first call stops; later ones return its result.
func (p *Proc) Stop(grace time.Duration) error {
	p.stopOnce.Do(func() { p.stopErr = p.stop(grace) })
	return p.stopErr
}

func (p *Proc) stop(grace time.Duration) error {
	if err := p.Alive(); err != nil {
		if p.opts.Group {
			_ = p.Signal(syscall.SIGKILL) // the group may outlive its leader
		}
		return err
	}
	_ = p.Signal(syscall.SIGTERM)
	killed := false
	select {
	case <-p.done:
	case <-time.After(grace):
		killed = true
	}
	if killed || p.opts.Group {
		_ = p.Signal(syscall.SIGKILL)
	}
	<-p.done
	switch {
	case killed:
		return fmt.Errorf("%s was still running %s after SIGTERM: killed", p.Name, grace)
	case p.err != nil:
		return fmt.Errorf("%s exited with %v after SIGTERM%s", p.Name, p.err, p.lastOutput(30))
	}
	return nil
}

// Kill ends the process (its group with Group) at once with SIGKILL, as a
// crash or an evicted pod would, and waits for it.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// WaitHTTP polls url with client (nil: one with a 1 s timeout) until it
// answers 200, the process exits, ctx ends or timeout passes.
func (p *Proc) WaitHTTP(ctx context.Context, client *http.Client, url string, timeout time.Duration) error {
	if client == nil {
		client = &http.Client{Timeout: time.Second}
	}
	err := Poll(ctx, timeout, func() (bool, error) {
		if err := p.Alive(); err != nil {
			return true, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return true, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		return true, nil
	})
	switch {
	case err == nil:
		return nil
	case p.Exited():
		return err // Alive's, with the output
	}
	return fmt.Errorf("%s: %s not 200: %w%s", p.Name, url, err, p.lastOutput(20))
}

// FreePort returns a TCP port free on host a moment ago. Another process
// may take it before the caller does: callers retry on collision.
func FreePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr returns a loopback address whose port was free a moment ago
// (see FreePort).
func FreeAddr() (string, error) {
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(port)), nil
}

// FreeAddrT is FreeAddr for a test.
func FreeAddrT(t TB) string {
	t.Helper()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	return addr
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// syncBuffer collects a child's output while others read it.
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
