package scaler

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/gpu-telemetry/agent/internal/fleet"
)

// docs decodes every document of a manifest into its kind -> documents.
func docs(t *testing.T, path string) map[string][]map[any]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]map[any]any{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var doc map[any]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			k, _ := doc["kind"].(string)
			out[k] = append(out[k], doc)
		}
	}
	return out
}

// into re-decodes a generic document into a typed view of it.
func into(t *testing.T, doc any, v any) {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

type meta struct {
	Name, Namespace string
	Labels          map[string]string
}

type service struct {
	Metadata meta
	Spec     struct {
		ClusterIP string `yaml:"clusterIP"`
		Selector  map[string]string
		Ports     []struct {
			Name       string
			Port       int
			TargetPort any `yaml:"targetPort"`
		}
	}
}

// The scaler's Deployment runs flags the scaler accepts; its DNS name is
// the agents' headless Service, which selects the DaemonSet's pods on the
// stream port; its Service and probes point where it listens.
func TestScalerManifests(t *testing.T) {
	agentDocs := docs(t, "../../deploy/daemonset.yaml")
	var ds struct {
		Spec struct {
			Template struct{ Metadata meta }
		}
	}
	into(t, agentDocs["DaemonSet"][0], &ds)
	podLabels := ds.Spec.Template.Metadata.Labels

	var stream service
	into(t, docs(t, "../../deploy/agent-stream-service.yaml")["Service"][0], &stream)
	if stream.Spec.ClusterIP != "None" {
		t.Error("the agents' stream Service must be headless (one record per agent)")
	}
	for k, v := range stream.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("stream Service selects %s=%s; the DaemonSet's pods have %v", k, v, podLabels)
		}
	}
	if len(stream.Spec.Selector) == 0 || len(stream.Spec.Ports) != 1 || stream.Spec.Ports[0].Port != 9401 {
		t.Errorf("stream Service: selector %v, ports %+v; want the DaemonSet's labels and 9401", stream.Spec.Selector, stream.Spec.Ports)
	}

	sd := docs(t, "../../deploy/scaler.yaml")
	if len(sd["Deployment"]) != 1 || len(sd["Service"]) != 1 || len(sd["ServiceAccount"]) != 1 {
		t.Fatalf("scaler.yaml: want a Deployment, a Service and a ServiceAccount, got %v", keys(sd))
	}
	var dep struct {
		Metadata meta
		Spec     struct {
			Template struct {
				Metadata meta
				Spec     struct {
					ServiceAccountName string `yaml:"serviceAccountName"`
					Containers         []struct {
						Args  []string
						Ports []struct {
							Name          string
							ContainerPort int `yaml:"containerPort"`
						}
						ReadinessProbe struct {
							GRPC struct{ Port int } `yaml:"grpc"`
						} `yaml:"readinessProbe"`
						LivenessProbe struct {
							HTTPGet struct {
								Path string
								Port string
							} `yaml:"httpGet"`
						} `yaml:"livenessProbe"`
					}
				}
			}
		}
	}
	into(t, sd["Deployment"][0], &dep)
	c := dep.Spec.Template.Spec.Containers[0]
	cfg, err := ParseFlags(c.Args, io.Discard)
	if err != nil {
		t.Fatalf("Deployment args %v: %v", c.Args, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Deployment args invalid: %v", err)
	}
	host, port, _ := net.SplitHostPort(cfg.AgentsDNS)
	if want := stream.Metadata.Name + "." + stream.Metadata.Namespace + ".svc"; !strings.HasPrefix(host, want) {
		t.Errorf("--agents.dns=%s: not the stream Service %s", cfg.AgentsDNS, want)
	}
	if port != "9401" {
		t.Errorf("--agents.dns port %s, the stream Service's is 9401", port)
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if _, gp, _ := net.SplitHostPort(cfg.GRPCListenAddress); strconv.Itoa(ports["grpc"]) != gp || c.ReadinessProbe.GRPC.Port != ports["grpc"] {
		t.Errorf("gRPC: --grpc.listen-address=%s, containerPort %d, readiness grpc port %d", cfg.GRPCListenAddress, ports["grpc"], c.ReadinessProbe.GRPC.Port)
	}
	if _, wp, _ := net.SplitHostPort(cfg.WebListenAddress); strconv.Itoa(ports["metrics"]) != wp || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("web: --web.listen-address=%s, containerPort %d, liveness %+v", cfg.WebListenAddress, ports["metrics"], c.LivenessProbe.HTTPGet)
	}
	if sa := sd["ServiceAccount"][0]["metadata"].(map[any]any)["name"]; dep.Spec.Template.Spec.ServiceAccountName != sa {
		t.Errorf("serviceAccountName %q, ServiceAccount %v", dep.Spec.Template.Spec.ServiceAccountName, sa)
	}
	var svc service
	into(t, sd["Service"][0], &svc)
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("scaler Service selects %s=%s, pods have %v", k, v, dep.Spec.Template.Metadata.Labels)
		}
	}
	scalerAddr := svc.Metadata.Name + "." + svc.Metadata.Namespace + ".svc.cluster.local:" + strconv.Itoa(svc.Spec.Ports[0].Port)
	if svc.Spec.Ports[0].Port != ports["grpc"] {
		t.Errorf("scaler Service port %d, gRPC port %d", svc.Spec.Ports[0].Port, ports["grpc"])
	}

	// The examples: the trigger types asked for, pointed at the scaler's
	// Service, with metadata the scaler's own parser accepts.
	for _, tc := range []struct {
		file     string
		typ      string
		triggers int
		metrics  []string
	}{
		{"scaledobject-inference.yaml", "external", 1, []string{"gpu_util"}},
		{"scaledobject-webrtc.yaml", "external-push", 2, []string{"enc_util", "encoder_latency"}},
	} {
		var so struct {
			Kind     string
			Metadata meta
			Spec     struct {
				MinReplicaCount *int `yaml:"minReplicaCount"`
				Triggers        []struct {
					Type       string
					MetricType string `yaml:"metricType"`
					Metadata   map[string]string
				}
			}
		}
		into(t, docs(t, "../../deploy/examples/"+tc.file)["ScaledObject"][0], &so)
		if len(so.Spec.Triggers) != tc.triggers {
			t.Fatalf("%s: %d triggers, want %d", tc.file, len(so.Spec.Triggers), tc.triggers)
		}
		for i, tr := range so.Spec.Triggers {
			if tr.Type != tc.typ || tr.Metadata["scalerAddress"] != scalerAddr {
				t.Errorf("%s trigger %d: type %s at %s, want %s at %s", tc.file, i, tr.Type, tr.Metadata["scalerAddress"], tc.typ, scalerAddr)
			}
			if tr.MetricType != "Value" && tr.MetricType != "AverageValue" {
				t.Errorf("%s trigger %d: metricType %q", tc.file, i, tr.MetricType)
			}
			q, err := fleet.ParseMetadata(tr.Metadata, so.Metadata.Namespace, cfg.WindowMax)
			if err != nil {
				t.Errorf("%s trigger %d: %v", tc.file, i, err)
				continue
			}
			if q.Metric.String() != tc.metrics[i] {
				t.Errorf("%s trigger %d: metric %s, want %s", tc.file, i, q.Metric, tc.metrics[i])
			}
			// AverageValue divides by the replicas: only a total is right.
			if tr.MetricType == "AverageValue" && q.Aggregation != fleet.Sum {
				t.Errorf("%s trigger %d: AverageValue with aggregation %s; the HPA divides it by the replicas", tc.file, i, q.Aggregation)
			}
			if tc.file == "scaledobject-inference.yaml" && (!q.Matches("default", "inference-7f9c-x2") || q.Target != 70) {
				t.Errorf("inference trigger: pattern %q target %g", q.PodPattern, q.Target)
			}
			if q.Window > 0 && q.Window > cfg.WindowMax {
				t.Errorf("%s trigger %d: window %s over --window.max %s", tc.file, i, q.Window, cfg.WindowMax)
			}
		}
		if tc.typ == "external-push" && (so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 0) {
			t.Errorf("%s: the push example is about waking from zero: minReplicaCount 0", tc.file)
		}
	}
}

func keys(m map[string][]map[any]any) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}
