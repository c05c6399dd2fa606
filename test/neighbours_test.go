package test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
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

// An API server that ends every watch after 1 s and answers a watch that
// resumes with 410 Gone: the agent lists again (client-go's backoff, not a
// loop), the pods' labels on their series stay right and follow a change
// made while the watch was down, a 410 is not counted as a failure, and
// nothing is logged for it above debug: in particular none of client-go's
// klog lines reaches stderr in klog's own format.
func TestFlakyAPIServer(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 2, Seed: 3, Static: true}).Devices()
	kubelet := startKubelet(t, crowdedPods(devs, 0))
	labelled := func(name, uid, app string) corev1.Pod {
		ns := "media"
		if strings.HasPrefix(name, "inference") {
			ns = "default"
		}
		p := fakeapi.Pod("golden-node", ns, name, uid)
		p.Labels = map[string]string{"app": app, "pod-template-hash": "7c9d8f6b5"}
		return p
	}
	pods := func(inferenceApp string) []corev1.Pod {
		return []corev1.Pod{
			labelled("inference-0", "6f1c2a3b-4d5e-4f60-8a71-b2c3d4e5f601", inferenceApp),
			labelled("webrtc-sfu-0", "0e5d7c1a-9b3f-4c2e-a8d6-3f1b2c4d5e60", "sfu"),
			labelled("webrtc-sfu-1", "7b2e9f4c-1d8a-4e3b-9c5f-6a0d2e8b4c71", "sfu"),
		}
	}
	api := fakeapi.Start(pods("inference")...)
	t.Cleanup(api.Close)
	api.SetFaults(fakeapi.Faults{DropWatchesAfter: time.Second, Gone: fakeapi.GoneStatus})
	kubeconfig, err := api.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a := startAgent(t, "--simulate=2", "--simulate.seed=3", "--simulate.static",
		"--kubelet.pod-resources-socket="+kubelet.Path(), "--kubeconfig="+kubeconfig,
		"--kubernetes-enable-pod-labels", "--kubernetes-pod-label-allowlist-regex=^app$")

	labels := func(inferenceApp string) func(samples) error {
		return func(s samples) error {
			for _, c := range []struct{ uuid, pod, app string }{
				{devs[0].UUID(), "inference-0", inferenceApp},
				{devs[1].UUID(), "webrtc-sfu-0", "sfu"},
				{devs[1].UUID(), "webrtc-sfu-1", "sfu"},
			} {
				if _, ok := s.podSeries("DCGM_FI_DEV_GPU_UTIL", c.uuid, c.pod, "app", c.app); !ok {
					return fmt.Errorf("no DCGM_FI_DEV_GPU_UTIL of %s with app=%q", c.pod, c.app)
				}
			}
			return nil
		}
	}
	a.waitMetrics(t, 30*time.Second, "the pods' labels", labels("inference"))
	if err := testutil.Poll(t.Context(), 30*time.Second, func() (bool, error) { return api.GoneAnswers() > 0, nil }); err != nil {
		t.Fatalf("no watch resumed: %v; requests %+v", err, api.Requests())
	}
	// While the watches are down, inference-0 is relabelled: the next
	// list brings it (client-go's backoff has grown to a few seconds).
	api.SetPods(pods("inference-v2")...)
	s := a.waitMetrics(t, 90*time.Second, "the label changed while the watch was down", labels("inference-v2"))
	elapsed := time.Since(start)

	lists, _ := s.value("gpu_agent_pod_watch_lists_total")
	t.Logf("%v: %v lists counted by the agent, %d by the server, %d watches answered Gone", elapsed.Round(time.Millisecond), lists, api.Lists(), api.GoneAnswers())
	if limit := 2 + 2*elapsed.Seconds(); lists < 2 || lists > limit {
		t.Errorf("gpu_agent_pod_watch_lists_total %v after %v, want from 2 to %.0f", lists, elapsed, limit)
	}
	for metric, want := range map[string]float64{"gpu_agent_pod_watch_errors_total": 0, "gpu_agent_pod_watch_synced": 1, "gpu_agent_pod_watch_pods": 3} {
		if err := s.expect(metric, want); err != nil {
			t.Error(err)
		}
	}
	out := a.Output()
	if klogLine := regexp.MustCompile(`(?m)^[IWEF]\d{4} \d\d:\d\d:\d\d`); klogLine.MatchString(out) {
		t.Errorf("client-go logged through klog to stderr:\n%s", klogLine.FindString(out))
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "component=podwatch") && !strings.Contains(line, `msg="pod watch synced"`) && !strings.Contains(line, "level=DEBUG") {
			t.Errorf("logged: %s", line)
		}
	}
}
