package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// stepTimeout bounds the wait for one step to be seen on every path.
const stepTimeout = 30 * time.Second

// node is one simulated node: an agent process.
type node struct {
	*testutil.Proc
	name, web, grpc, load string
}

func run(ctx context.Context, cfg config, agentBin, scalerBin string) (*report, error) {
	dir, cleanup, err := tempDir()
	if err != nil {
		return nil, err
	}
	defer cleanup()
	log.Print("building the agent and the scaler")
	if agentBin, scalerBin, err = binaries(ctx, dir, agentBin, scalerBin); err != nil {
		return nil, err
	}

	var nodes []*node
	defer func() {
		for _, n := range nodes {
			if err := n.Stop(testutil.StopTimeout); err != nil {
				log.Print(err)
			}
		}
	}()
	for i := range cfg.Nodes {
		n, err := startNode(dir, agentBin, cfg, i)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	var grpcAddrs, webAddrs []string
	for _, n := range nodes {
		if err := n.WaitHTTP(ctx, nil, "http://"+n.web+"/readyz", 30*time.Second); err != nil {
			return nil, err
		}
		grpcAddrs, webAddrs = append(grpcAddrs, n.grpc), append(webAddrs, n.web)
	}

	scalerAddr, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	scalerWeb, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	scaler, err := testutil.Start("scaler", testutil.ProcOptions{}, scalerBin, "--agents="+strings.Join(grpcAddrs, ","),
		"--grpc.listen-address="+scalerAddr, "--web.listen-address="+scalerWeb)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := scaler.Stop(testutil.StopTimeout); err != nil {
			log.Print(err)
		}
	}()
	if err := scaler.WaitHTTP(ctx, nil, "http://"+scalerWeb+"/healthz", 30*time.Second); err != nil {
		return nil, err
	}

	var prom *testutil.Prometheus
	if cfg.Mode == "chain" {
		if prom, err = testutil.StartPrometheus(ctx, testutil.PrometheusOptions{Dir: dir, Targets: webAddrs, ScrapeInterval: cfg.ScrapeInterval}); err != nil {
			return nil, err
		}
		defer func() {
			if err := prom.Stop(testutil.StopTimeout); err != nil {
				log.Print(err)
			}
		}()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	published, err := watchPublished(ctx, nodes[0].grpc, cfg)
	if err != nil {
		return nil, err
	}
	k, err := dialKEDA(ctx, scalerAddr, &externalscaler.ScaledObjectRef{Name: "inference", Namespace: "default", ScalerMetadata: triggerMetadata})
	if err != nil {
		return nil, err
	}
	defer k.conn.Close()
	var promSeen <-chan timedValue
	if prom != nil {
		promSeen = pollPrometheus(ctx, prom, promQuery, cfg.QueryInterval)
	}

	// Wait until every path sees the low state before the first step.
	if err := waitSettled(ctx, k, cfg.Low); err != nil {
		return nil, fmt.Errorf("before the first step: %w", err)
	}
	if promSeen != nil {
		if err := waitPrometheus(ctx, promSeen, cfg.Low); err != nil {
			return nil, fmt.Errorf("before the first step: %w", err)
		}
	}
	drain(k.active) // StreamIsActive's first message: the state before any step
	rep := &report{Config: cfg}
	log.Printf("timing %d steps", cfg.Steps)
	for s := range cfg.Steps {
		high := s%2 == 0
		level := cfg.Low
		if high {
			level = cfg.High
		}
		// A transition the scaler sent between steps is not one the harness
		// caused: count it, and never time a step by it.
		rep.Flaps += drain(k.active)
		if err := writeLoad(nodes[0].load, level); err != nil {
			return rep, err
		}
		if err := timeStep(ctx, cfg, k, published, promSeen, high, level, rep); err != nil {
			return rep, fmt.Errorf("step %d to %g%%: %w", s+1, level, err)
		}
		for _, n := range nodes {
			if err := n.Alive(); err != nil {
				return rep, err
			}
		}
		if err := scaler.Alive(); err != nil {
			return rep, err
		}
		// A random phase against the sampler's ticks (and, for the
		// Prometheus path, its scrapes and polls).
		phase := cfg.Interval
		if prom != nil {
			phase = max(cfg.ScrapeInterval, cfg.QueryInterval)
		}
		time.Sleep(rand.N(phase))
		if (s+1)%100 == 0 {
			log.Printf("%d steps", s+1)
		}
	}
	return rep, nil
}

func startNode(dir, bin string, cfg config, i int) (*node, error) {
	web, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	grpcAddr, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	n := &node{name: fmt.Sprintf("node-%d", i), web: web, grpc: grpcAddr, load: loadFile(dir, i)}
	if err := writeLoad(n.load, cfg.Low); err != nil {
		return nil, err
	}
	n.Proc, err = testutil.Start(n.name, testutil.ProcOptions{}, bin,
		fmt.Sprintf("--simulate=%d", cfg.GPUs),
		fmt.Sprintf("--simulate.seed=%d", i+1),
		"--simulate.load-file="+n.load,
		"--node-name="+n.name,
		"--interval="+cfg.Interval.String(),
		"--web.listen-address="+web,
		"--grpc.listen-address="+grpcAddr,
	)
	return n, err
}

// writeLoad sets every GPU of a node to level, atomically (the agent
// polls the file and must never read half of it).
func writeLoad(path string, level float64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, `{"gpu_util": %g}`+"\n", level), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// timedValue is a value and when it was seen.
type timedValue struct {
	at    time.Time
	value float64
}

// watchPublished subscribes to one agent and sends, for each snapshot,
// its sample time and the highest GPU utilization of its inference
// pods: the harness's view of when a step was published.
func watchPublished(ctx context.Context, addr string, cfg config) (<-chan timedValue, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	stream, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{Namespace: "default", PodPattern: "inference-.*"})
	if err != nil {
		conn.Close()
		return nil, err
	}
	out := make(chan timedValue, 1024)
	go func() {
		defer conn.Close()
		defer close(out)
		for {
			snap, err := stream.Recv()
			if err != nil {
				return
			}
			v := -1.0
			for _, d := range snap.GetDevices() {
				if d.GpuUtil != nil {
					v = max(v, d.GetGpuUtil())
				}
			}
			select {
			case out <- timedValue{at: snap.GetSampleTime().AsTime(), value: v}:
			default: // the harness is not listening now
			}
		}
	}()
	return out, nil
}

