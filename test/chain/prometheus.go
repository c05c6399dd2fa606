package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/test/internal/proc"
)

// prometheusServer is a real Prometheus scraping the agents, as a
// dcgm-exporter user runs it for KEDA's prometheus trigger.
type prometheusServer struct {
	*proc.Proc
	addr string
}

func startPrometheus(dir string, targets []string, every time.Duration) (*prometheusServer, error) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, fmt.Errorf("chain mode needs prometheus on PATH (Debian: apt-get install prometheus): %w", err)
	}
	config := filepath.Join(dir, "prometheus.yml")
	quoted := make([]string, len(targets))
	for i, t := range targets {
		quoted[i] = strconv.Quote(t)
	}
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
scrape_configs:
  - job_name: gpu-agent
    honor_labels: true
    static_configs:
      - targets: [%[2]s]
`, every, strings.Join(quoted, ", ")), 0o644); err != nil {
		return nil, err
	}
	addr, err := proc.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := proc.Start("prometheus", bin, "--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "prometheus-data"), "--web.listen-address="+addr)
	if err != nil {
		return nil, err
	}
	s := &prometheusServer{Proc: p, addr: addr}
	if err := p.WaitHTTP("http://"+addr+"/-/ready", 30*time.Second); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return s, nil
}

// poll runs query every period, as KEDA's prometheus scaler does with
// pollingInterval, and sends each result with the time it arrived.
func (s *prometheusServer) poll(ctx context.Context, query string, period time.Duration) <-chan timedValue {
	out := make(chan timedValue, 1024)
	client := &http.Client{Timeout: 5 * time.Second}
	u := "http://" + s.addr + "/api/v1/query?query=" + url.QueryEscape(query)
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			v, err := instantQuery(ctx, client, u)
			if err != nil {
				continue // no data yet, or a slow answer: the next poll tries again
			}
			select {
			case out <- timedValue{at: time.Now(), value: v}:
			default:
			}
		}
	}()
	return out
}

// instantQuery returns the single value of a vector or scalar result.
func instantQuery(ctx context.Context, client *http.Client, u string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	if body.Status != "success" || len(body.Data.Result) != 1 {
		return 0, fmt.Errorf("query answered %s with %d series", body.Status, len(body.Data.Result))
	}
	str, ok := body.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("value %v is not a string", body.Data.Result[0].Value[1])
	}
	return strconv.ParseFloat(str, 64)
}
