package testutil

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// PrometheusOptions say what a Prometheus started by StartPrometheus
// scrapes and how it runs.
type PrometheusOptions struct {
	// Bin is the prometheus binary; empty: prometheus on PATH (Debian's
	// package prometheus).
	Bin string
	// Dir holds the configuration and the TSDB (and the log, with
	// Proc.LogFile); StartPrometheusT defaults it to a temporary one.
	Dir string
	// Targets are the host:port addresses scraped, as job gpu-agent with
	// honor_labels, as dcgm-exporter's users scrape it.
	Targets []string
	// ScrapeInterval is the scrape interval, the scrape timeout and the
	// evaluation interval; zero: one second.
	ScrapeInterval time.Duration
	// Proc says how the process runs (its own group, a log file).
	Proc ProcOptions
}

// Prometheus is a running Prometheus server.
type Prometheus struct {
	*Proc
	Addr   string // host:port of its HTTP API
	client *http.Client
}

// StartPrometheus runs Prometheus on a free loopback port and waits until
// it is ready. A port taken between choosing and listening is retried.
func StartPrometheus(ctx context.Context, o PrometheusOptions) (*Prometheus, error) {
	bin := o.Bin
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("prometheus"); err != nil {
			return nil, fmt.Errorf("prometheus is not on PATH (Debian: apt-get install prometheus): %w", err)
		}
	}
	every := o.ScrapeInterval
	if every == 0 {
		every = time.Second
	}
	quoted := make([]string, len(o.Targets))
	for i, t := range o.Targets {
		quoted[i] = strconv.Quote(t)
	}
	config := filepath.Join(o.Dir, "prometheus.yml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[1]s
scrape_configs:
  - job_name: gpu-agent
    honor_labels: true
    static_configs:
      - targets: [%[2]s]
`, every, strings.Join(quoted, ", ")), 0o600); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		p, err := Start("prometheus", o.Proc, bin, "--config.file="+config,
			"--storage.tsdb.path="+filepath.Join(o.Dir, fmt.Sprintf("prometheus-data-%d", attempt)),
			"--web.listen-address="+addr)
		if err != nil {
			return nil, err
		}
		err = p.WaitHTTP(ctx, nil, "http://"+addr+"/-/ready", 30*time.Second)
		if err == nil {
			return &Prometheus{Proc: p, Addr: addr, client: &http.Client{Timeout: 5 * time.Second}}, nil
		}
		_ = p.Stop(StopTimeout)
		if attempt < 3 && strings.Contains(p.Output(), "address already in use") {
			continue
		}
		return nil, err
	}
}

// StartPrometheusT is StartPrometheus for a test: it fails t on error and
// stops Prometheus at cleanup, as StartT does.
func StartPrometheusT(t TB, o PrometheusOptions) *Prometheus {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	p, err := StartPrometheus(t.Context(), o)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(StopTimeout); err != nil {
			t.Logf("%v", err)
		}
	})
	return p
}

// URL returns the base URL of the HTTP API.
func (p *Prometheus) URL() string { return "http://" + p.Addr }

// API GETs an HTTP API path ("/api/v1/metadata?metric=up") and decodes
// its data into data.
func (p *Prometheus) API(ctx context.Context, path string, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+path, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: %w: %s", resp.Status, err, body)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", resp.Status, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// Query runs an instant query whose result is at most one number: a
// one-sample vector or a scalar. ok is false while the vector is empty;
// more than one sample is an error.
func (p *Prometheus) Query(ctx context.Context, q string) (v float64, ok bool, err error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.API(ctx, "/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		return 0, false, fmt.Errorf("query %s: %w", q, err)
	}
	var value [2]any
	switch data.ResultType {
	case "scalar":
		if err := json.Unmarshal(data.Result, &value); err != nil {
			return 0, false, fmt.Errorf("query %s: %w", q, err)
		}
	case "vector":
		var samples []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &samples); err != nil {
			return 0, false, fmt.Errorf("query %s: %w", q, err)
		}
		switch len(samples) {
		case 0:
			return 0, false, nil
		case 1:
			value = samples[0].Value
		default:
			return 0, false, fmt.Errorf("query %s: want at most one sample, got %d", q, len(samples))
		}
	default:
		return 0, false, fmt.Errorf("query %s: a %s, want a vector or a scalar", q, data.ResultType)
	}
	s, isString := value[1].(string)
	if !isString {
		return 0, false, fmt.Errorf("query %s: value %v is not a string", q, value[1])
	}
	v, err = strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, false, fmt.Errorf("query %s: %w", q, err)
	}
	return v, true, nil
}
