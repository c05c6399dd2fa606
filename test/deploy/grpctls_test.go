package deploy

import (
	"io"
	"path"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-telemetry/agent/internal/agent"
	"github.com/gpu-telemetry/agent/internal/scaler"
)

// With gRPC TLS on (components/grpc-tls; the chart's grpcTLS) every TLS
// flag of the agent and the scaler names its key of a cert-manager Secret
// (tls.crt, tls.key, ca.crt), mounted read-only as a directory from the
// Secret meant for it: a subPath mount is never updated by the kubelet,
// and the binaries reload the files when it updates them. The scaler
// expects the agents' stream name in their certificates, requires KEDA's
// client certificate where asked, and is not probed with the kubelet's
// plaintext gRPC probe. (checkConsistent cannot run here: the agent's
// Validate loads the certificate files.)
func TestGRPCTLS(t *testing.T) {
	helm := func(vals map[string]any) []object {
		t.Helper()
		v := map[string]any{"grpcTLS": map[string]any{"enabled": true, "agentSecretName": "agent-tls", "scalerSecretName": "scaler-tls"}}
		for k, x := range vals {
			v["grpcTLS"].(map[string]any)[k] = x
		}
		helmLint(t, v)
		return mustRender(t, v)
	}
	for _, tc := range []struct {
		name                string
		objs                []object
		agentSec, scalerSec string
		kedaClientCert      bool
	}{
		{"kustomize", kustomized(t, "grpc-tls"), "gpu-agent-grpc-tls", "gpu-scaler-tls", true},
		{"helm", helm(nil), "agent-tls", "scaler-tls", true},
		{"helm without KEDA's client certificate", helm(map[string]any{"kedaClientCert": false}), "agent-tls", "scaler-tls", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := one[*appsv1.DaemonSet](t, tc.objs, "DaemonSet", "")
			c := container(t, ds.Spec.Template.Spec, "gpu-agent")
			acfg, err := agent.ParseFlags(c.Args, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			secretKey(t, ds.Spec.Template.Spec, c, "--grpc.tls-cert-file", acfg.GRPCTLSCertFile, tc.agentSec, "tls.crt")
			secretKey(t, ds.Spec.Template.Spec, c, "--grpc.tls-key-file", acfg.GRPCTLSKeyFile, tc.agentSec, "tls.key")
			secretKey(t, ds.Spec.Template.Spec, c, "--grpc.tls-client-ca-file", acfg.GRPCTLSClientCAFile, tc.agentSec, "ca.crt")

			dep := one[*appsv1.Deployment](t, tc.objs, "Deployment", "")
			sc := container(t, dep.Spec.Template.Spec, "gpu-scaler")
			scfg, err := scaler.ParseFlags(sc.Args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if err := scfg.Validate(); err != nil {
				t.Errorf("scaler args %v: %v", sc.Args, err)
			}
			spec := dep.Spec.Template.Spec
			secretKey(t, spec, sc, "--agents.tls-ca-file", scfg.AgentsTLSCA, tc.scalerSec, "ca.crt")
			secretKey(t, spec, sc, "--agents.tls-cert-file", scfg.AgentsTLSCert, tc.scalerSec, "tls.crt")
			secretKey(t, spec, sc, "--agents.tls-key-file", scfg.AgentsTLSKey, tc.scalerSec, "tls.key")
			secretKey(t, spec, sc, "--grpc.tls-cert-file", scfg.GRPCTLSCert, tc.scalerSec, "tls.crt")
			secretKey(t, spec, sc, "--grpc.tls-key-file", scfg.GRPCTLSKey, tc.scalerSec, "tls.key")
			if tc.kedaClientCert {
				secretKey(t, spec, sc, "--grpc.tls-client-ca-file", scfg.GRPCTLSClientCA, tc.scalerSec, "ca.crt")
			} else if scfg.GRPCTLSClientCA != "" {
				t.Errorf("--grpc.tls-client-ca-file=%s with KEDA's client certificate off", scfg.GRPCTLSClientCA)
			}
			stream := one[*corev1.Service](t, tc.objs, "Service", ds.Name+"-stream")
			if want := stream.Name + "." + stream.Namespace + ".svc"; scfg.AgentsTLSServer != want {
				t.Errorf("--agents.tls-server-name=%q, want the stream Service's name %s", scfg.AgentsTLSServer, want)
			}
			if p := sc.ReadinessProbe; p == nil || p.GRPC != nil || p.TCPSocket == nil || portOf(sc, p.TCPSocket.Port) != namedPort(sc, "grpc") {
				t.Errorf("scaler readiness probe %+v: want a TCP check of the gRPC port (the kubelet's gRPC probe is plaintext)", p)
			}
		})
	}
}

// secretKey checks that file is key of the Secret secret, under a whole
// read-only mount of it.
func secretKey(t *testing.T, spec corev1.PodSpec, c corev1.Container, flag, file, secret, key string) {
	t.Helper()
	m, v, ok := mountFor(spec, c, file)
	switch {
	case file == "":
		t.Errorf("%s not set", flag)
	case !ok:
		t.Errorf("%s=%s: under no volume mount", flag, file)
	case v.Secret == nil || v.Secret.SecretName != secret:
		t.Errorf("%s=%s: volume %s is not the Secret %s", flag, file, v.Name, secret)
	case m.SubPath != "" || !m.ReadOnly || len(v.Secret.Items) > 0:
		t.Errorf("%s=%s: mount %+v of %+v: want the whole Secret, read-only, without subPath", flag, file, m, v.Secret)
	case path.Base(file) != key || path.Dir(file) != path.Clean(m.MountPath):
		t.Errorf("%s=%s: want the key %s at the mount's top, %s", flag, file, key, m.MountPath)
	}
}
