package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// agentProc is the agent under test, run as a child process.
type agentProc struct {
	cmd  *exec.Cmd
	addr string
	out  *lockedBuffer
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startAgent(bin string, args ...string) (*agentProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	a := &agentProc{addr: addr, out: &lockedBuffer{}, done: make(chan struct{})}
	// The gRPC server runs, idle, as on a node, on a port of its own so
	// that no other agent on the machine collides with it.
	a.cmd = exec.Command(bin, append([]string{"--web.listen-address=" + addr, "--grpc.listen-address=127.0.0.1:0"}, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

// alive returns an error, with the agent's last output, once it exited.
func (a *agentProc) alive() error {
	select {
	case <-a.done:
		return fmt.Errorf("the agent exited (%v); its last output:\n%s", a.err, tail(a.out.String(), 30))
	default:
		return nil
	}
}

// stop sends SIGTERM and waits; it fails if the agent does not exit 0
// within its 5 s shutdown budget.
func (a *agentProc) stop() error {
	if err := a.alive(); err != nil {
		return err
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("the agent was still running 5s after SIGTERM")
	}
	if a.err != nil {
		return fmt.Errorf("the agent exited with %v after SIGTERM; its last output:\n%s", a.err, tail(a.out.String(), 30))
	}
	return nil
}

func tail(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

// promAccept is the Accept header of a Prometheus 2.x scrape: OpenMetrics
// first, the text format as a fallback.
const promAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// scrapeResult is one timed scrape, made as Prometheus makes it.
type scrapeResult struct {
	latency   time.Duration // request sent to body fully read
	age       time.Duration // how old the snapshot served was when the request was sent
	wireBytes int           // gzip-compressed body
	err       error
}

// timedScrape fetches /metrics as Prometheus does (OpenMetrics, gzip) and
// times it to the last byte. It decompresses the body after the clock
// stops, to check it is whole.
func timedScrape(ctx context.Context, client *http.Client, url string) scrapeResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return scrapeResult{err: err}
	}
	req.Header.Set("Accept", promAccept)
	req.Header.Set("Accept-Encoding", "gzip") // set by hand, so the client leaves the body compressed
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return scrapeResult{err: err}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := scrapeResult{latency: time.Since(start), wireBytes: len(body), err: err}
	if r.err != nil {
		return r
	}
	if resp.StatusCode != http.StatusOK {
		r.err = fmt.Errorf("scrape: %s", resp.Status)
		return r
	}
	plain := body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			plain, err = io.ReadAll(zr)
		}
		if err != nil {
			r.err = fmt.Errorf("scrape body: %w", err)
			return r
		}
	}
	ts, err := lastSampleTime(plain)
	if err != nil {
		r.err = err
		return r
	}
	r.age = start.Sub(ts)
	return r
}

// lastSampleTime reads gpu_agent_last_sample_timestamp_seconds from a
// scrape: when the snapshot served was sampled.
func lastSampleTime(body []byte) (time.Time, error) {
	const name = "\ngpu_agent_last_sample_timestamp_seconds "
	i := bytes.Index(body, []byte(name))
	if i < 0 {
		return time.Time{}, fmt.Errorf("scrape without %s", strings.TrimSpace(name))
	}
	rest := body[i+len(name):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	sec, err := strconv.ParseFloat(string(rest), 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("gpu_agent_last_sample_timestamp_seconds: %w", err)
	}
	return time.Unix(0, int64(sec*1e9)), nil
}

// textScrape fetches /metrics in the text format, uncompressed: the
// harness's own, untimed reads of the agent's counters.
func textScrape(client *http.Client, url string) ([]byte, map[string]float64, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("scrape: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("parsing /metrics: %w", err)
	}
	// The unlabelled series the harness reads, plus per-family counts.
	vals := map[string]float64{}
	for name, mf := range mfs {
		vals["count:"+name] = float64(len(mf.Metric))
		for _, m := range mf.Metric {
			if len(m.Label) > 0 {
				continue
			}
			switch {
			case m.Gauge != nil:
				vals[name] = m.Gauge.GetValue()
			case m.Counter != nil:
				vals[name] = m.Counter.GetValue()
			case m.Untyped != nil:
				vals[name] = m.Untyped.GetValue()
			case m.Histogram != nil:
				vals[name+"_sum"] = m.Histogram.GetSampleSum()
				vals[name+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return body, vals, nil
}

// countSeries counts the sample lines of a text or OpenMetrics body.
func countSeries(body []byte) int {
	n := 0
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		if len(line) > 0 && line[0] != '#' {
			n++
		}
	}
	return n
}

// waitFor polls check until it returns nil, the agent exits or timeout
// passes.
func waitFor(a *agentProc, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if dead := a.alive(); dead != nil {
			return fmt.Errorf("waiting for %s: %w", what, dead)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting %s for %s: %w", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