// keda is KEDA's own generated client, called as KEDA calls it.
type keda struct {
	conn   *grpc.ClientConn
	client externalscaler.ExternalScalerClient
	ref    *externalscaler.ScaledObjectRef
	metric string
	active <-chan timedValue // StreamIsActive messages: 1 true, 0 false
}

func dialKEDA(ctx context.Context, addr string, ref *externalscaler.ScaledObjectRef) (*keda, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	k := &keda{conn: conn, client: externalscaler.NewExternalScalerClient(conn), ref: ref}
	spec, err := k.client.GetMetricSpec(ctx, k.ref)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("GetMetricSpec: %w", err)
	}
	if len(spec.GetMetricSpecs()) != 1 {
		conn.Close()
		return nil, fmt.Errorf("GetMetricSpec: %d specs, want 1", len(spec.GetMetricSpecs()))
	}
	k.metric = spec.GetMetricSpecs()[0].GetMetricName()
	stream, err := k.client.StreamIsActive(ctx, k.ref)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("StreamIsActive: %w", err)
	}
	active := make(chan timedValue, 1024)
	go func() {
		defer close(active)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			v := 0.0
			if m.GetResult() {
				v = 1
			}
			active <- timedValue{at: time.Now(), value: v}
		}
	}()
	k.active = active
	return k, nil
}

// metricValue calls GetMetrics and returns the value as KEDA reads it.
func (k *keda) metricValue(ctx context.Context) (float64, error) {
	resp, err := k.client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: k.ref, MetricName: k.metric})
	if err != nil {
		return 0, err
	}
	if len(resp.GetMetricValues()) != 1 {
		return 0, fmt.Errorf("GetMetrics: %d values, want 1", len(resp.GetMetricValues()))
	}
	m := resp.GetMetricValues()[0]
	if f := m.GetMetricValueFloat(); f > 0 {
		return f, nil
	}
	return float64(m.GetMetricValue()), nil
}

