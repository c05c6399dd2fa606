package agent

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// The agent's push API with mutual TLS over a Secret volume (tls.crt,
// tls.key, ca.crt as client CA), run whole (--simulate). A Watch stream
// is opened, then the agent's and the client's Secrets both move to a new
// CA with new leaves, as cert-manager and the kubelet would, without a
// restart: the stream opened before goes on; the scaler's kind of client
// (tlsfiles.ClientCredentials over its own Secret) connects anew with the
// new files; a client still on the old CA and certificate, one with an
// expired certificate of the new CA, and a plaintext one are refused; the
// reloads are counted on /metrics.
func TestGRPCTLSRotation(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t, "ca-1"), tlstest.NewCA(t, "ca-2")
	agentVol := tlstest.NewSecretVolume(t, tlstest.Secret(ca1, ca1.Issue(t, "agent")))
	clientVol := tlstest.NewSecretVolume(t, tlstest.Secret(ca1, ca1.Issue(t, "scaler")))
	grpcAddr, webAddr := testutil.FreeAddrT(t), testutil.FreeAddrT(t)
	c := parse(t, "--simulate=1", "--interval=100ms", "--web.listen-address="+webAddr, "--grpc.listen-address="+grpcAddr,
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock", "--kubernetes.pod-watch=false",
		"--grpc.tls-cert-file="+agentVol.Path("tls.crt"), "--grpc.tls-key-file="+agentVol.Path("tls.key"),
		"--grpc.tls-client-ca-file="+agentVol.Path("ca.crt"))
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c, c.NewLogger(testWriter{t})) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	files := tlsfiles.NewSet(tlsfiles.Options{CheckInterval: -1})
	clientKP, err := files.KeyPair(clientVol.Path("tls.crt"), clientVol.Path("tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := files.CAPool(clientVol.Path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	rotating := tlsfiles.ClientCredentials(clientCA, clientKP, "")
	old := credentials.NewTLS(&tls.Config{RootCAs: ca1.Pool(), Certificates: []tls.Certificate{ca1.Issue(t, "scaler").TLS(t)}})

	watch := func(creds credentials.TransportCredentials) (grpc.ServerStreamingClient[telemetryv1.NodeSnapshot], error) {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		t.Cleanup(cancel)
		s, err := telemetryv1.NewTelemetryClient(conn).Watch(ctx, &telemetryv1.WatchRequest{})
		if err != nil {
			return nil, err
		}
		_, err = s.Recv() // the handshake's outcome shows here
		return s, err
	}
	// The server starts once NVML is open: wait for a first answer.
	var stream grpc.ServerStreamingClient[telemetryv1.NodeSnapshot]
	testutil.Eventually(t, 20*time.Second, "a Watch stream with the first files", func() bool {
		s, err := watch(rotating)
		stream = s
		return err == nil
	})

	agentVol.Update(tlstest.Secret(ca2, ca2.Issue(t, "agent")))
	clientVol.Update(tlstest.Secret(ca2, ca2.Issue(t, "scaler")))

	// The agent reads its files at most once a second: its first
	// handshakes after the swap may still see the old ones.
	testutil.Eventually(t, 20*time.Second, "a new Watch stream with the rotated files", func() bool {
		_, err := watch(rotating)
		return err == nil
	})
	if _, err := watch(old); err == nil {
		t.Error("a client on the old CA and certificate was served after the rotation")
	}
	expired := credentials.NewTLS(&tls.Config{RootCAs: ca2.Pool(), Certificates: []tls.Certificate{ca2.Issue(t, "scaler", tlstest.Expired).TLS(t)}})
	if _, err := watch(expired); err == nil {
		t.Error("a client with an expired certificate was served")
	}
	if _, err := watch(insecure.NewCredentials()); err == nil {
		t.Error("a plaintext client was served")
	}

	// The stream opened before the rotation goes on: snapshots keep coming.
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("the stream opened before the rotation: %v", err)
	}
	for {
		s, err := stream.Recv()
		if err != nil {
			t.Fatalf("the stream opened before the rotation: %v", err)
		}
		if s.GetSequence() > first.GetSequence()+2 {
			break
		}
	}

	resp, err := http.Get("http://" + webAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`gpu_agent_tls_reloads_total{file="` + agentVol.Path("tls.crt") + `"} 1`,
		`gpu_agent_tls_reloads_total{file="` + agentVol.Path("ca.crt") + `"} 1`,
		`gpu_agent_tls_reload_errors_total{file="` + agentVol.Path("tls.crt") + `"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
