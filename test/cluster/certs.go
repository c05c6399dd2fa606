package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ca is a certificate authority of the test cluster.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
	path string // the CA certificate, PEM
}

var serial int64 = 1

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// newCA makes a self-signed CA and writes its certificate to dir/name.crt.
func newCA(dir, name string) (*ca, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &ca{cert: cert, key: key, path: filepath.Join(dir, name+".crt")}
	return c, writePEM(c.path, "CERTIFICATE", der)
}

// leaf is what to put in an issued certificate.
type leaf struct {
	cn     string
	orgs   []string
	dns    []string
	ips    []net.IP
	server bool
	client bool
}

// issue signs a certificate for l and writes dir/name.crt and name.key.
func (c *ca) issue(dir, name string, l leaf) (certPath, keyPath string, err error) {
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     l.dns,
		IPAddresses:  l.ips,
	}
	if l.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return certPath, keyPath, writeKey(keyPath, key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// pki is every certificate and key of the test cluster.
type pki struct {
	dir string
	// The cluster CA: the API server's serving certificate and the admin
	// client certificate (system:masters).
	CA                       *ca
	ServingCert, ServingKey  string
	AdminCert, AdminKey      string
	ServiceAccountKey        string // signs service account tokens
	ServiceAccountPub        string // verifies them
	FrontProxyCA             *ca    // the aggregation layer's
	ProxyClientCert, ProxyCK string // front-proxy-client
	// KEDADir holds ca.crt, tls.crt and tls.key as KEDA's --cert-dir wants
	// them: the operator's metrics gRPC service and the adapter use them
	// for mutual TLS, and the adapter serves external.metrics.k8s.io with
	// them (the APIService's caBundle is ca.crt).
	KEDADir string
	KEDACA  *ca
}

// KEDAAuthority is the name the adapter expects in the operator's
// certificate (--metrics-service-grpc-authority).
const KEDAAuthority = "keda-operator.keda.svc"

func newPKI(dir string, hostIP, nsIP net.IP) (*pki, error) {
	p := &pki{dir: dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if p.CA, err = newCA(dir, "ca"); err != nil {
		return nil, err
	}
	loop := net.ParseIP("127.0.0.1")
	if p.ServingCert, p.ServingKey, err = p.CA.issue(dir, "apiserver", leaf{
		cn:     "kube-apiserver",
		dns:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		ips:    []net.IP{loop, hostIP, net.ParseIP(serviceIP)},
		server: true,
	}); err != nil {
		return nil, err
	}
	if p.AdminCert, p.AdminKey, err = p.CA.issue(dir, "admin", leaf{cn: "admin", orgs: []string{"system:masters"}, client: true}); err != nil {
		return nil, err
	}
	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	p.ServiceAccountKey = filepath.Join(dir, "sa.key")
	if err := writeKey(p.ServiceAccountKey, saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	p.ServiceAccountPub = filepath.Join(dir, "sa.pub")
	if err := writePEM(p.ServiceAccountPub, "PUBLIC KEY", pub); err != nil {
		return nil, err
	}
	if p.FrontProxyCA, err = newCA(dir, "front-proxy-ca"); err != nil {
		return nil, err
	}
	if p.ProxyClientCert, p.ProxyCK, err = p.FrontProxyCA.issue(dir, "front-proxy-client", leaf{cn: "front-proxy-client", client: true}); err != nil {
		return nil, err
	}

	p.KEDADir = filepath.Join(dir, "keda")
	if err := os.MkdirAll(p.KEDADir, 0o755); err != nil {
		return nil, err
	}
	if p.KEDACA, err = newCA(p.KEDADir, "ca"); err != nil {
		return nil, err
	}
	if _, _, err := p.KEDACA.issue(p.KEDADir, "tls", leaf{
		cn: "keda",
		dns: []string{KEDAAuthority, "keda-operator", "keda-operator.keda.svc.cluster.local",
			"keda-metrics-apiserver", "keda-metrics-apiserver.keda.svc", "keda-metrics-apiserver.keda.svc.cluster.local"},
		ips:    []net.IP{loop, hostIP, nsIP},
		server: true, client: true,
	}); err != nil {
		return nil, err
	}
	return p, nil
}
