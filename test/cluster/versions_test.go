package cluster

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The versions the report names are the ones the wrapper modules build.
// Runs without opting in: it only reads files.
func TestVersionsPinned(t *testing.T) {
	k8s := readFile(t, "build/kubernetes/go.mod")
	if !regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes ` + regexp.QuoteMeta(KubernetesVersion) + `( // indirect)?$`).MatchString(k8s) {
		t.Errorf("build/kubernetes/go.mod does not require k8s.io/kubernetes %s", KubernetesVersion)
	}
	// k8s.io/kubernetes requires every staging module at v0.0.0 and
	// replaces it with a path in its own repository: each must be
	// replaced here, with the published release of the same minor.
	replaced := regexp.MustCompile(`(?m)^\s*(k8s\.io/[a-z0-9-]+) => (k8s\.io/[a-z0-9-]+) (v\S+)$`).FindAllStringSubmatch(k8s, -1)
	if len(replaced) < 20 {
		t.Fatalf("build/kubernetes/go.mod replaces %d k8s.io modules; k8s.io/kubernetes has about 30 staging modules", len(replaced))
	}
	for _, m := range replaced {
		if m[1] != m[2] || m[3] != StagingVersion {
			t.Errorf("build/kubernetes/go.mod: %s => %s %s, want %s => %s %s", m[1], m[2], m[3], m[1], m[1], StagingVersion)
		}
	}
	if "v1"+strings.TrimPrefix(StagingVersion, "v0") != KubernetesVersion {
		t.Errorf("StagingVersion %s is not the staging release of %s", StagingVersion, KubernetesVersion)
	}
	keda := readFile(t, "build/keda/go.mod")
	if !regexp.MustCompile(`(?m)^\s*(require )?github\.com/kedacore/keda/v2 ` + regexp.QuoteMeta(KEDAVersion) + `( // indirect)?$`).MatchString(keda) {
		t.Errorf("build/keda/go.mod does not require github.com/kedacore/keda/v2 %s", KEDAVersion)
	}
	for _, tl := range tools {
		if !strings.Contains(readFile(t, filepath.Join("build", tl.module, "go.mod")), "\t"+tl.pkg+"\n") {
			t.Errorf("build/%s/go.mod has no tool directive for %s", tl.module, tl.pkg)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The certificates the components are started with verify as each
// component will verify them.
func TestPKI(t *testing.T) {
	host, nsIP := net.ParseIP("10.250.0.1"), net.ParseIP("10.250.0.2")
	p, err := newPKI(t.TempDir(), host, nsIP)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(ca *ca, certPath string, usage x509.ExtKeyUsage, name string) error {
		t.Helper()
		cert := parseCert(t, certPath)
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		_, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: time.Now()})
		return err
	}
	for _, c := range []struct {
		ca    *ca
		cert  string
		usage x509.ExtKeyUsage
		name  string
	}{
		{p.CA, p.ServingCert, x509.ExtKeyUsageServerAuth, "127.0.0.1"},
		{p.CA, p.ServingCert, x509.ExtKeyUsageServerAuth, "10.250.0.1"},
		{p.CA, p.ServingCert, x509.ExtKeyUsageServerAuth, "kubernetes.default.svc"},
		{p.CA, p.AdminCert, x509.ExtKeyUsageClientAuth, ""},
		{p.FrontProxyCA, p.ProxyClientCert, x509.ExtKeyUsageClientAuth, ""},
		// The operator's gRPC service as the adapter dials it (authority),
		// the adapter as the aggregator dials it, and both as clients.
		{p.KEDACA, filepath.Join(p.KEDADir, "tls.crt"), x509.ExtKeyUsageServerAuth, KEDAAuthority},
		{p.KEDACA, filepath.Join(p.KEDADir, "tls.crt"), x509.ExtKeyUsageServerAuth, "keda-metrics-apiserver.keda.svc"},
		{p.KEDACA, filepath.Join(p.KEDADir, "tls.crt"), x509.ExtKeyUsageClientAuth, ""},
	} {
		if err := verify(c.ca, c.cert, c.usage, c.name); err != nil {
			t.Errorf("%s for %q: %v", filepath.Base(c.cert), c.name, err)
		}
	}
	// A certificate of one CA is not accepted by another.
	if err := verify(p.CA, p.ProxyClientCert, x509.ExtKeyUsageClientAuth, ""); err == nil {
		t.Error("the front-proxy client certificate verifies against the cluster CA")
	}
	if admin := parseCert(t, p.AdminCert); len(admin.Subject.Organization) != 1 || admin.Subject.Organization[0] != "system:masters" {
		t.Errorf("admin certificate groups %v, want [system:masters]", admin.Subject.Organization)
	}
	for _, f := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if _, err := os.Stat(filepath.Join(p.KEDADir, f)); err != nil {
			t.Errorf("KEDA's --cert-dir lacks %s: %v", f, err)
		}
	}
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b := readFile(t, path)
	block, _ := pem.Decode([]byte(b))
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