func waitSettled(ctx context.Context, k *keda, level float64) error {
	return testutil.Poll(ctx, stepTimeout, func() (bool, error) {
		v, err := k.metricValue(ctx)
		if err == nil && v == level {
			return true, nil
		}
		return false, fmt.Errorf("GetMetrics: %v, %v; want %g", v, err, level)
	})
}

// waitPrometheus waits until the polled query answers level: every
// agent scraped, the low state in the TSDB.
func waitPrometheus(ctx context.Context, seen <-chan timedValue, level float64) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	_, err := firstSeen(ctx, seen, time.Time{}, func(v float64) bool { return v == level })
	if err != nil {
		return fmt.Errorf("the Prometheus query never answered %g: %w", level, err)
	}
	return nil
}

// firstSeen returns when ch first carried a value ok accepts, seen after
// the given time.
func firstSeen(ctx context.Context, ch <-chan timedValue, after time.Time, ok func(float64) bool) (time.Time, error) {
	for {
		select {
		case p, open := <-ch:
			if !open {
				return time.Time{}, errors.New("the source ended")
			}
			if p.at.After(after) && ok(p.value) {
				return p.at, nil
			}
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// firstGetMetrics polls GetMetrics back to back (every 1 ms) and returns
// when it first answered a value ok accepts.
func firstGetMetrics(ctx context.Context, k *keda, ok func(float64) bool) (time.Time, error) {
	for ctx.Err() == nil {
		if v, err := k.metricValue(ctx); err == nil && ok(v) {
			return time.Now(), nil
		}
		time.Sleep(time.Millisecond)
	}
	return time.Time{}, ctx.Err()
}

// timeAnswers waits for a step on the three paths KEDA can read: the
// StreamIsActive message saying want, GetMetrics answering a value ok
// accepts, and, with promSeen, the polled Prometheus query crossing after
// since.
func timeAnswers(ctx context.Context, k *keda, promSeen <-chan timedValue, since time.Time, want bool, ok, promOK func(float64) bool) (streamAt, gmAt, promAt time.Time, err error) {
	var wg sync.WaitGroup
	var gmErr, promErr error
	wg.Go(func() {
		if gmAt, gmErr = firstGetMetrics(ctx, k, ok); gmErr != nil {
			gmErr = fmt.Errorf("GetMetrics never answered the step: %w", gmErr)
		}
	})
	if promSeen != nil {
		wg.Go(func() {
			if promAt, promErr = firstSeen(ctx, promSeen, since, promOK); promErr != nil {
				promErr = fmt.Errorf("the Prometheus query never crossed: %w", promErr)
			}
		})
	}
	active := 0.0
	if want {
		active = 1
	}
	streamAt, err = firstSeen(ctx, k.active, time.Time{}, func(v float64) bool { return v == active })
	if err != nil {
		err = fmt.Errorf("no StreamIsActive %v: %w", want, err)
	}
	wg.Wait()
	return streamAt, gmAt, promAt, errors.Join(err, gmErr, promErr)
}

// drain empties ch without blocking and says how many values it held.
func drain(ch <-chan timedValue) int {
	for n := 0; ; n++ {
		select {
		case <-ch:
		default:
			return n
		}
	}
}

// timeStep waits for one step on every path and records the delays.
func timeStep(ctx context.Context, cfg config, k *keda, published, promSeen <-chan timedValue, high bool, level float64, rep *report) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	threshold := (cfg.Low + cfg.High) / 2
	crossed := func(v float64) bool { return (v >= threshold) == high }

	// The sample time of the first snapshot that carries the step.
	pub, err := firstSeen(ctx, published, time.Time{}, func(v float64) bool { return v == level })
	if err != nil {
		return fmt.Errorf("node-0 never published the step: %w", err)
	}

	streamAt, gmAt, promAt, err := timeAnswers(ctx, k, promSeen, pub, high, func(v float64) bool { return v == level }, crossed)
	if err != nil {
		return err
	}
	if os.Getenv("CHAIN_DEBUG") != "" {
		log.Printf("high=%v pub=%s stream=%s gm=%s", high, pub.Format("15:04:05.000"), streamAt.Format("15:04:05.000"), gmAt.Format("15:04:05.000"))
	}
	rep.Stream.add(streamAt.Sub(pub))
	rep.GetMetrics.add(gmAt.Sub(pub))
	if promSeen != nil {
		rep.Prometheus.add(promAt.Sub(pub))
	}
	return nil
}
