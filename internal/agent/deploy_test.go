package agent

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"
)

// The DaemonSet's arguments are flags this agent accepts and validates,
// and the probes point at the endpoints it serves.
func TestDaemonSetMatchesTheAgent(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type probe struct {
		HTTPGet struct{ Path string } `yaml:"httpGet"`
	}
	var ds struct {
		Kind string
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Args           []string
						ReadinessProbe probe `yaml:"readinessProbe"`
						LivenessProbe  probe `yaml:"livenessProbe"`
						Env            []struct{ Name string }
					}
				}
			}
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	found := false
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding manifest: %v", err)
		}
		if doc["kind"] != "DaemonSet" {
			continue
		}
		b, _ := yaml.Marshal(doc)
		if err := yaml.Unmarshal(b, &ds); err != nil {
			t.Fatal(err)
		}
		found = true
	}
	if !found || len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("no DaemonSet with one container in the manifest")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	cfg, err := ParseFlags(c.Args, func(k string) string {
		if k == "NODE_NAME" { // the Downward API's, as the DaemonSet sets it
			return "node"
		}
		return ""
	}, io.Discard)
	if err != nil {
		t.Fatalf("DaemonSet args %v: %v", c.Args, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("DaemonSet args invalid: %v", err)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probes = %q, %q", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
	var env []string
	for _, e := range c.Env {
		env = append(env, e.Name)
	}
	if !strings.Contains(strings.Join(env, ","), "NODE_NAME") {
		t.Error("NODE_NAME not set from the Downward API: the Hostname label would be the pod's name")
	}
	// NVIDIA_MIG_MONITOR_DEVICES and the CAP_SYS_ADMIN it needs are
	// opt-in (deploy/components/mig-monitor); test/deploy checks the pair.
}
