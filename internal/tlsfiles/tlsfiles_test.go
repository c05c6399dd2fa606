package tlsfiles

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// logBuffer is a slog destination the test reads.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// fixture is a Secret volume with a CA and a leaf, and a set over it
// that reads the files on every use.
type fixture struct {
	vol  *tlstest.SecretVolume
	set  *Set
	kp   *KeyPair
	ca   *CAPool
	logs *logBuffer
}

func newFixture(t *testing.T, ca *tlstest.CA, leaf *tlstest.Leaf, o Options) *fixture {
	t.Helper()
	f := &fixture{vol: tlstest.NewSecretVolume(t, tlstest.Secret(ca, leaf)), logs: &logBuffer{}}
	o.Namespace = "test"
	o.Logger = slog.New(slog.NewTextHandler(f.logs, nil))
	if o.CheckInterval == 0 {
		o.CheckInterval = -1
	}
	f.set = NewSet(o)
	var err error
	if f.kp, err = f.set.KeyPair(f.vol.Path("tls.crt"), f.vol.Path("tls.key")); err != nil {
		t.Fatal(err)
	}
	if f.ca, err = f.set.CAPool(f.vol.Path("ca.crt")); err != nil {
		t.Fatal(err)
	}
	return f
}

// serving is the serial number of the certificate in service.
func (f *fixture) serving() string { return f.kp.Certificate().Leaf.SerialNumber.String() }

// trusts tells whether the CA pool in service verifies leaf.
func (f *fixture) trusts(leaf *tlstest.Leaf) bool {
	_, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: f.ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func (f *fixture) metric(t *testing.T, name, file string) float64 {
	t.Helper()
	mfs, err := regOf(t, f.set).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "test_tls_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == f.vol.Path(file) {
				if m.Counter != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no test_tls_%s{file=%q}", name, f.vol.Path(file))
	return 0
}

func regOf(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	return reg
}

// A Secret volume updated as the kubelet updates it (a new directory,
// then the ..data symlink swapped) is read by path: the next use serves
// the new pair and trusts the new CA alone.
func TestReloadsASwappedSecretVolume(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t, "ca-1"), tlstest.NewCA(t, "ca-2")
	leaf1, leaf2 := ca1.Issue(t, "server"), ca2.Issue(t, "server")
	f := newFixture(t, ca1, leaf1, Options{})
	if got := f.serving(); got != leaf1.Cert.SerialNumber.String() {
		t.Fatalf("serving %s, want the first leaf %s", got, leaf1.Cert.SerialNumber)
	}
	if !f.trusts(leaf1) || f.trusts(leaf2) {
		t.Fatal("the first CA pool does not trust the first leaf alone")
	}

	f.vol.Update(tlstest.Secret(ca2, leaf2))
	if got := f.serving(); got != leaf2.Cert.SerialNumber.String() {
		t.Errorf("after the swap serving %s, want the second leaf %s", got, leaf2.Cert.SerialNumber)
	}
	if f.trusts(leaf1) || !f.trusts(leaf2) {
		t.Error("after the swap the CA pool does not trust the second leaf alone")
	}
	if got := f.metric(t, "reloads_total", "tls.crt"); got != 1 {
		t.Errorf("reloads_total{tls.crt} = %v, want 1", got)
	}
	if got := f.metric(t, "reloads_total", "ca.crt"); got != 1 {
		t.Errorf("reloads_total{ca.crt} = %v, want 1", got)
	}
	if got, want := f.metric(t, "certificate_expiry_timestamp_seconds", "tls.crt"), float64(leaf2.Cert.NotAfter.Unix()); got != want {
		t.Errorf("certificate_expiry_timestamp_seconds{tls.crt} = %v, want the second leaf's NotAfter %v", got, want)
	}
	if n := f.logs.count("TLS files reloaded"); n != 2 {
		t.Errorf("%d reload log lines, want 2 (pair and CA):\n%s", n, f.logs.buf.String())
	}
}

// Files are read again only once the check interval has passed since the
// last read; the clock is the test's.
func TestCheckInterval(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ca := tlstest.NewCA(t, "ca")
	leaf1, leaf2 := ca.Issue(t, "server"), ca.Issue(t, "server")
	f := newFixture(t, ca, leaf1, Options{CheckInterval: time.Second, Now: clock})

	f.vol.Update(tlstest.Secret(ca, leaf2))
	advance(999 * time.Millisecond)
	if got := f.serving(); got != leaf1.Cert.SerialNumber.String() {
		t.Errorf("within the interval serving %s, want the first leaf", got)
	}
	advance(time.Millisecond)
	if got := f.serving(); got != leaf2.Cert.SerialNumber.String() {
		t.Errorf("once the interval passed serving %s, want the second leaf", got)
	}
}

