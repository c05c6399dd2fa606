package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// simSource is the simulated node behind --simulate: its GPUs, its pods
// (handed to attribution directly, unless a kubelet socket exists: then
// the real client asks it) and its processes' pods, from the simulated
// procfs and pod table. Its load can be stepped at run time through
// --simulate.load-file.
type simSource struct {
	cfg     *Config
	log     *slog.Logger
	lib     *sim.Library
	control *sim.Control // nil without --simulate.load-file
}

func newSimSource(cfg *Config, log *slog.Logger) *simSource {
	opts := sim.Options{Devices: cfg.Simulate, Seed: cfg.SimulateSeed, Static: cfg.SimulateStatic, CallLatency: cfg.SimulateLatency}
	if cfg.SimulateHangGPU >= 0 {
		opts.Hang = &sim.Hang{GPU: cfg.SimulateHangGPU, After: cfg.SimulateHangAt}
		log.Warn("a simulated GPU will stop answering", "gpu", cfg.SimulateHangGPU, "after", cfg.SimulateHangAt)
	}
	s := &simSource{cfg: cfg, log: log, lib: sim.New(opts)}
	if cfg.SimulateLoad != "" {
		s.control = sim.NewControl(s.lib)
	}
	log.Info("using simulated GPUs", "gpus", cfg.Simulate, "seed", cfg.SimulateSeed, "static", cfg.SimulateStatic,
		"call_latency", cfg.SimulateLatency, "load_file", cfg.SimulateLoad)
	return s
}

func (s *simSource) library() nvml.Library {
	if s.control != nil {
		return s.control
	}
	return s.lib
}

func (s *simSource) start(store *telemetry.Store) (_ *stages, err error) {
	st := &stages{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	kubelet := exists(s.cfg.PodResourcesSocket)
	if kubelet {
		if err := st.addKubelet(s.cfg, store, s.log); err != nil {
			return nil, err
		}
	} else {
		s.log.Info("no kubelet socket: the simulated pods hold the simulated GPUs", "socket", s.cfg.PodResourcesSocket)
		st.pods = staticPods{SimulatedPods(s.lib)}
		if s.cfg.podMetaFlags() != "" {
			st.metas = SimulatedMetas(s.lib, s.cfg)
		}
	}
	if s.cfg.PodWatch && s.cfg.Kubeconfig != "" {
		// The simulated GPUs' processes are named by the simulator; the
		// watch finds the real pods whose own metrics the agent scrapes,
		// and the labels and UIDs of the pods a real kubelet names.
		if kubelet && s.cfg.podMetaFlags() != "" {
			s.log.Info("--simulate names its GPU processes' pods; the pod watch finds app targets and the labels and UIDs of the kubelet's pods")
		} else {
			s.log.Info("--simulate names its GPU processes' pods; the pod watch finds app targets only")
		}
		client, err := podwatch.NewClient(s.cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		w, err := podwatch.New(client, s.cfg.NodeName, s.cfg.podWatchOptions(s.log.With("component", "podwatch")))
		if err != nil {
			return nil, err
		}
		if kubelet && s.cfg.podMetaFlags() != "" {
			st.metas = w
		}
		st.metrics = append(st.metrics, w.Metrics()...)
		st.run = append(st.run, w.Run)
		st.addApps(s.cfg, w, s.log.With("component", "app"))
	} else if f := s.cfg.podMetaFlags(); kubelet && f != "" {
		// A real kubelet's pods are the API server's, and --simulate
		// watches it only with --kubeconfig.
		return nil, podMetaNeedsWatch(f, errors.New("--simulate with a kubelet socket watches the API server only with --kubernetes.pod-watch and --kubeconfig"))
	}
	st.processes = attribution.NewProcessStage(store, cgroup.NewResolverFS(s.lib.ProcFS()), SimulatedNames(s.lib), s.log.With("component", "processes"))
	st.run = append(st.run, st.processes.Run)
	if s.control != nil {
		st.run = append(st.run, func(ctx context.Context) error {
			return watchLoadFile(ctx, s.cfg.SimulateLoad, s.control, s.log.With("component", "simulate"))
		})
	}
	return st, nil
}

// staticPods is a pod map that never changes: the simulated node's.
type staticPods struct{ pods *attribution.DevicePods }

func (p staticPods) DevicePods() *attribution.DevicePods { return p.pods }
func (p staticPods) Stale() bool                         { return false }

// SimulatedNames names the simulated node's pods by the container IDs and
// pod UIDs of its processes (sim.Process), in place of a pod watch: the
// same pods SimulatedPods says hold the GPUs.
func SimulatedNames(l *sim.Library) *attribution.NameTable {
	t := &attribution.NameTable{Containers: map[string]attribution.Pod{}, Pods: map[string]attribution.Pod{}}
	for _, p := range l.Processes() {
		t.Containers[p.ContainerID] = attribution.Pod{Namespace: p.Namespace, Name: p.Pod, Container: p.Container}
		t.Pods[p.PodUID] = attribution.Pod{Namespace: p.Namespace, Name: p.Pod}
	}
	return t
}

// SimulatedMetas gives the simulated pods' UIDs (their processes' cgroups
// name them) and labels, as the pod watch gives a real node's, for
// --kubernetes-enable-pod-uid and --kubernetes-enable-pod-labels: each
// pod is labelled app.kubernetes.io/name (its name without the ordinal)
// and app.kubernetes.io/instance (its name), through the allowlist.
func SimulatedMetas(l *sim.Library, cfg *Config) attribution.PodMetas {
	t := metaTable{}
	for _, p := range l.Processes() {
		var uid string
		if cfg.PodUID {
			uid = p.PodUID
		}
		var labels map[string]string
		if cfg.PodLabels {
			name := p.Pod
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				name = name[:i]
			}
			labels = map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/instance": p.Pod}
			if f := cfg.PodLabelAllowlist.Filter(labels); f != nil {
				labels = f
			} else {
				labels = map[string]string{}
			}
		}
		t[p.Namespace+"/"+p.Pod] = attribution.NewPodMeta(uid, labels)
	}
	return t
}

// metaTable holds pods' metadata by namespace/name.
type metaTable map[string]*attribution.PodMeta

func (t metaTable) PodMeta(namespace, name string) *attribution.PodMeta { return t[namespace+"/"+name] }

// SimulatedPods returns the pods of a simulated node: GPU i is held by pod
// default/inference-i (container "server"), except that with two or more
// GPUs the last one is time-sliced between media/webrtc-sfu-0 and
// media/webrtc-sfu-1 (container "sfu").
func SimulatedPods(l *sim.Library) *attribution.DevicePods {
	devs := l.Devices()
	byDevice := make(map[string][]attribution.Pod, len(devs))
	for i, d := range devs {
		if len(devs) >= 2 && i == len(devs)-1 {
			for r := range 2 {
				byDevice[d.UUID()] = append(byDevice[d.UUID()], attribution.Pod{Namespace: "media", Name: fmt.Sprintf("webrtc-sfu-%d", r), Container: "sfu"})
			}
			continue
		}
		byDevice[d.UUID()] = []attribution.Pod{{Namespace: "default", Name: fmt.Sprintf("inference-%d", i), Container: "server"}}
	}
	return attribution.NewDevicePods(byDevice)
}
