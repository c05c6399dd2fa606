package podresources_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// A GPU time-sliced between two pods is attributed to both.
func ExampleClient() {
	dir, _ := os.MkdirTemp("", "kl")
	defer os.RemoveAll(dir)
	kubelet, err := fakekubelet.Start(filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		panic(err)
	}
	defer kubelet.Stop()
	kubelet.SetPods([]*podresourcesv1.PodResources{
		fakekubelet.Pod("web", "a", fakekubelet.Container("enc", fakekubelet.Devices("nvidia.com/gpu.shared", "GPU-1234::0"))),
		fakekubelet.Pod("web", "b", fakekubelet.Container("enc", fakekubelet.Devices("nvidia.com/gpu.shared", "GPU-1234::1"))),
	})

	inventory := podresources.NewResolver([]podresources.GPU{{UUID: "GPU-1234", Minor: 0}})
	client, err := podresources.NewClient(kubelet.Path(), inventory, podresources.Options{})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	// In the agent, client.Run(ctx) polls in its own goroutine.
	if err := client.Refresh(context.Background()); err != nil {
		panic(err)
	}
	for _, p := range client.Assignments().Pods("GPU-1234") {
		fmt.Println(p.Namespace, p.Name, p.Container)
	}
	// Output:
	// web a enc
	// web b enc
}