// Contents that do not load leave the last good ones in service, logged
// and counted once however often they are read, and the next good
// contents are taken.
func TestBadFilesKeepTheLastGood(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	good, other, next := ca.Issue(t, "server"), ca.Issue(t, "server"), ca.Issue(t, "server")
	for _, tc := range []struct {
		name  string
		file  string // whose counter counts it
		spoil func(f *fixture)
	}{
		{"a key that does not match the certificate", "tls.crt", func(f *fixture) { f.vol.Write("tls.key", other.KeyPEM) }},
		{"a certificate written halfway", "tls.crt", func(f *fixture) { f.vol.Write("tls.crt", good.CertPEM[:len(good.CertPEM)/2]) }},
		{"an empty key", "tls.crt", func(f *fixture) { f.vol.Write("tls.key", nil) }},
		{"a certificate removed", "tls.crt", func(f *fixture) { os.Remove(filepath.Join(f.vol.Dir, "..data", "tls.crt")) }},
		{"a CA bundle cut inside its second certificate", "ca.crt", func(f *fixture) {
			second := tlstest.NewCA(t, "ca-2").PEM
			f.vol.Write("ca.crt", append(append([]byte{}, ca.PEM...), second[:len(second)-40]...))
		}},
		{"a CA bundle with no certificate", "ca.crt", func(f *fixture) { f.vol.Write("ca.crt", []byte("not PEM\n")) }},
		{"a CA certificate that does not parse", "ca.crt", func(f *fixture) {
			f.vol.Write("ca.crt", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, ca, good, Options{})
			tc.spoil(f)
			for range 3 {
				if got := f.serving(); got != good.Cert.SerialNumber.String() {
					t.Fatalf("serving %s, want the last good %s", got, good.Cert.SerialNumber)
				}
				if !f.trusts(good) {
					t.Fatal("the last good CA pool is out of service")
				}
			}
			if got := f.metric(t, "reload_errors_total", tc.file); got != 1 {
				t.Errorf("reload_errors_total{%s} = %v, want 1", tc.file, got)
			}
			if n := f.logs.count("do not load"); n != 1 {
				t.Errorf("%d error log lines, want 1:\n%s", n, f.logs.buf.String())
			}

			f.vol.Update(tlstest.Secret(ca, next))
			if got := f.serving(); got != next.Cert.SerialNumber.String() {
				t.Errorf("after good files serving %s, want %s", got, next.Cert.SerialNumber)
			}
			if got := f.metric(t, "reload_errors_total", tc.file); got != 1 {
				t.Errorf("after good files reload_errors_total{%s} = %v, want still 1", tc.file, got)
			}
		})
	}
}

// At start nothing is in service yet: files that do not load are an
// error that names the file.
func TestStartErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	a, b := ca.Issue(t, "a"), ca.Issue(t, "b")
	vol := tlstest.NewSecretVolume(t, map[string][]byte{"tls.crt": a.CertPEM, "tls.key": b.KeyPEM, "ca.crt": []byte("x")})
	set := NewSet(Options{})
	if _, err := set.KeyPair(vol.Path("tls.crt"), vol.Path("tls.key")); err == nil {
		t.Error("a key pair that does not match loaded")
	}
	if _, err := set.KeyPair(vol.Path("nope.crt"), vol.Path("tls.key")); err == nil || !strings.Contains(err.Error(), "nope.crt") {
		t.Errorf("a missing certificate: %v, want an error naming it", err)
	}
	if _, err := set.CAPool(vol.Path("ca.crt")); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA file without a certificate: %v, want no PEM certificate", err)
	}
}

// The same files asked for twice (one Secret for a server and a client)
// are one source, served once; the families pass promlint and read as
// documented.
func TestMetrics(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	leaf := ca.Issue(t, "server")
	f := newFixture(t, ca, leaf, Options{})
	again, err := f.set.KeyPair(f.vol.Path("tls.crt"), f.vol.Path("tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	if again.src != f.kp.src {
		t.Error("the same pair loaded twice is two sources")
	}
	// A self-signed certificate that is its own CA: the same file twice.
	if _, err := f.set.CAPool(f.vol.Path("tls.crt")); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`
# HELP test_tls_certificate_expiry_timestamp_seconds NotAfter of the certificate in service (of a CA bundle, its first to expire), by certificate or CA file.
# TYPE test_tls_certificate_expiry_timestamp_seconds gauge
test_tls_certificate_expiry_timestamp_seconds{file="%[1]s"} %[3]d
test_tls_certificate_expiry_timestamp_seconds{file="%[2]s"} %[4]d
# HELP test_tls_reload_errors_total Times the TLS files changed to contents that do not load (the last good ones stay in service), by certificate or CA file.
# TYPE test_tls_reload_errors_total counter
test_tls_reload_errors_total{file="%[1]s"} 0
test_tls_reload_errors_total{file="%[2]s"} 0
# HELP test_tls_reloads_total Times the TLS files changed and the new contents were taken into service, by certificate or CA file.
# TYPE test_tls_reloads_total counter
test_tls_reloads_total{file="%[1]s"} 0
test_tls_reloads_total{file="%[2]s"} 0
`, f.vol.Path("ca.crt"), f.vol.Path("tls.crt"), ca.Cert.NotAfter.Unix(), leaf.Cert.NotAfter.Unix())
	if err := testutil.GatherAndCompare(regOf(t, f.set), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(f.set); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}
