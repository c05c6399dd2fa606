package testutil

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// test/chain and test/bench are commands: linking "testing" into them
// would drag its flags and machinery along.
func TestDoesNotImportTesting(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(pkg.Imports, "testing") {
		t.Errorf("package testutil imports testing (in %v); take a TB instead", pkg.GoFiles)
	}
}

func TestPoll(t *testing.T) {
	ctx := t.Context()
	calls := 0
	if err := Poll(ctx, time.Minute, func() (bool, error) { calls++; return calls == 3, nil }); err != nil || calls != 3 {
		t.Errorf("Poll = %v after %d calls, want nil after 3", err, calls)
	}

	notYet := errors.New("not yet: 41")
	err := Poll(ctx, 20*time.Millisecond, func() (bool, error) { return false, notYet })
	if !errors.Is(err, notYet) || !strings.Contains(err.Error(), "not within 20ms") {
		t.Errorf("Poll timing out = %v, want the timeout and the last reason", err)
	}

	fatal := errors.New("exited")
	calls = 0
	err = Poll(ctx, time.Minute, func() (bool, error) { calls++; return true, fatal })
	if err != fatal || calls != 1 {
		t.Errorf("Poll = %v after %d calls, want the condition's error at once", err, calls)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := Poll(cancelled, time.Minute, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Poll on a cancelled context = %v", err)
	}
}

// fakeTB records what the wrappers do to a test.
type fakeTB struct {
	*testing.T
	fatal string
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	panic(f)
}

func TestEventuallyFails(t *testing.T) {
	f := &fakeTB{T: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != f {
				panic(r)
			}
		}()
		Eventually(f, 10*time.Millisecond, "the moon", func() bool { return false })
	}()
	if !strings.Contains(f.fatal, "waiting for the moon") {
		t.Errorf("Eventually failed with %q, want it to name the wait", f.fatal)
	}
}

func shell(t *testing.T, name string, o ProcOptions, script string) *Proc {
	t.Helper()
	p, err := Start(name, o, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func TestProcStop(t *testing.T) {
	// Exits 0 on SIGTERM, as the agent does.
	p := shell(t, "graceful", ProcOptions{Env: []string{"GREETING=hello"}}, `trap 'echo bye; exit 0' TERM; echo $GREETING; while :; do sleep 0.01; done`)
	Eventually(t, 10*time.Second, "the greeting", func() bool { return strings.Contains(p.Output(), "hello") })
	if err := p.Alive(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(StopTimeout); err != nil {
		t.Errorf("Stop = %v, want nil for an exit 0", err)
	}
	if code := p.ExitCode(); code != 0 || !strings.Contains(p.Output(), "bye") {
		t.Errorf("exit code %d, output %q", code, p.Output())
	}
	if err := p.Stop(StopTimeout); err != nil {
		t.Errorf("second Stop = %v, want the first's nil", err)
	}

	// Ignores SIGTERM: killed after the grace period, and Stop says so.
	p = shell(t, "stubborn", ProcOptions{}, `trap '' TERM; echo ready; while :; do sleep 0.01; done`)
	Eventually(t, 10*time.Second, "the trap", func() bool { return strings.Contains(p.Output(), "ready") })
	if err := p.Stop(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Stop = %v, want it killed", err)
	}

	// Exited before Stop: Stop reports it, with the output.
	p = shell(t, "early", ProcOptions{}, `echo oops; exit 3`)
	<-p.Done()
	if err := p.Stop(StopTimeout); err == nil || !strings.Contains(err.Error(), "oops") || p.ExitCode() != 3 {
		t.Errorf("Stop = %v, exit code %d; want the early exit reported", err, p.ExitCode())
	}
}

// A process group is stopped whole: the shell's child goes too.
func TestProcGroup(t *testing.T) {
	log := filepath.Join(t.TempDir(), "group.log")
	p := shell(t, "group", ProcOptions{Group: true, LogFile: log}, `sleep 60 & echo $!; wait`)
	var child int
	Eventually(t, 10*time.Second, "the child's pid", func() bool {
		child, _ = strconv.Atoi(strings.TrimSpace(p.Output()))
		return child > 0
	})
	_ = p.Stop(StopTimeout) // sh exits on SIGTERM by the signal: an error
	Eventually(t, 10*time.Second, "the child to be gone", func() bool {
		// Gone, or a zombie its new parent has yet to reap.
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
	if !strings.Contains(p.Alive().Error(), "the end of "+log) {
		t.Errorf("Alive() = %v, want the log file named", p.Alive())
	}
}

func TestProcKill(t *testing.T) {
	p := shell(t, "victim", ProcOptions{}, `trap '' TERM; while :; do sleep 0.01; done`)
	p.Kill()
	if !p.Exited() || p.ExitCode() != -1 {
		t.Errorf("exited %v, code %d; want killed by a signal", p.Exited(), p.ExitCode())
	}
}

func TestWaitHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	p := shell(t, "server", ProcOptions{}, `while :; do sleep 0.01; done`)
	if err := p.WaitHTTP(t.Context(), nil, srv.URL+"/ready", 10*time.Second); err != nil {
		t.Errorf("WaitHTTP on a 200 = %v", err)
	}
	err := p.WaitHTTP(t.Context(), nil, srv.URL+"/never", 30*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("WaitHTTP on a 503 = %v, want the last answer", err)
	}

	dead := shell(t, "dead", ProcOptions{}, `echo crashed; exit 1`)
	start := time.Now()
	err = dead.WaitHTTP(t.Context(), nil, srv.URL+"/never", time.Minute)
	if err == nil || !strings.Contains(err.Error(), "crashed") {
		t.Errorf("WaitHTTP on an exited process = %v, want its exit and output", err)
	}
	t.Logf("an exited process noticed in %s", time.Since(start).Round(time.Millisecond))
}

// A real Prometheus scrapes a target and answers for it.
func TestPrometheus(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		t.Skip("prometheus is not on PATH")
	}
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "# TYPE answer gauge\nanswer 42")
	}))
	defer target.Close()
	p := StartPrometheusT(t, PrometheusOptions{Targets: []string{strings.TrimPrefix(target.URL, "http://")}, ScrapeInterval: 100 * time.Millisecond})
	var got float64
	err := Poll(t.Context(), 30*time.Second, func() (bool, error) {
		v, ok, err := p.Query(t.Context(), `answer{job="gpu-agent"}`)
		got = v
		return ok || err != nil, err
	})
	if err != nil || got != 42 {
		t.Fatalf("answer = %v, %v; want 42", got, err)
	}
	if v, ok, err := p.Query(t.Context(), `scalar(answer) * 2`); err != nil || !ok || v != 84 {
		t.Errorf("a scalar = %v, %v, %v; want 84", v, ok, err)
	}
	if _, ok, err := p.Query(t.Context(), `absent_metric`); err != nil || ok {
		t.Errorf("an empty vector: ok %v, err %v; want neither", ok, err)
	}
	if _, _, err := p.Query(t.Context(), `{job="gpu-agent"}`); err == nil {
		t.Error("several samples: no error")
	}
}
