package test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from the agent's output")

// agentBin is the agent binary TestMain built for every test to run.
var agentBin string

// readyTimeout bounds the wait for a process to serve; generous because
// the agent may run under the race detector on a loaded two-core CI
// machine. Polls stop as soon as they pass.
const readyTimeout = 20 * time.Second

// httpClient bounds every request; no test may hang on a stuck server.
var httpClient = &http.Client{Timeout: 5 * time.Second}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	if os.Getenv(mockHealthChildEnv) != "" {
		return m.Run() // a child of TestMockNVMLHealthFields: no agent to run
	}
	if os.Getenv(dcgmChildEnv) != "" {
		return m.Run() // a child of a DCGM Source test: no agent to run
	}
	dir, err := os.MkdirTemp("", "gpu-agent-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	agentBin, err = testutil.Build(context.Background(), dir, "./cmd/agent",
		testutil.BuildOptions{Name: "gpu-agent", CGO: true, Race: raceEnabled})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// agent is a running agent process serving on addr.
type agent struct {
	*testutil.Proc
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
		addr := testutil.FreeAddrT(t)
		a := &agent{addr: addr, Proc: testutil.StartT(t, "gpu-agent", testutil.ProcOptions{Env: env}, agentBin,
			append([]string{"--web.listen-address=" + addr, "--grpc.listen-address=", "--node-name=golden-node"}, args...)...)}
		err := a.waitReady(t)
		if err == nil {
			return a
		}
		if attempt < 3 && a.Exited() && strings.Contains(a.Output(), "address already in use") {
			continue // someone took the port between freeAddr and the agent's listen
		}
		t.Fatalf("agent %v: %v", args, err)
	}
}

func (a *agent) url(path string) string { return "http://" + a.addr + path }

// waitReady waits until /readyz answers 200.
func (a *agent) waitReady(t *testing.T) error {
	return a.WaitHTTP(t.Context(), httpClient, a.url("/readyz"), readyTimeout)
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
	var s samples
	err := testutil.Poll(t.Context(), timeout, func() (bool, error) {
		s = parseSamples(t, a.scrape(t))
		if err := check(s); err != nil {
			if a.Exited() {
				return true, fmt.Errorf("agent exited with code %d", a.ExitCode())
			}
			return false, err
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return s
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
