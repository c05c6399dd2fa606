// Package agent wires the sampler, the pod-resources poller and the
// exporter into the running agent. cmd/agent only parses and calls Main.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sync/errgroup"

	"github.com/gpu-telemetry/agent/pkg/attribution"
	"github.com/gpu-telemetry/agent/pkg/cgroup"
	"github.com/gpu-telemetry/agent/pkg/exporter"
	"github.com/gpu-telemetry/agent/pkg/nvml"
	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
	"github.com/gpu-telemetry/agent/pkg/podresources"
	"github.com/gpu-telemetry/agent/pkg/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/pkg/podwatch"
	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// Set at build time with -ldflags "-X ...".
var (
	Version  = "dev"
	Revision = "unknown"
)

// ShutdownTimeout bounds the drain after SIGTERM.
const ShutdownTimeout = 4 * time.Second

// Main runs the agent until ctx is done and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseFlags(args, os.Getenv, stderr)
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintf(stderr, "invalid command line: %v\n", err)
		}
		return 2
	}
	if cfg.ShowVersion {
		fmt.Fprintf(stdout, "gpu-agent %s (revision %s)\n", Version, Revision)
		return 0
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%v\n", err)
		return 2
	}
	log := cfg.NewLogger(stderr)
	cfg.LogNotices(log)
	if err := Run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// Run runs the agent with a validated config until ctx is done.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	log.Info("starting gpu-agent", "version", Version, "revision", Revision)

	tickDuration := nvml.NewTickHistogram()
	var lib nvml.Library
	var simLib *sim.Library
	var simControl *sim.Control
	if cfg.Simulate > 0 {
		opts := sim.Options{Devices: cfg.Simulate, Seed: cfg.SimulateSeed, Static: cfg.SimulateStatic, CallLatency: cfg.SimulateLatency}
		if cfg.SimulateHangGPU >= 0 {
			opts.Hang = &sim.Hang{GPU: cfg.SimulateHangGPU, After: cfg.SimulateHangAt}
			log.Warn("a simulated GPU will stop answering", "gpu", cfg.SimulateHangGPU, "after", cfg.SimulateHangAt)
		}
		simLib = sim.New(opts)
		lib = simLib
		if cfg.SimulateLoad != "" {
			simControl = sim.NewControl(simLib)
			lib = simControl
		}
		log.Info("using simulated GPUs", "gpus", cfg.Simulate, "seed", cfg.SimulateSeed, "static", cfg.SimulateStatic,
			"call_latency", cfg.SimulateLatency, "load_file", cfg.SimulateLoad)
	} else {
		lib = nvml.NewLibrary(cfg.NVMLLibraryPath)
	}
	// Every reader downstream of the sampler (exporter, stream, health)
	// reads the store the sampler publishes into; stream subscribers wait
	// on it and read its history.
	store := telemetry.NewStore(cfg.Interval, cfg.Window)
	// The pod-resources client is made after the sampler (it needs the
	// inventory); the sampler tells it of MIG changes only once running.
	var pods atomic.Pointer[podresources.Client]

	// Listen before anything runs, so a taken port fails the start, and
	// serve at once: NVML's start-up can take seconds (a GPU that hangs is
	// waited for up to the probe timeout), and /healthz must answer
	// meanwhile, or a liveness probe restarts the pod. /readyz and
	// /metrics answer 503 until the sampler is open (exporter.Starting).
	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("--web.listen-address=%s: %w", cfg.ListenAddress, err)
	}
	var grpcLn net.Listener
	if cfg.GRPCListenAddress != "" {
		if grpcLn, err = listenGRPC(cfg.GRPCListenAddress); err != nil {
			ln.Close()
			return err
		}
		defer grpcLn.Close() // closed already if the server ran
	}
	starting := &exporter.Starting{}
	srv := &http.Server{Handler: starting, ReadHeaderTimeout: 10 * time.Second}
	webFlags := &web.FlagConfig{
		WebListenAddresses: &[]string{cfg.ListenAddress},
		WebSystemdSocket:   new(bool),
		WebConfigFile:      &cfg.WebConfigFile,
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		log.Info("serving metrics", "address", ln.Addr().String())
		if err := web.Serve(ln, srv, webFlags, log.With("component", "http")); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// The parent context is cancelled: drain with a fresh one.
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	// abort stops what runs and returns err, or the error that stopped it.
	abort := func(err error) error {
		stop()
		if werr := g.Wait(); werr != nil {
			return werr
		}
		return err
	}

	sampler, err := nvml.Open(gctx, lib, nvml.Config{
		Interval:     cfg.Interval,
		Window:       cfg.Window,
		Logger:       log.With("component", "nvml"),
		TickObserver: tickDuration,
		Store:        store,
		OnInventoryChange: func(devs []telemetry.Device) {
			if p := pods.Load(); p != nil {
				p.SetResolver(podresources.NewResolver(resolverGPUs(devs)))
			}
		},
	})
	if err != nil && ctx.Err() != nil {
		// SIGTERM during start-up is a normal stop: Open has shut NVML
		// down, or left it with a log line if a call was in flight.
		log.Info("start-up interrupted; stopping before sampling began", "reason", err)
		return abort(nil)
	}
	if errors.Is(err, nvml.ErrLibraryNotFound) {
		return abort(fmt.Errorf("%w: install the NVIDIA driver (or mount libnvidia-ml.so.1 into the container, or pass --nvml.library-path); "+
			"to run without a GPU, use --simulate N", err))
	}
	if err != nil {
		return abort(err)
	}
	defer func() {
		if err := sampler.Close(); err != nil {
			log.Warn("closing NVML", "err", err)
		}
	}()

	socket := cfg.PodResourcesSocket
	if simLib != nil && !exists(socket) {
		kubelet, path, err := startSimulatedKubelet(simLib)
		if err != nil {
			return abort(err)
		}
		defer kubelet.Stop()
		defer os.RemoveAll(filepath.Dir(path))
		log.Info("no kubelet socket: simulating the pods that hold the simulated GPUs", "socket", socket)
		socket = path
	}
	client, err := podresources.NewClient(socket, podresources.NewResolver(resolverGPUs(sampler.Devices())), podresources.Options{
		Period:        cfg.KubeletPeriod,
		MaxStale:      cfg.PodMaxStale(),
		ResourceNames: cfg.GPUResourceNames,
		Logger:        log,
	})
	if err != nil {
		return abort(err)
	}
	pods.Store(client)
	client.SetResolver(podresources.NewResolver(resolverGPUs(sampler.Devices()))) // MIG may have changed meanwhile

	counters, err := cfg.Counters()
	if err != nil {
		return abort(err)
	}
	if missing := exporter.Unsupported(counters); len(missing) > 0 {
		log.Warn("the field list names fields the agent cannot serve; they are left out",
			"collectors", cfg.CollectorsFile, "fields", strings.Join(missing, ","))
	}
	hostname := cfg.NodeName
	if cfg.NoHostname {
		hostname = "" // the exporter leaves the label out
	}
	procs, watcher, err := processStage(cfg, store, simLib, log)
	if err != nil {
		return abort(err)
	}
	// A nil *attribution.ProcessStage must reach the readers as a nil
	// interface.
	var processes attribution.Processes
	if procs != nil {
		processes = procs
	}
	views := attribution.NewAttributor(store, client, processes)
	collector := exporter.NewCollector(views, exporter.Options{
		Hostname:        hostname,
		UseOldNamespace: cfg.UseOldNamespace,
		Interval:        cfg.Interval,
		Build:           exporter.BuildInfo{Version: Version, Revision: Revision},
		Counters:        counters,
		DriverVersion:   sampler.DriverVersion(),
	})
	var push *pushServer
	var streamMetrics prometheus.Collector // nil without the push API
	if grpcLn != nil {
		if push, err = newPushServer(cfg, store, views, log.With("component", "grpc")); err != nil {
			return abort(err)
		}
		push.ln = grpcLn
		streamMetrics = push.stream
	}
	reg := newRegistry(tickDuration, client, watcher, streamMetrics)
	handler, err := exporter.NewHandler(reg, collector, exporter.HandlerOptions{
		Interval: cfg.Interval, Logger: log.With("component", "http"), Version: Version,
	})
	if err != nil {
		return abort(err)
	}
	starting.Ready(handler)

	g.Go(func() error { return sampler.Run(gctx) })
	g.Go(func() error { return client.Run(gctx) })
	if watcher != nil {
		g.Go(func() error { return watcher.Run(gctx) })
	}
	if procs != nil {
		g.Go(func() error { return procs.Run(gctx) })
	}
	if push != nil {
		push.run(gctx, g)
	}
	if simControl != nil {
		g.Go(func() error {
			return watchLoadFile(gctx, cfg.SimulateLoad, simControl, log.With("component", "simulate"))
		})
	}
	err = g.Wait()
	log.Info("stopped")
	return err
}

