package tlsfiles

import (
	"github.com/prometheus/client_golang/prometheus"
)

type descs struct {
	reloads, errors, expiry *prometheus.Desc
}

func newDescs(namespace string) descs {
	labels := []string{"file"}
	return descs{
		reloads: prometheus.NewDesc(prometheus.BuildFQName(namespace, "tls", "reloads_total"),
			"Times the TLS files changed and the new contents were taken into service, by certificate or CA file.", labels, nil),
		errors: prometheus.NewDesc(prometheus.BuildFQName(namespace, "tls", "reload_errors_total"),
			"Times the TLS files changed to contents that do not load (the last good ones stay in service), by certificate or CA file.", labels, nil),
		expiry: prometheus.NewDesc(prometheus.BuildFQName(namespace, "tls", "certificate_expiry_timestamp_seconds"),
			"NotAfter of the certificate in service (of a CA bundle, its first to expire), by certificate or CA file.", labels, nil),
	}
}

// Describe sends the three families' descriptions.
func (s *Set) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.desc.reloads
	ch <- s.desc.errors
	ch <- s.desc.expiry
}

// Collect reads the files again if the check interval has passed, so
// that the expiry gauge tells what is on disk even when no handshake
// comes (long-lived connections), and sends each file's series. A file
// used as two sources (a self-signed certificate that is its own CA) is
// sent once.
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	sources := append([]*source(nil), s.sources...)
	s.mu.Unlock()
	seen := map[string]bool{}
	for _, src := range sources {
		file := src.paths[0]
		if seen[file] {
			continue
		}
		seen[file] = true
		src.mu.Lock()
		src.checkLocked()
		reloads, errors, notAfter := src.reloads, src.errors, src.notAfter
		src.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(s.desc.reloads, prometheus.CounterValue, float64(reloads), file)
		ch <- prometheus.MustNewConstMetric(s.desc.errors, prometheus.CounterValue, float64(errors), file)
		ch <- prometheus.MustNewConstMetric(s.desc.expiry, prometheus.GaugeValue, float64(notAfter.Unix()), file)
	}
}

var _ prometheus.Collector = (*Set)(nil)
