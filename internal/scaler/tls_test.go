package scaler

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
)

// pki is a test CA and the certificates it signs, written as PEM files.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPath string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), ca: ca, caKey: key}
	p.caPath = p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for 127.0.0.1 usable by servers and clients,
// and returns its PEM paths.
func (p *pki) issue(t *testing.T, name string, serial int64) (certPath, keyPath string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", kd)
}

// Mutual TLS on both sides: the agent requires the scaler's client
// certificate, the scaler requires KEDA's; KEDA without one is refused.
func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	agentCert, agentKey := p.issue(t, "agent", 2)
	scalerCert, scalerKey := p.issue(t, "scaler", 3)
	kedaCert, kedaKey := p.issue(t, "keda", 4)
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)

	ac, err := tls.LoadX509KeyPair(agentCert, agentKey)
	if err != nil {
		t.Fatal(err)
	}
	agentTLS := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ac}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	a, err := scalertest.StartAgent("n1", "127.0.0.1:0", grpc.Creds(agentTLS))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	a.Publish(scalertest.Device("GPU-1", 42, "default/inference-0"))

	cfg, err := ParseFlags([]string{"--agents=" + a.Addr(),
		"--agents.tls-ca-file=" + p.caPath, "--agents.tls-cert-file=" + scalerCert, "--agents.tls-key-file=" + scalerKey,
		"--grpc.tls-cert-file=" + scalerCert, "--grpc.tls-key-file=" + scalerKey, "--grpc.tls-client-ca-file=" + p.caPath}, os.Stderr)
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
	defer func() { cancel(); <-done }()

	dial := func(certs []tls.Certificate) externalscaler.ExternalScalerClient {
		conn, err := grpc.NewClient(grpcLn.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: certs})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return externalscaler.NewExternalScalerClient(conn)
	}
	kc, err := tls.LoadX509KeyPair(kedaCert, kedaKey)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{client: dial([]tls.Certificate{kc})}
	waitMetric(t, h, ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70"), 42)

	if _, err := dial(nil).GetMetricSpec(context.Background(), ref("metric", "gpu_util", "target", "70")); err == nil {
		t.Error("a client without a certificate was served")
	}
}
