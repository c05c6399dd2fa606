package agent

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The production agent carries no test doubles: neither go-nvml's
// generated mocks (the simulated node implements the sampler's own narrow
// interfaces) nor the fake kubelet (the simulated node hands its pods to
// attribution directly).
func TestBinaryCarriesNoTestDoubles(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/gpu-telemetry/agent/cmd/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 || !slices.Contains(deps, "github.com/NVIDIA/go-nvml/pkg/nvml") {
		t.Fatalf("go list -deps gave %d packages, without go-nvml: not the agent's dependencies", len(deps))
	}
	for _, p := range deps {
		if strings.HasSuffix(p, "/go-nvml/pkg/nvml/mock") || strings.Contains(p, "/go-nvml/pkg/nvml/mock/") || strings.HasSuffix(p, "/fakekubelet") {
			t.Errorf("cmd/agent depends on %s", p)
		}
	}
}
