package agent

import (
	"fmt"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/pkg/attribution"
	"github.com/gpu-telemetry/agent/pkg/nvml/sim"
	"github.com/gpu-telemetry/agent/pkg/podresources/fakekubelet"
)

// SimulatedNames names the simulated node's pods by the container IDs and
// pod UIDs of its processes (sim.Process), in place of a pod watch: the
// same pods SimulatedPods gives the kubelet.
func SimulatedNames(l *sim.Library) *attribution.NameTable {
	t := &attribution.NameTable{Containers: map[string]attribution.Pod{}, Pods: map[string]attribution.Pod{}}
	for _, p := range l.Processes() {
		t.Containers[p.ContainerID] = attribution.Pod{Namespace: p.Namespace, Name: p.Pod, Container: p.Container}
		t.Pods[p.PodUID] = attribution.Pod{Namespace: p.Namespace, Name: p.Pod}
	}
	return t
}

// SimulatedPods returns the pods of a simulated node: GPU i is held by pod
// default/inference-i (container "server"), except that with two or more
// GPUs the last one is time-sliced (nvidia.com/gpu.shared) between
// media/webrtc-sfu-0 and media/webrtc-sfu-1.
func SimulatedPods(l *sim.Library) []*podresourcesv1.PodResources {
	devs := l.Devices()
	var pods []*podresourcesv1.PodResources
	for i, d := range devs {
		if len(devs) >= 2 && i == len(devs)-1 {
			for r := 0; r < 2; r++ {
				pods = append(pods, fakekubelet.Pod("media", fmt.Sprintf("webrtc-sfu-%d", r),
					fakekubelet.Container("sfu", fakekubelet.Devices("nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", d.UUID(), r)))))
			}
			continue
		}
		pods = append(pods, fakekubelet.Pod("default", fmt.Sprintf("inference-%d", i),
			fakekubelet.Container("server", fakekubelet.Devices("nvidia.com/gpu", d.UUID()))))
	}
	return pods
}
