// Package tlstest makes certificates for tests, generated at run time
// (no key is committed), and writes them as the kubelet projects a
// Secret volume: every key a symlink through ..data to a timestamped
// directory, updated by swapping ..data.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

var serial atomic.Int64

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a self-signed CA valid from an hour ago for a day.
func NewCA(t testutil.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a pool of this CA alone.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is a certificate and its key, in PEM.
type Leaf struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// TLS is the pair for a tls.Config.
func (l *Leaf) TLS(t testutil.TB) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return c
}

// Expired makes Issue's certificate one that expired a minute ago.
var Expired = func(c *x509.Certificate) {
	c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Minute)
}

// Issue signs a certificate for name, 127.0.0.1 and localhost, for
// servers and clients alike, valid from an hour ago for a day unless an
// option says otherwise.
func (ca *CA) Issue(t testutil.TB, name string, opts ...func(*x509.Certificate)) *Leaf {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{name, "localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return &Leaf{Cert: cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})}
}

func newKey(t testutil.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return key
}

// Secret is the three keys of a cert-manager Secret (kubernetes.io/tls
// with ca.crt).
func Secret(ca *CA, leaf *Leaf) map[string][]byte {
	return map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "ca.crt": ca.PEM}
}

// SecretVolume is a directory laid out as the kubelet's AtomicWriter
// lays out a Secret volume.
type SecretVolume struct {
	Dir string
	t   testutil.TB
	gen int
}

// NewSecretVolume writes files into a new volume.
func NewSecretVolume(t testutil.TB, files map[string][]byte) *SecretVolume {
	t.Helper()
	v := &SecretVolume{Dir: t.TempDir(), t: t}
	v.Update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.Dir, name)); err != nil {
			t.Fatalf("tlstest: %v", err)
		}
	}
	return v
}

// Path is where a key of the Secret is read.
func (v *SecretVolume) Path(name string) string { return filepath.Join(v.Dir, name) }

// Update writes every file into a new directory, then points ..data at
// it with a rename, as the kubelet does: a reader sees the old set or the
// new, never a mix. The keys are those of NewSecretVolume.
func (v *SecretVolume) Update(files map[string][]byte) {
	v.t.Helper()
	v.gen++
	gen := fmt.Sprintf("..%d", v.gen)
	if err := os.Mkdir(filepath.Join(v.Dir, gen), 0o750); err != nil {
		v.t.Fatalf("tlstest: %v", err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(v.Dir, gen, name), b, 0o600); err != nil {
			v.t.Fatalf("tlstest: %v", err)
		}
	}
	tmp := filepath.Join(v.Dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		v.t.Fatalf("tlstest: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(v.Dir, "..data")); err != nil {
		v.t.Fatalf("tlstest: %v", err)
	}
}

// Write replaces one file of the current directory in place, as a
// writer that is not atomic would (or a half-written file).
func (v *SecretVolume) Write(name string, b []byte) {
	v.t.Helper()
	if err := os.WriteFile(filepath.Join(v.Dir, fmt.Sprintf("..%d", v.gen), name), b, 0o600); err != nil {
		v.t.Fatalf("tlstest: %v", err)
	}
}