// newRegistry is the one place every subsystem's own metrics are
// registered: the Go and process collectors, the sampler's tick
// histogram, the kubelet client's, and the pod watch's and the push
// stream's where they run (nil where they do not). /metrics serves them
// beside what the exporter writes of each scrape's view
// (exporter.NewHandler). Run and the test that every family is
// documented both build it here.
func newRegistry(tick prometheus.Collector, kubelet podresources.StatusSource, watcher *podwatch.Watcher, stream prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		tick,
	)
	if kubelet != nil {
		reg.MustRegister(podresources.NewMetrics(kubelet))
	}
	if watcher != nil {
		reg.MustRegister(watcher.Metrics()...)
	}
	if stream != nil {
		reg.MustRegister(stream)
	}
	return reg
}

// processStage builds what maps GPU processes to pods: on --simulate the
// simulated node's procfs and pod table; otherwise --path.procfs and, with
// --kubernetes.pod-watch, a watch of this node's pods (returned to be run).
// Without names (no cluster, or the watch off) it returns nil and says so
// once: every pod of a shared GPU then sees the device's values, as before.
func processStage(cfg *Config, store *telemetry.Store, simLib *sim.Library, log *slog.Logger) (*attribution.ProcessStage, *podwatch.Watcher, error) {
	plog := log.With("component", "processes")
	if simLib != nil {
		if cfg.PodWatch && cfg.Kubeconfig != "" {
			plog.Info("--simulate names its own pods; the pod watch is off")
		}
		return attribution.NewProcessStage(store, cgroup.NewResolverFS(simLib.ProcFS()), SimulatedNames(simLib), plog), nil, nil
	}
	if !cfg.PodWatch {
		plog.Info("--kubernetes.pod-watch=false: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return nil, nil, nil
	}
	client, err := podwatch.NewClient(cfg.Kubeconfig)
	if errors.Is(err, podwatch.ErrNoCluster) {
		plog.Info("not in a cluster and no --kubeconfig: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	w, err := podwatch.New(client, cfg.NodeName, podwatch.Options{Logger: log.With("component", "podwatch")})
	if err != nil {
		return nil, nil, err
	}
	return attribution.NewProcessStage(store, cgroup.NewResolver(cfg.ProcFS), w, plog), w, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func resolverGPUs(devs []telemetry.Device) []podresources.GPU {
	gpus := make([]podresources.GPU, len(devs))
	for i, d := range devs {
		gpus[i] = podresources.GPU{UUID: d.UUID, Minor: d.Minor}
		for _, m := range d.MIG {
			for _, ci := range m.ComputeInstances {
				gpus[i].MIG = append(gpus[i].MIG, podresources.MIGDevice{UUID: ci.UUID, GI: m.GI, CI: ci.CI, Profile: m.Profile})
			}
		}
	}
	return gpus
}

// startSimulatedKubelet serves the pods of a simulated node on a private
// socket, so the real pod-resources client runs unchanged: GPU i is held
// by pod inference-i, except that with two or more GPUs the last one is
// time-sliced between two WebRTC media-server pods.
func startSimulatedKubelet(l *sim.Library) (*fakekubelet.Server, string, error) {
	dir, err := os.MkdirTemp("", "gpu-agent-sim")
	if err != nil {
		return nil, "", fmt.Errorf("creating simulated kubelet socket: %w", err)
	}
	path := filepath.Join(dir, "kubelet.sock")
	srv, err := fakekubelet.Start(path)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("starting simulated kubelet: %w", err)
	}
	srv.SetPods(SimulatedPods(l))
	return srv, path, nil
}
