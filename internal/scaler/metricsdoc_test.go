package scaler

import (
	"log/slog"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/fleet/agents"
	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// Every metric the scaler serves is documented in docs/metrics.md, and
// every documented scaler metric exists; the names pass promlint.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(gpu_scaler_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	// Gather the real collector, on a pedantic registry, and lint it.
	store := fleet.NewStore(fleet.Options{})
	pool, err := agents.New(store, agents.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ca := tlstest.NewCA(t, "ca")
	vol := tlstest.NewSecretVolume(t, tlstest.Secret(ca, ca.Issue(t, "scaler")))
	_, _, files, err := tlsCredentials(&Config{GRPCTLSCert: vol.Path("tls.crt"), GRPCTLSKey: vol.Path("tls.key")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(store, pool, fleet.NewQueryCache(0, 1, nil)), files,
		prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "get_metrics_duration_seconds", Help: "h"}),
		prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "agent_subscription_answer_duration_seconds", Help: "h"}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
	served := map[string]bool{}
	for _, mf := range mfs {
		served[mf.GetName()] = true
	}
	if len(served) != len(collectorDescs)+5 {
		t.Errorf("gathered %d families, want %d", len(served), len(collectorDescs)+5)
	}
	for m := range served {
		if !documented[m] {
			t.Errorf("%s is served but not in docs/metrics.md", m)
		}
	}
	for m := range documented {
		if !served[m] {
			t.Errorf("docs/metrics.md documents %s, which the scaler does not serve", m)
		}
	}
}
