package scaler

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// startTLSAgent serves a fake agent of n1 on addr with mutual TLS over
// vol, as the agent does (tlsfiles, the files read on every handshake).
func startTLSAgent(t *testing.T, vol *tlstest.SecretVolume, addr string) *scalertest.Agent {
	t.Helper()
	files := tlsfiles.NewSet(tlsfiles.Options{CheckInterval: -1})
	kp, err := files.KeyPair(vol.Path("tls.crt"), vol.Path("tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := files.CAPool(vol.Path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := scalertest.StartAgent("n1", addr, grpc.Creds(credentials.NewTLS(tlsfiles.ServerConfig(kp, ca))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// startTLSScaler runs the scaler with mutual TLS on both sides, every
// file from vol (one cert-manager Secret: tls.crt, tls.key, ca.crt), and
// returns its gRPC and web addresses.
func startTLSScaler(t *testing.T, vol *tlstest.SecretVolume, agent string) (grpcAddr, webAddr string) {
	t.Helper()
	cfg, err := ParseFlags([]string{"--agents=" + agent, "--agents.backoff-max=1s",
		"--agents.tls-ca-file=" + vol.Path("ca.crt"), "--agents.tls-cert-file=" + vol.Path("tls.crt"), "--agents.tls-key-file=" + vol.Path("tls.key"),
		"--grpc.tls-cert-file=" + vol.Path("tls.crt"), "--grpc.tls-key-file=" + vol.Path("tls.key"), "--grpc.tls-client-ca-file=" + vol.Path("ca.crt")}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	grpcLn, _ := net.Listen("tcp", "127.0.0.1:0")
	webLn, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, cfg.NewLogger(testWriter{t}), Listeners{GRPC: grpcLn, Web: webLn}) }()
	t.Cleanup(func() { cancel(); <-done })
	return grpcLn.Addr().String(), webLn.Addr().String()
}

// kedaDial connects as KEDA does with the trigger's TLS auth parameters:
// a static configuration made from the Secret's contents.
func kedaDial(t *testing.T, addr string, creds credentials.TransportCredentials) *harness {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{client: externalscaler.NewExternalScalerClient(conn)}
}

func kedaTLS(roots *x509.CertPool, certs ...tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs})
}

// Mutual TLS on both sides: the agent requires the scaler's client
// certificate, the scaler requires KEDA's; KEDA without one, with one of
// another CA, with an expired one, or in plaintext is refused.
func TestMutualTLS(t *testing.T) {
	ca, other := tlstest.NewCA(t, "ca"), tlstest.NewCA(t, "other")
	a := startTLSAgent(t, tlstest.NewSecretVolume(t, tlstest.Secret(ca, ca.Issue(t, "agent"))), "127.0.0.1:0")
	a.Publish(scalertest.Device("GPU-1", 42, "default/inference-0"))
	addr, _ := startTLSScaler(t, tlstest.NewSecretVolume(t, tlstest.Secret(ca, ca.Issue(t, "scaler"))), a.Addr())

	waitMetric(t, kedaDial(t, addr, kedaTLS(ca.Pool(), ca.Issue(t, "keda").TLS(t))),
		ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70"), 42)
	for name, creds := range map[string]credentials.TransportCredentials{
		"without a certificate":         kedaTLS(ca.Pool()),
		"with another CA's certificate": kedaTLS(ca.Pool(), other.Issue(t, "keda").TLS(t)),
		"with an expired certificate":   kedaTLS(ca.Pool(), ca.Issue(t, "keda", tlstest.Expired).TLS(t)),
		"trusting another CA":           kedaTLS(other.Pool(), ca.Issue(t, "keda").TLS(t)),
		"in plaintext":                  insecure.NewCredentials(),
	} {
		if _, err := kedaDial(t, addr, creds).client.GetMetricSpec(t.Context(), ref("metric", "gpu_util", "target", "70")); err == nil {
			t.Errorf("a client %s was served", name)
		}
	}
}

// The scaler's and the agent's Secrets both move to a new CA with new
// leaves while everything runs. KEDA's connection and StreamIsActive
// stream made before go on, as does the scaler's stream from the agent
// (no failure counted); KEDA with the new Secret connects, with the old
// one it is refused; an agent restarted on the new files is reconnected
// to, so the scaler's client side took the new CA and certificate too.
func TestTLSRotation(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t, "ca-1"), tlstest.NewCA(t, "ca-2")
	agentVol := tlstest.NewSecretVolume(t, tlstest.Secret(ca1, ca1.Issue(t, "agent")))
	scalerVol := tlstest.NewSecretVolume(t, tlstest.Secret(ca1, ca1.Issue(t, "scaler")))
	a := startTLSAgent(t, agentVol, "127.0.0.1:0")
	a.Publish(scalertest.Device("GPU-1", 42, "default/inference-0"))
	addr, webAddr := startTLSScaler(t, scalerVol, a.Addr())

	inference := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "activationTarget", "50")
	before := kedaDial(t, addr, kedaTLS(ca1.Pool(), ca1.Issue(t, "keda").TLS(t)))
	waitMetric(t, before, inference, 42)
	stream, err := before.client.StreamIsActive(t.Context(), inference)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.Result {
		t.Fatalf("StreamIsActive before the rotation: %v, %v; want false", m, err)
	}

	agentVol.Update(tlstest.Secret(ca2, ca2.Issue(t, "agent")))
	scalerVol.Update(tlstest.Secret(ca2, ca2.Issue(t, "scaler")))

	// The scaler reads its files at most once a second.
	after := kedaDial(t, addr, kedaTLS(ca2.Pool(), ca2.Issue(t, "keda").TLS(t)))
	testutil.Eventually(t, 10*time.Second, "KEDA with the new Secret served", func() bool {
		_, err := after.client.GetMetricSpec(t.Context(), inference)
		return err == nil
	})
	if _, err := kedaDial(t, addr, kedaTLS(ca1.Pool(), ca1.Issue(t, "keda").TLS(t))).client.GetMetricSpec(t.Context(), inference); err == nil {
		t.Error("KEDA with the old Secret was served after the rotation")
	}

	a.Publish(scalertest.Device("GPU-1", 75, "default/inference-0"))
	if m, err := stream.Recv(); err != nil || !m.Result {
		t.Errorf("StreamIsActive opened before the rotation: %v, %v; want true", m, err)
	}
	waitMetric(t, before, inference, 75)
	metrics := get(t, "http://"+webAddr+"/metrics")
	for _, want := range []string{
		"gpu_scaler_agent_stream_failures_total 0",
		`gpu_scaler_tls_reloads_total{file="` + scalerVol.Path("tls.crt") + `"} 1`,
		`gpu_scaler_tls_reloads_total{file="` + scalerVol.Path("ca.crt") + `"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A new connection to an agent: it trusts CA 2 alone and requires a
	// client certificate CA 2 signed.
	a.Stop()
	a = startTLSAgent(t, agentVol, a.Addr())
	a.Publish(scalertest.Device("GPU-1", 30, "default/inference-0"))
	waitMetric(t, after, inference, 30)
}
