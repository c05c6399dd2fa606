package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// proc is a binary under soak: its process and its own /metrics.
type proc struct {
	*testutil.Proc
	web, grpc string
	metrics   *http.Client // the harness's own reads, on a connection of their own
}

func startProc(name, bin string, args ...string) (*proc, error) {
	web, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	g, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := testutil.Start(name, testutil.ProcOptions{}, bin,
		append([]string{"--web.listen-address=" + web, "--grpc.listen-address=" + g, "--log.level=warn"}, args...)...)
	if err != nil {
		return nil, err
	}
	return &proc{Proc: p, web: web, grpc: g, metrics: &http.Client{Timeout: 10 * time.Second}}, nil
}

// read scrapes the process's /metrics in the text format. Under load the
// agent answers a scrape over --web.max-requests 503: read retries until
// one gets through.
func (p *proc) read(ctx context.Context) (map[string]float64, error) {
	var vals map[string]float64
	err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		if err := p.Alive(); err != nil {
			return true, err
		}
		var err error
		vals, err = scrapeValues(ctx, p.metrics, "http://"+p.web+"/metrics")
		return err == nil, err
	})
	return vals, err
}

// scrapeValues reads every series of a text /metrics, keyed by its name
// and labels as written (`gpu_scaler_nodes{state="fresh"}`), a family's
// series count under "count:NAME", and a histogram's sum and count.
func scrapeValues(ctx context.Context, client *http.Client, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", url, err)
	}
	vals := map[string]float64{}
	for name, mf := range mfs {
		vals["count:"+name] = float64(len(mf.Metric))
		for _, m := range mf.Metric {
			key := name
			if len(m.Label) > 0 {
				var ls []string
				for _, l := range m.Label {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				vals[key] = m.Gauge.GetValue()
			case m.Counter != nil:
				vals[key] = m.Counter.GetValue()
			case m.Untyped != nil:
				vals[key] = m.Untyped.GetValue()
			case m.Histogram != nil:
				vals[key+"_sum"] = m.Histogram.GetSampleSum()
				vals[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return vals, nil
}

// usage is what the harness samples of a process: memory from
// /proc/PID/status, open descriptors from /proc/PID/fd, and goroutines
// from its own /metrics (go_goroutines).
type usage struct {
	At         time.Time
	RSS, Anon  uint64
	FDs        int
	Goroutines float64
}

func (p *proc) usage(ctx context.Context) (usage, error) {
	u := usage{At: time.Now()}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return u, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		var dst *uint64
		switch k {
		case "VmRSS":
			dst = &u.RSS
		case "RssAnon":
			dst = &u.Anon
		default:
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			f.Close()
			return u, fmt.Errorf("%s: %w", k, err)
		}
		*dst = kb << 10
	}
	f.Close()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.PID()))
	if err != nil {
		return u, err
	}
	u.FDs = len(fds)
	vals, err := p.read(ctx)
	if err != nil {
		return u, err
	}
	g, ok := vals["go_goroutines"]
	if !ok {
		return u, fmt.Errorf("%s serves no go_goroutines", p.Name)
	}
	u.Goroutines = g
	return u, nil
}

// sampler records both processes' usage every period.
type sampler struct {
	mu      sync.Mutex
	samples map[string][]usage
	err     error
}

func sample(ctx context.Context, period time.Duration, ps ...*proc) (*sampler, func()) {
	s := &sampler{samples: map[string][]usage{}}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			for _, p := range ps {
				u, err := p.usage(ctx)
				s.mu.Lock()
				if err != nil && ctx.Err() == nil && s.err == nil {
					s.err = fmt.Errorf("sampling %s: %w", p.Name, err)
				}
				if err == nil {
					s.samples[p.Name] = append(s.samples[p.Name], u)
				}
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s, func() { cancel(); <-done }
}

// since returns the samples of name taken at or after t.
func (s *sampler) since(name string, t time.Time) []usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.samples[name], func(u usage) bool { return !u.At.Before(t) })
	if i < 0 {
		return nil
	}
	return slices.Clone(s.samples[name][i:])
}

// startKubelet serves the pods of test/bench's node: each of the gpus
// simulated GPUs time-sliced between pods/gpus pods, as the NVIDIA device
// plugin's replicas (<uuid>::<n>) spell it.
func startKubelet(dir string, gpus, pods int, seed int64) (*fk.Server, error) {
	k, err := fk.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		return nil, err
	}
	devs := sim.New(sim.Options{Devices: gpus, Seed: seed}).Devices()
	prs := make([]*podresourcesv1.PodResources, pods)
	for p := range prs {
		d := devs[p%len(devs)]
		prs[p] = fk.Pod("media", fmt.Sprintf("webrtc-sfu-%02d", p), fk.Container("sfu",
			fk.Devices("nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", d.UUID(), p/len(devs)))))
	}
	k.SetPods(prs)
	return k, nil
}

// fleetOf serves n fake agents of 8 GPUs, one inference pod each,
// publishing every period (staggered, as real nodes are), until ctx ends.
func fleetOf(ctx context.Context, n int, period time.Duration) ([]*scalertest.Agent, error) {
	fakes := make([]*scalertest.Agent, 0, n)
	for i := range n {
		a, err := scalertest.StartAgent(fmt.Sprintf("fake-%03d", i), "127.0.0.1:0")
		if err != nil {
			for _, a := range fakes {
				a.Stop()
			}
			return nil, err
		}
		a.Interval = period
		fakes = append(fakes, a)
	}
	for i, a := range fakes {
		go func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(period * time.Duration(i) / time.Duration(n)):
			}
			t := time.NewTicker(period)
			defer t.Stop()
			for tick := 0; ; tick++ {
				devs := make([]*telemetryv1.Device, 8)
				for g := range devs {
					u := 50 + 40*math.Sin(float64(tick+i*7+g)/10)
					devs[g] = scalertest.Device(fmt.Sprintf("GPU-%03d-%d", i, g), u, fmt.Sprintf("default/inference-%03d-%d", i, g))
				}
				a.Publish(devs...)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	return fakes, nil
}
