package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
)

// pki is a throwaway CA with a server and a client certificate, as PEM
// files in a temporary directory.
type pki struct {
	dir                                string
	caFile, serverCert, serverKey      string
	clientCert, clientKey, otherCAFile string
	caPool                             *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert, key, der
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage, serial int64) (certFile, keyFile string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	ca, caKey, caDER := newCA("test-ca")
	p.caFile = write("ca.crt", "CERTIFICATE", caDER)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(ca)
	p.serverCert, p.serverKey = leaf(ca, caKey, "server", x509.ExtKeyUsageServerAuth, 2)
	p.clientCert, p.clientKey = leaf(ca, caKey, "client", x509.ExtKeyUsageClientAuth, 3)
	_, _, otherDER := newCA("other-ca")
	p.otherCAFile = write("other-ca.crt", "CERTIFICATE", otherDER)
	return p
}

func TestValidateGRPCFlags(t *testing.T) {
	p := newPKI(t)
	notPEM := filepath.Join(p.dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, tc := range []struct {
		args []string
		want string // "" means valid
	}{
		{[]string{"--grpc.listen-address="}, ""},
		{[]string{"--grpc.listen-address=:9400"}, "--grpc.listen-address=:9400: must differ from --web.listen-address"},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert, "--grpc.tls-key-file=" + p.serverKey}, ""},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert, "--grpc.tls-key-file=" + p.serverKey, "--grpc.tls-client-ca-file=" + p.caFile}, ""},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert}, "--grpc.tls-key-file=\"\": set both, or neither"},
		{[]string{"--grpc.tls-client-ca-file=" + p.caFile}, "--grpc.tls-cert-file=\"\""},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert, "--grpc.tls-key-file=" + p.clientKey}, "--grpc.tls-cert-file=" + p.serverCert},
		{[]string{"--grpc.tls-cert-file=/nonexistent.crt", "--grpc.tls-key-file=" + p.serverKey}, "--grpc.tls-cert-file=/nonexistent.crt"},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert, "--grpc.tls-key-file=" + p.serverKey, "--grpc.tls-client-ca-file=" + notPEM}, "--grpc.tls-client-ca-file=" + notPEM + ": no PEM certificate"},
		{[]string{"--grpc.tls-cert-file=" + p.serverCert, "--grpc.tls-key-file=" + p.serverKey, "--grpc.listen-address="}, "--grpc.listen-address=\"\""},
		{[]string{"--simulate.load-file=/tmp/load.json"}, "--simulate.load-file=/tmp/load.json: needs --simulate"},
		{[]string{"--simulate=1", "--simulate.load-file=/tmp/load.json"}, ""},
	} {
		err := parse(t, tc.args...).Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v, want valid", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: err = %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	if c := parse(t); c.GRPCListenAddress != ":9401" {
		t.Errorf("default --grpc.listen-address %q, want :9401", c.GRPCListenAddress)
	}
}

// With --grpc.tls-client-ca-file the server speaks mutual TLS: a client
// with a certificate the CA signed gets an answer; one without, or with
// one another CA signed, is refused.
func TestGRPCMutualTLS(t *testing.T) {
	p := newPKI(t)
	c := parse(t, "--grpc.tls-cert-file="+p.serverCert, "--grpc.tls-key-file="+p.serverKey, "--grpc.tls-client-ca-file="+p.caFile)
	tlsConf, err := c.GRPCTLSConfig(tlsfiles.NewSet(tlsfiles.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	gs := newGRPCServer(tlsConf)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()

	check := func(clientConf *tls.Config) error {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientConf)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	clientCert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(&tls.Config{RootCAs: p.caPool, Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Errorf("client with a certificate the CA signed: %v", err)
	}
	if err := check(&tls.Config{RootCAs: p.caPool}); err == nil {
		t.Error("client without a certificate was served")
	}
	serverAsClient, _ := tls.LoadX509KeyPair(p.serverCert, p.serverKey) // signed by the CA, but not for client auth
	if err := check(&tls.Config{RootCAs: p.caPool, Certificates: []tls.Certificate{serverAsClient}}); err == nil {
		t.Error("client with a server-only certificate was served")
	}
}

// A gRPC port already taken fails the start, naming the flag, before
// anything runs.
func TestGRPCPortTakenFailsTheStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	c := parse(t, "--simulate=1", "--web.listen-address=127.0.0.1:0", "--grpc.listen-address="+taken.Addr().String(),
		"--kubelet.pod-resources-socket=/nonexistent/kubelet.sock")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var logs bytes.Buffer
	err = Run(ctx, c, c.NewLogger(&logs))
	if err == nil || !strings.Contains(err.Error(), "--grpc.listen-address="+taken.Addr().String()) {
		t.Errorf("Run with the gRPC port taken: %v, want an error naming --grpc.listen-address", err)
	}
	if ctx.Err() != nil {
		t.Error("Run waited for its context instead of failing the start")
	}
}

// gRPC health is NOT_SERVING until the first snapshot, then SERVING, for
// the server and the Telemetry service.
func TestHealthServingWithTheFirstSnapshot(t *testing.T) {
	c := parse(t, "--grpc.listen-address=127.0.0.1:0")
	store := telemetry.NewStore(c.Interval, c.Window)
	p, err := newPushServer(c, store, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	check := func() []healthpb.HealthCheckResponse_ServingStatus {
		var out []healthpb.HealthCheckResponse_ServingStatus
		for _, svc := range healthServices {
			resp, err := p.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Fatalf("health of %q: %v", svc, err)
			}
			out = append(out, resp.GetStatus())
		}
		return out
	}
	notServing := []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING}
	if got := check(); !slices.Equal(got, notServing) {
		t.Errorf("before the first snapshot: %v, want NOT_SERVING", got)
	}
	done := make(chan struct{})
	go func() { serveHealthOnce(context.Background(), p.health, store); close(done) }()
	time.Sleep(20 * time.Millisecond)
	if got := check(); !slices.Equal(got, notServing) {
		t.Errorf("still no snapshot: %v, want NOT_SERVING", got)
	}
	store.Publish(&telemetry.Snapshot{Seq: 1})
	<-done
	if got := check(); !slices.Equal(got, []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING}) {
		t.Errorf("after the first snapshot: %v, want SERVING", got)
	}
}
