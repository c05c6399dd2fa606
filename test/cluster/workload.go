package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// Node is one simulated node: an agent on --simulate with a load file.
// GPU i holds default/inference-i; the last GPU is shared by
// media/webrtc-sfu-0 and -1 (see docs/agent.md, The simulated node).
type Node struct {
	Name, Web, GRPC, LoadFile string
	p                         *testutil.Proc
}

// Load is a node's GPU utilization: Base on every GPU, GPUs overriding it
// by index.
type Load struct {
	Base float64
	GPUs map[int]float64
}

// At returns the load of GPU i.
func (l Load) At(i int) float64 {
	if v, ok := l.GPUs[i]; ok {
		return v
	}
	return l.Base
}

// StartNode starts an agent simulating gpus GPUs sampled every interval,
// at load l.
func StartNode(dir, bin string, i, gpus int, interval time.Duration, l Load, extra ...string) (*Node, error) {
	n := &Node{Name: fmt.Sprintf("node-%d", i), LoadFile: filepath.Join(dir, fmt.Sprintf("load-node-%d.json", i))}
	for _, a := range []*string{&n.Web, &n.GRPC} {
		port, err := testutil.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		*a = "127.0.0.1:" + strconv.Itoa(port)
	}
	if err := n.SetLoad(l); err != nil {
		return nil, err
	}
	var err error
	args := append([]string{
		fmt.Sprintf("--simulate=%d", gpus),
		fmt.Sprintf("--simulate.seed=%d", i+1),
		"--simulate.load-file=" + n.LoadFile,
		"--node-name=" + n.Name,
		"--interval=" + interval.String(),
		"--web.listen-address=" + n.Web,
		"--grpc.listen-address=" + n.GRPC,
	}, extra...)
	n.p, err = startProcess(dir, n.Name, nil, bin, args...)
	if err != nil {
		return nil, err
	}
	return n, n.p.WaitHTTP(context.Background(), nil, "http://"+n.Web+"/readyz", 30*time.Second)
}

// SetLoad steps the node's GPUs to l, atomically (the agent polls the
// file every 50 ms and must never read half of it).
func (n *Node) SetLoad(l Load) error {
	gpus := map[string]map[string]float64{}
	for i, v := range l.GPUs {
		gpus[strconv.Itoa(i)] = map[string]float64{"gpu_util": v}
	}
	b, err := json.Marshal(map[string]any{"gpu_util": l.Base, "gpus": gpus})
	if err != nil {
		return err
	}
	tmp := n.LoadFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, n.LoadFile)
}

// WatchStep subscribes to the node's push stream (as the scaler does)
// before a step is written, and returns a function that waits for the
// first snapshot whose GPUs carry l and returns the sample time of the
// first snapshot that showed any of the step (a GPU's or a pod's share of
// utilization changed): when the step was published, the origin every
// delay is measured from, so that the
// sampling interval counts for neither path. The stream's first message
// (the latest snapshot) is read before it returns, so the step cannot
// have been published before the watch began.
func (n *Node) WatchStep(ctx context.Context, l Load, timeout time.Duration) (func() (time.Time, error), error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := grpc.NewClient(n.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		return nil, err
	}
	stream, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{IncludeUnattributed: true})
	var first *telemetryv1.NodeSnapshot
	if err == nil {
		if first, err = stream.Recv(); err == nil && carries(first, l) {
			err = fmt.Errorf("%s already published %+v before the step", n.Name, l)
		}
	}
	if err != nil {
		conn.Close()
		cancel()
		return nil, err
	}
	// The stream is read from now on, not only once the caller waits: the
	// agent keeps 4 snapshots per subscriber and drops the oldest, so a
	// caller busy writing steps for 4 intervals would otherwise miss the
	// first snapshot of the step and time from a later one (seen: the
	// push path's wake recorded "before" the step).
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer conn.Close()
		// The step is published with the first snapshot that shows any of
		// it: a GPU's utilization, or a pod's own share of it (the
		// scaler's value), which NVML's per-process samples may show a
		// tick before or after the device's figure.
		var at time.Time
		for {
			snap, err := stream.Recv()
			if err != nil {
				done <- result{err: fmt.Errorf("%s never published %+v: %w", n.Name, l, err)}
				return
			}
			if snap.GetSkipped() > 0 {
				done <- result{err: fmt.Errorf("%s: the step's watch fell %d snapshots behind", n.Name, snap.GetSkipped())}
				return
			}
			if at.IsZero() && !sameGPUUtil(first, snap) {
				at = snap.GetSampleTime().AsTime()
			}
			if carries(snap, l) {
				if at.IsZero() {
					at = snap.GetSampleTime().AsTime()
				}
				done <- result{at: at}
				return
			}
		}
	}()
	return func() (time.Time, error) {
		defer cancel()
		r := <-done
		return r.at, r.err
	}, nil
}

