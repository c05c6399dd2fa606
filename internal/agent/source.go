package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// source is where a node's data comes from: a real node (NVML from the
// driver, the kubelet's pod-resources API, /proc and the pod watch) or
// the simulated one behind --simulate. Run samples library(), and once
// NVML is up start builds the stages that name pods over the store the
// sampler publishes into.
type source interface {
	library() nvml.Library
	start(store *telemetry.Store) (*stages, error)
}

// stages are what a source gives the agent besides its GPUs.
type stages struct {
	pods      attribution.PodSource     // nil: no pod attribution
	processes *attribution.ProcessStage // nil: processes are not attributed
	metas     attribution.PodMetas      // nil: no pod labels or UIDs asked for
	apps      *app.Manager              // nil: no app scraping
	metrics   []prometheus.Collector    // the stages' own metrics
	run       []func(context.Context) error
	// closers release what the stages hold before they run (the kubelet
	// client's connection), which each run func releases on return: a
	// start that fails once they exist, before they run, calls close.
	closers []func() error
}

// close releases what the stages hold, when their run funcs never ran.
func (st *stages) close() {
	for _, c := range st.closers {
		_ = c()
	}
}

// addApps scrapes the pods the watch finds opted in, with --app.*.
func (st *stages) addApps(cfg *Config, w *podwatch.Watcher, log *slog.Logger) {
	if !cfg.App.Enabled {
		log.Info("--app.enabled=false: the node's pods' own metrics are not scraped")
		return
	}
	o := cfg.App.options()
	o.Logger = log
	st.apps = app.New(w, o)
	st.metrics = append(st.metrics, st.apps.Metrics())
	st.run = append(st.run, st.apps.Run)
}

// newSource picks the node's source.
func newSource(cfg *Config, log *slog.Logger) source {
	if cfg.Simulate > 0 {
		return newSimSource(cfg, log)
	}
	return &nodeSource{cfg: cfg, log: log}
}

// nodeSource is a real node.
type nodeSource struct {
	cfg *Config
	log *slog.Logger
}

func (s *nodeSource) library() nvml.Library { return nvml.NewLibrary(s.cfg.NVMLLibraryPath) }

func (s *nodeSource) start(store *telemetry.Store) (_ *stages, err error) {
	st := &stages{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	if err := st.addKubelet(s.cfg, store, s.log); err != nil {
		return nil, err
	}
	plog := s.log.With("component", "processes")
	if !s.cfg.PodWatch {
		// Validate refuses pod labels and UIDs without the watch.
		plog.Info("--kubernetes.pod-watch=false: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return st, nil
	}
	client, err := podwatch.NewClient(s.cfg.Kubeconfig)
	if errors.Is(err, podwatch.ErrNoCluster) {
		if f := s.cfg.podMetaFlags(); f != "" {
			return nil, podMetaNeedsWatch(f, err)
		}
		plog.Info("not in a cluster and no --kubeconfig: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	w, err := podwatch.New(client, s.cfg.NodeName, s.cfg.podWatchOptions(s.log.With("component", "podwatch")))
	if err != nil {
		return nil, err
	}
	if s.cfg.podMetaFlags() != "" {
		st.metas = w
	}
	st.processes = attribution.NewProcessStage(store, cgroup.NewResolver(s.cfg.ProcFS), w, plog)
	st.metrics = append(st.metrics, w.Metrics()...)
	st.run = append(st.run, w.Run, st.processes.Run)
	st.addApps(s.cfg, w, s.log.With("component", "app"))
	return st, nil
}

// addKubelet makes the kubelet's pod-resources client the stages' pod
// source; it resolves device IDs against the inventory of the store's
// latest snapshot.
func (st *stages) addKubelet(cfg *Config, store *telemetry.Store, log *slog.Logger) error {
	client, err := podresources.NewClient(cfg.PodResourcesSocket, podresources.InventoryResolver(store), podresources.Options{
		Period:        cfg.KubeletPeriod,
		MaxStale:      cfg.PodMaxStale(),
		ResourceNames: cfg.GPUResourceNames,
		Logger:        log,
	})
	if err != nil {
		return err
	}
	st.pods = client
	st.metrics = append(st.metrics, podresources.NewMetrics(client))
	st.run = append(st.run, client.Run)
	st.closers = append(st.closers, client.Close)
	return nil
}

// podMetaNeedsWatch is the start error of pod labels or UIDs (flags) asked
// for where the pod watch cannot reach the API server (err). dcgm-exporter
// logs a warning and serves its series without them; a swapped image
// whose dashboards group by a pod label would then show nothing, with no
// error to say why.
func podMetaNeedsWatch(flags string, err error) error {
	return fmt.Errorf("%s: pod labels and UIDs come from the pod watch, which needs the API server: %w "+
		"(run in a pod whose service account deploy/rbac.yaml's role is bound to, or pass --kubeconfig)", flags, err)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
