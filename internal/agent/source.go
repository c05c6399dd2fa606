package agent

import (
	"context"
	"errors"
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
	apps      *app.Manager              // nil: no app scraping
	metrics   []prometheus.Collector    // the stages' own metrics
	run       []func(context.Context) error
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

func (s *nodeSource) start(store *telemetry.Store) (*stages, error) {
	st := &stages{}
	if err := st.addKubelet(s.cfg, store, s.log); err != nil {
		return nil, err
	}
	plog := s.log.With("component", "processes")
	if !s.cfg.PodWatch {
		plog.Info("--kubernetes.pod-watch=false: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return st, nil
	}
	client, err := podwatch.NewClient(s.cfg.Kubeconfig)
	if errors.Is(err, podwatch.ErrNoCluster) {
		plog.Info("not in a cluster and no --kubeconfig: GPU processes are not attributed to pods; the pods of a shared GPU see its device-level values")
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	w, err := podwatch.New(client, s.cfg.NodeName, podwatch.Options{Logger: s.log.With("component", "podwatch")})
	if err != nil {
		return nil, err
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
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
