package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// agentProc is the agent under test, run as a child process.
type agentProc struct {
	*testutil.Proc
	addr string
}

func startAgent(bin string, env []string, args ...string) (*agentProc, error) {
	addr, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := testutil.Start("the agent", testutil.ProcOptions{Env: env}, bin, append([]string{"--web.listen-address=" + addr, "--grpc.listen-address=127.0.0.1:0"}, args...)...)
	if err != nil {
		return nil, err
	}
	return &agentProc{Proc: p, addr: addr}, nil
}

// startPeer runs nvidia_gpu_exporter on a free loopback port.
func startPeer(bin string, env []string, args ...string) (*agentProc, error) {
	addr, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := testutil.Start("nvidia_gpu_exporter", testutil.ProcOptions{Env: env}, bin, append([]string{"--web.listen-address=" + addr}, args...)...)
	if err != nil {
		return nil, err
	}
	return &agentProc{Proc: p, addr: addr}, nil
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
	if !bytes.Contains(plain, []byte("\ngpu_agent_last_sample_timestamp_seconds ")) &&
		(bytes.Contains(plain, []byte("\nnvidia_smi_")) || bytes.HasPrefix(plain, []byte("floor_"))) {
		return r // the peer or the floor: they serve no sample time, so no age
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
