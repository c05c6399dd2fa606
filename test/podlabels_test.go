package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/test/internal/fakeapi"
)

// dcgm-exporter's --kubernetes-enable-pod-labels, its allowlist and
// --kubernetes-enable-pod-uid, given as a DaemonSet written for it gives
// them (the environment), on a real node's path: NVIDIA's mock
// libnvidia-ml.so.1, a fake kubelet that gives GPU 0 to one pod and
// time-slices GPU 3 between two, and a fake API server the agent's
// client-go pod watch lists through --kubeconfig. Each pod's series carry
// its pod_uid and its allowed labels, sanitised; a label named like one
// of the series' own ("pod") is left out; a pod the API server does not
// have (inference-1) and the shared GPU's device-level series have none.
func TestPodLabelsAndUIDsMockNVML(t *testing.T) {
	lib, configs := requireMockNVML(t)
	raw, err := os.ReadFile(filepath.Join(configs, "mock-nvml-config-t4.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var profile mockProfile
	if err := yaml.Unmarshal(raw, &profile); err != nil {
		t.Fatal(err)
	}
	if len(profile.Devices) < 4 {
		t.Fatalf("the T4 profile has %d GPUs, want 4", len(profile.Devices))
	}
	uuid := func(gpu int) string { return profile.Devices[gpu].UUID }
	dir := t.TempDir()

	kubelet, err := fk.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kubelet.Stop)
	kubelet.SetPods([]*podresourcesv1.PodResources{
		fk.Pod("default", "inference-0", fk.Container("server", fk.Devices("nvidia.com/gpu", uuid(0)))),
		fk.Pod("default", "inference-1", fk.Container("server", fk.Devices("nvidia.com/gpu", uuid(1)))),
		fk.Pod("media", "webrtc-sfu-0", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", uuid(3)+"::0"))),
		fk.Pod("media", "webrtc-sfu-1", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", uuid(3)+"::1"))),
	})

	const (
		uidInference = "6f1c2a3b-4d5e-4f60-8a71-b2c3d4e5f601"
		uidSFU0      = "0e5d7c1a-9b3f-4c2e-a8d6-3f1b2c4d5e60"
		uidSFU1      = "7b2e9f4c-1d8a-4e3b-9c5f-6a0d2e8b4c71"
	)
	labelled := func(ns, name, uid, app string) corev1.Pod {
		p := fakeapi.Pod("golden-node", ns, name, uid)
		p.Labels = map[string]string{
			"app.kubernetes.io/name": app, "team": ns, "pod-template-hash": "7c9d8f6b5",
			"pod": "not-the-pod-name", // named like the series' pod label: left out
		}
		return p
	}
	api := fakeapi.Start(
		labelled("default", "inference-0", uidInference, "inference"),
		labelled("media", "webrtc-sfu-0", uidSFU0, "webrtc-sfu"),
		labelled("media", "webrtc-sfu-1", uidSFU1, "webrtc-sfu"),
		labelled("default", "elsewhere", "1d2c3b4a-5f6e-4a7b-8c9d-0e1f2a3b4c5d", "other"),
	)
	t.Cleanup(api.Close)
	kubeconfig, err := api.Kubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}

	a := startAgentEnv(t, []string{
		"MOCK_NVML_CONFIG=" + filepath.Join(configs, "mock-nvml-config-t4.yaml"),
		"DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS=true",
		"DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID=true",
		`DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX=^app\.kubernetes\.io/,^team$,^pod$`,
	}, "--nvml.library-path="+lib, "--interval=250ms",
		"--kubelet.pod-resources-socket="+kubelet.Path(), "--kubeconfig="+kubeconfig)

	type want struct{ uid, app, team string }
	pods := map[string]want{
		"inference-0":  {uidInference, "inference", "default"},
		"inference-1":  {}, // not in the API server: no UID, no labels
		"webrtc-sfu-0": {uidSFU0, "webrtc-sfu", "media"},
		"webrtc-sfu-1": {uidSFU1, "webrtc-sfu", "media"},
	}
	s := a.waitMetrics(t, 20*time.Second, "the pods' UIDs on their series", func(s samples) error {
		for pod, gpu := range map[string]int{"inference-0": 0, "webrtc-sfu-0": 3, "webrtc-sfu-1": 3} {
			if _, ok := s.podSeries("DCGM_FI_DEV_GPU_UTIL", uuid(gpu), pod, "pod_uid", pods[pod].uid); !ok {
				return fmt.Errorf("no DCGM_FI_DEV_GPU_UTIL of %s with its pod_uid", pod)
			}
		}
		return nil
	})
	podSeries := 0
	for _, smp := range s {
		if !strings.HasPrefix(smp.name, "DCGM_FI_DEV_") && !strings.HasPrefix(smp.name, "gpu_agent_") {
			continue
		}
		pod, ok := smp.labels["pod"]
		if !ok {
			for _, n := range []string{"pod_uid", "app_kubernetes_io_name", "team"} {
				if _, bad := smp.labels[n]; bad {
					t.Errorf("%s%v: a series without a pod has %s", smp.name, smp.labels, n)
				}
			}
			continue
		}
		podSeries++
		w, known := pods[pod]
		if !known {
			t.Errorf("%s%v: a pod the kubelet did not name", smp.name, smp.labels)
			continue
		}
		for n, v := range map[string]string{"pod_uid": w.uid, "app_kubernetes_io_name": w.app, "team": w.team} {
			if got, has := smp.labels[n]; got != v || has != (v != "") {
				t.Errorf("%s{pod=%q}: %s=%q (present %v), want %q", smp.name, pod, n, got, has, v)
			}
		}
		if _, bad := smp.labels["pod_template_hash"]; bad {
			t.Errorf("%s{pod=%q}: a label the allowlist refuses", smp.name, pod)
		}
	}
	if podSeries < 10 {
		t.Errorf("%d series with pod labels", podSeries)
	}
	// The shared GPU's device-level series is there, without pod labels.
	if _, ok := s.podSeries("DCGM_FI_DEV_POWER_USAGE", uuid(3), ""); !ok {
		t.Error("no device-level series of the shared GPU")
	}
}

// Asked for pod labels where the pod watch cannot reach the API server,
// the agent does not start: with --simulate and a kubelet's pods, the
// watch needs --kubeconfig.
func TestPodLabelsNeedTheAPIServer(t *testing.T) {
	kubelet := startKubelet(t, nil)
	code, stderr, timedOut := runAgent(t, 30*time.Second, "--simulate=1", "--web.listen-address="+testutil.FreeAddrT(t),
		"--grpc.listen-address=", "--kubelet.pod-resources-socket="+kubelet.Path(), "--kubernetes-enable-pod-labels")
	if timedOut || code != 1 {
		t.Fatalf("exit %d (timed out %v), want 1:\n%s", code, timedOut, stderr)
	}
	if !strings.Contains(stderr, "--kubernetes-enable-pod-labels: pod labels and UIDs come from the pod watch") {
		t.Errorf("stderr does not say why:\n%s", stderr)
	}
}
