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
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	webflag "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sync/errgroup"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/webserver"
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
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}
	gcPercent := "$GOGC"
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
		gcPercent = strconv.Itoa(DefaultGCPercent)
	}
	if !cfg.Pprof && DropMemProfile {
		// Nobody can fetch it: the sampled allocation sites' table
		// (over a MiB after a while) would only be kept.
		runtime.MemProfileRate = 0
	}
	log.Info("Go runtime", "GOMAXPROCS", runtime.GOMAXPROCS(0), "GOGC", gcPercent)
	if err := Run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// DefaultGCPercent is the agent's GOGC unless $GOGC is set: the heap may
// grow by half of what is live between two collections, not by all of it
// (Go's 100). The agent allocates little once warm, so collecting twice as
// often costs next to no CPU, and every node pays for its memory.
const DefaultGCPercent = 50

// DropMemProfile, set by the agent's main, stops Go's sampling of
// allocations unless --web.enable-pprof serves it. It is off for tests
// that call Main in their own process.
var DropMemProfile bool

// Run runs the agent with a validated config until ctx is done: it serves
// HTTP from the start, opens NVML, builds the source's stages, then runs
// the sampler, the stages and the servers until ctx ends.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	log.Info("starting gpu-agent", "version", Version, "revision", Revision)
	src := newSource(cfg, log)
	// Every reader downstream of the sampler (exporter, stream, the
	// stages that name pods) reads the store the sampler publishes into.
	store := telemetry.NewStore(cfg.Interval, cfg.Window)
	web, err := listenWeb(cfg)
	if err != nil {
		return err
	}
	var grpcLn net.Listener
	if cfg.GRPCListenAddress != "" {
		if grpcLn, err = listenGRPC(cfg.GRPCListenAddress); err != nil {
			_ = web.ln.Close()
			return err
		}
		defer grpcLn.Close() // closed already if the server ran
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	web.serve(gctx, g, log)
	// abort stops what runs and returns err, or the error that stopped it.
	abort := func(err error) error {
		stop()
		if werr := g.Wait(); werr != nil {
			return werr
		}
		return err
	}

	var profiling *dcgm.Source
	var extra nvml.ExtraSource
	if cfg.DCGM != dcgm.Off {
		// Its values reach the snapshot through the sampler, on the tick.
		profiling = dcgm.New(dcgm.Options{Mode: cfg.DCGM, Address: cfg.DCGMAddress, Interval: cfg.Interval,
			Logger: log.With("component", "dcgm")})
		extra = newDCGMExtra(profiling)
	}
	tick := nvml.NewTickHistogram()
	sampler, err := openSampler(ctx, gctx, src.library(), cfg, store, tick, extra, log)
	if sampler == nil {
		return abort(err)
	}
	defer closeSampler(sampler, log)
	st, err := src.start(store)
	if err != nil {
		return abort(err)
	}
	// Until the stages run, their connections are closed here.
	abortStages := func(err error) error {
		st.close()
		return abort(err)
	}
	var processes attribution.Processes // nil, not a nil *ProcessStage
	if st.processes != nil {
		processes = st.processes
	}
	var viewOpts []attribution.Option
	if st.metas != nil {
		viewOpts = append(viewOpts, attribution.WithPodMetas(st.metas))
	}
	views := attribution.NewAttributor(store, st.pods, processes, viewOpts...)
	collector, err := newCollector(cfg, views, sampler.DriverVersion(), log)
	if err != nil {
		return abortStages(err)
	}
	metrics := append([]prometheus.Collector{tick}, st.metrics...)
	if profiling != nil {
		metrics = append(metrics, profiling.Metrics())
	}
	var push *pushServer
	if grpcLn != nil {
		if push, err = newPushServer(cfg, store, views, st.apps, log.With("component", "grpc")); err != nil {
			return abortStages(err)
		}
		push.ln = grpcLn
		metrics = append(metrics, push.stream, push.tls)
	}
	handler, err := exporter.NewHandler(newRegistry(cfg.ExporterMetrics, metrics...), collector, exporter.HandlerOptions{
		Interval: cfg.Interval, Logger: log.With("component", "http"), Version: Version,
		ExporterMetrics: cfg.ExporterMetrics, MaxRequests: cfg.WebLimits.MaxRequests, Pprof: cfg.Pprof,
	})
	if err != nil {
		return abortStages(err)
	}
	web.starting.Ready(handler)

	g.Go(func() error { return sampler.Run(gctx) })
	for _, run := range st.run {
		g.Go(func() error { return run(gctx) })
	}
	if profiling != nil {
		// DCGM's failures are its own (gpu_agent_dcgm_up): Run returns
		// only when gctx ends, within a second, however DCGM behaves.
		g.Go(func() error { return profiling.Run(gctx) })
	}
	if push != nil {
		push.run(gctx, g)
	}
	err = g.Wait()
	log.Info("stopped")
	return err
}

// web is the HTTP server, listening before anything runs, so a taken port
// fails the start, and serving at once: NVML's start-up can take seconds
// (a GPU that hangs is waited for up to the probe timeout), and /healthz
// must answer meanwhile, or a liveness probe restarts the pod. /readyz and
// /metrics answer 503 until the sampler is open (exporter.Starting).
type web struct {
	cfg      *Config
	ln       net.Listener
	starting *exporter.Starting
	srv      *http.Server
}