// sameGPUUtil reports whether two snapshots of a node show the same GPU
// utilization, device by device and pod share by pod share.
func sameGPUUtil(a, b *telemetryv1.NodeSnapshot) bool {
	if len(a.GetDevices()) != len(b.GetDevices()) {
		return false
	}
	for i, da := range a.GetDevices() {
		db := b.GetDevices()[i]
		if da.GetGpuIndex() != db.GetGpuIndex() || da.GetGpuUtil() != db.GetGpuUtil() || len(da.GetPods()) != len(db.GetPods()) {
			return false
		}
		for j, pa := range da.GetPods() {
			if pa.GetGpuUtil() != db.GetPods()[j].GetGpuUtil() {
				return false
			}
		}
	}
	return true
}

func carries(snap *telemetryv1.NodeSnapshot, l Load) bool {
	if len(snap.GetDevices()) == 0 {
		return false
	}
	for _, d := range snap.GetDevices() {
		if d.GpuUtil == nil || d.GetGpuUtil() != l.At(int(d.GetGpuIndex())) {
			return false
		}
	}
	return true
}

// Scaler is cmd/scaler subscribed to the agents.
type Scaler struct {
	Addr, Web string
	p         *testutil.Proc
}

// StartScaler starts the scaler on the agents' streams.
func StartScaler(dir, bin string, nodes []*Node) (*Scaler, error) {
	s := &Scaler{}
	for _, a := range []*string{&s.Addr, &s.Web} {
		port, err := testutil.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		*a = "127.0.0.1:" + strconv.Itoa(port)
	}
	if err := s.start(dir, bin, nodes); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Scaler) start(dir, bin string, nodes []*Node) error {
	var agents []string
	for _, n := range nodes {
		agents = append(agents, n.GRPC)
	}
	var err error
	s.p, err = startProcess(dir, "scaler", nil, bin, "--agents="+strings.Join(agents, ","),
		"--grpc.listen-address="+s.Addr, "--web.listen-address="+s.Web)
	if err != nil {
		return err
	}
	return s.p.WaitHTTP(context.Background(), nil, "http://"+s.Web+"/healthz", 30*time.Second)
}

// Metric returns the value of one unlabelled series of the scaler's
// /metrics (0 when absent).
func (s *Scaler) Metric(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Web+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

// StartPrometheus starts Debian's prometheus scraping nodes every
// interval, as a dcgm-exporter user runs it for KEDA's prometheus
// trigger.
func StartPrometheus(ctx context.Context, dir string, nodes []*Node, every time.Duration) (*testutil.Prometheus, error) {
	bin, err := lookTool("prometheus", "prometheus")
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, n := range nodes {
		targets = append(targets, n.Web)
	}
	return testutil.StartPrometheus(ctx, testutil.PrometheusOptions{
		Bin: bin, Dir: dir, Targets: targets, ScrapeInterval: every,
		Proc: testutil.ProcOptions{Group: true, LogFile: filepath.Join(dir, "prometheus.log")},
	})
}

// queryValue runs an instant query that must reduce to one value: an
// empty answer (not scraped yet) is an error.
func queryValue(ctx context.Context, p *testutil.Prometheus, q string) (float64, error) {
	v, ok, err := p.Query(ctx, q)
	if err == nil && !ok {
		err = fmt.Errorf("%s: no sample yet", q)
	}
	return v, err
}

// agentBinaries builds the agent (with cgo: go-nvml needs it) and the
// scaler (without, as its image is built) of this module into dir.
func agentBinaries(ctx context.Context, dir string) (agent, scaler string, err error) {
	if agent, err = testutil.Build(ctx, dir, "./cmd/agent", testutil.BuildOptions{CGO: true}); err != nil {
		return "", "", err
	}
	scaler, err = testutil.Build(ctx, dir, "./cmd/scaler", testutil.BuildOptions{})
	return agent, scaler, err
}
