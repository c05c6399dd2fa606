package test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
)

// Hostile neighbours: what other software on the node (the kubelet, the
// API server, /proc) may do to the agent, injected, with what the agent
// must do about it.

// crowdedPods is the simulated node's GPU pods (GPU 0 held by
// inference-0, GPU 1 time-sliced between the WebRTC pods the simulation
// runs its processes in) among n pods that hold no GPU, at the start, in
// the middle and at the end of the kubelet's answer.
func crowdedPods(devs []*sim.Device, n int) []*podresourcesv1.PodResources {
	crowd := fk.Crowd(n)
	pods := []*podresourcesv1.PodResources{
		fk.Pod("default", "inference-0", fk.Container("server", fk.Devices("nvidia.com/gpu", devs[0].UUID()))),
	}
	pods = append(pods, crowd[:n/2]...)
	pods = append(pods, fk.Pod("media", "webrtc-sfu-0", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", devs[1].UUID()+"::0"))))
	pods = append(pods, crowd[n/2:]...)
	return append(pods, fk.Pod("media", "webrtc-sfu-1", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", devs[1].UUID()+"::1"))))
}

// A kubelet whose pod-resources answer passes gRPC's default 4 MiB
// (10,000 pods, 4.3 MB; dcgm-exporter failed on such nodes): the agent
// takes it and attributes the three GPU pods among the 10,000. Past the
// agent's own 16 MiB (40,000 pods) it says so: kubelet_up 0, the pod map
// stale but kept, the failures counted, one log line naming the limit; a
// smaller answer brings it back.
func TestCrowdedKubelet(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 2, Seed: 3, Static: true}).Devices()
	kubelet := startKubelet(t, crowdedPods(devs, 10_000))
	a := startAgent(t, "--simulate=2", "--simulate.seed=3", "--simulate.static",
		"--kubelet.pod-resources-socket="+kubelet.Path(), "--web.enable-exporter-metrics")

	want := map[string][]string{
		devs[0].UUID(): {"default/inference-0/server"},
		devs[1].UUID(): {"-", "media/webrtc-sfu-0/sfu", "media/webrtc-sfu-1/sfu"},
	}
	state := func(up, stale float64) func(samples) error {
		return func(s samples) error {
			if err := s.expect("gpu_agent_kubelet_up", up); err != nil {
				return err
			}
			if err := s.expect("gpu_agent_kubelet_pod_map_stale", stale); err != nil {
				return err
			}
			for uuid, pods := range want {
				if got := s.pods("DCGM_FI_DEV_GPU_UTIL", uuid); !slices.Equal(got, pods) {
					return fmt.Errorf("GPU %s attributed to %v, want %v", uuid, got, pods)
				}
			}
			return nil
		}
	}
	s := a.waitMetrics(t, 30*time.Second, "the GPU pods among 10,000", state(1, 0))
	if err := s.expect("gpu_agent_kubelet_unresolved_devices", 0); err != nil {
		t.Error(err) // the crowd's nvidia.com/hostdev NICs are no GPUs
	}
	heap, _ := s.value("go_memstats_heap_alloc_bytes")
	rss, _ := s.value("process_resident_memory_bytes")
	t.Logf("agent polling a kubelet of 10,003 pods (4.3 MB answers, 1 s): heap %.1f MB, RSS %.1f MB", heap/1e6, rss/1e6)

	kubelet.SetPods(crowdedPods(devs, 40_000))
	s = a.waitMetrics(t, 30*time.Second, "the agent to refuse a 17 MB answer, keeping its pod map", state(0, 1))
	failures, _ := s.value("gpu_agent_kubelet_refresh_failures_total")
	a.waitMetrics(t, 30*time.Second, "more refused answers", func(s samples) error {
		if n, _ := s.value("gpu_agent_kubelet_refresh_failures_total"); n < failures+2 {
			return fmt.Errorf("gpu_agent_kubelet_refresh_failures_total %v, want %v", n, failures+2)
		}
		return state(0, 1)(s)
	})
	if n := strings.Count(a.Output(), "over the agent's 16 MiB limit"); n != 1 {
		t.Errorf("%d log lines name the 16 MiB limit after 3 refused answers, want 1:\n%s", n, a.Tail(20))
	}

	kubelet.SetPods(crowdedPods(devs, 10_000))
	a.waitMetrics(t, 30*time.Second, "the agent back on a 4.3 MB answer", state(1, 0))
}