// Its limits (internal/webserver): header, body, stall and idle
// timeouts, a header size bound, --web.max-connections on the listener.
func listenWeb(cfg *Config) (*web, error) {
	ln, err := webserver.Listen(cfg.ListenAddress, cfg.WebLimits.MaxConnections)
	if err != nil {
		return nil, fmt.Errorf("--web.listen-address=%s: %w", cfg.ListenAddress, err)
	}
	starting := &exporter.Starting{}
	return &web{cfg: cfg, ln: ln, starting: starting, srv: webserver.NewServer(starting, webserver.Limits{})}, nil
}

// serve serves until ctx ends, then drains within ShutdownTimeout.
func (w *web) serve(ctx context.Context, g *errgroup.Group, log *slog.Logger) {
	flags := &webflag.FlagConfig{
		WebListenAddresses: &[]string{w.cfg.ListenAddress},
		WebSystemdSocket:   new(bool),
		WebConfigFile:      &w.cfg.WebConfigFile,
	}
	g.Go(func() error {
		log.Info("serving metrics", "address", w.ln.Addr().String())
		if err := webflag.Serve(w.ln, w.srv, flags, log.With("component", "http")); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// The parent context is cancelled: drain with a fresh one.
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		return w.srv.Shutdown(sctx)
	})
}

// openSampler opens NVML and reads the inventory. It returns a nil
// sampler and the error to stop with (nil for SIGTERM during start-up, a
// normal stop: Open has shut NVML down, or left it with a log line if a
// call was in flight).
func openSampler(ctx, gctx context.Context, lib nvml.Library, cfg *Config, store *telemetry.Store, tick prometheus.Histogram,
	extra nvml.ExtraSource, log *slog.Logger) (*nvml.Sampler, error) {
	sampler, err := nvml.Open(gctx, lib, nvml.Config{
		Interval:     cfg.Interval,
		Window:       cfg.Window,
		Logger:       log.With("component", "nvml"),
		TickObserver: tick,
		Store:        store,
		XIDRetention: cfg.XIDCountWindow,
		Extra:        extra,
	})
	switch {
	case err != nil && ctx.Err() != nil:
		log.Info("start-up interrupted; stopping before sampling began", "reason", err)
		return nil, nil
	case errors.Is(err, nvml.ErrLibraryNotFound):
		return nil, fmt.Errorf("%w: install the NVIDIA driver (or mount libnvidia-ml.so.1 into the container, or pass --nvml.library-path); "+
			"to run without a GPU, use --simulate N", err)
	case err != nil:
		return nil, err
	}
	return sampler, nil
}

func closeSampler(s *nvml.Sampler, log *slog.Logger) {
	if err := s.Close(); err != nil {
		log.Warn("closing NVML", "err", err)
	}
}

// newCollector is the exporter over views, with dcgm-exporter's field
// list and label options.
func newCollector(cfg *Config, views *attribution.Attributor, driver string, log *slog.Logger) (*exporter.Collector, error) {
	counters, err := cfg.Counters()
	if err != nil {
		return nil, err
	}
	if list, ok := exporter.GenerationList(counters, cfg.Compat); ok {
		log.Info("the field list is dcgm-exporter 4.8's default list, as this image ships it; serving generation "+cfg.Compat.String()+"'s default list in its place, as that generation's image ships it",
			"collectors", cfg.CollectorsFile)
		counters = list
	} else if old := exporter.OldNames(counters, cfg.Compat); len(old) > 0 {
		log.Info("the field list names fields by their 4.8 names; each is served under that name, in its 4.8 unit",
			"collectors", cfg.CollectorsFile, "generation", cfg.Compat.String(), "fields", strings.Join(old, ","))
	}
	if missing := exporter.Unsupported(counters); len(missing) > 0 {
		log.Warn("the field list names fields the agent cannot serve; they are left out",
			"collectors", cfg.CollectorsFile, "fields", strings.Join(missing, ","))
	}
	if prof := exporter.ProfilingNames(counters); len(prof) > 0 && cfg.DCGM == dcgm.Off {
		log.Warn("the field list names DCGM's profiling fields; they are left out without --dcgm=embedded or --dcgm=standalone",
			"collectors", cfg.CollectorsFile, "fields", strings.Join(prof, ","))
	}
	hostname := cfg.NodeName
	if cfg.NoHostname {
		hostname = "" // the exporter leaves the label out
	}
	return exporter.NewCollector(views, exporter.Options{
		Hostname:        hostname,
		Generation:      cfg.Compat,
		XIDWindow:       cfg.XIDCountWindow,
		UseOldNamespace: cfg.UseOldNamespace,
		Interval:        cfg.Interval,
		Build:           exporter.BuildInfo{Version: Version, Revision: Revision},
		Counters:        counters,
		DriverVersion:   driver,
		Profiling:       cfg.DCGM != dcgm.Off,
	}), nil
}

// newRegistry is the one place every subsystem's own metrics are
// registered: those given (the sampler's tick histogram, the kubelet
// client's, the pod watch's, the app scraper's and the push stream's where
// they run), and the Go runtime and process collectors when exporterMetrics
// is set (--web.enable-exporter-metrics; dcgm-exporter serves neither
// unless asked, since 4.8.4). /metrics serves them beside what the
// exporter writes of each scrape's view (exporter.NewHandler). Run and the
// test that every family is documented both build it here.
func newRegistry(exporterMetrics bool, subsystems ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	if exporterMetrics {
		reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	reg.MustRegister(subsystems...)
	return reg
}
