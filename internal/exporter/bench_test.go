package exporter

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// benchNode is a node of 8 GPUs, every field supported, time-sliced
// between 64 pods (8 per GPU): the bench harness's node.
func benchNode(b *testing.B) *Collector {
	b.Helper()
	var devs []telemetry.Device
	var gpus []podresources.GPU
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for i := range 8 {
		uuid := fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i)
		devs = append(devs, telemetry.Device{Index: i, UUID: uuid, Name: "Tesla T4", PCIBusID: fmt.Sprintf("00000000:%02X:00.0", i), Minor: i})
		gpus = append(gpus, podresources.GPU{UUID: uuid, Minor: i})
	}
	for p := range 64 {
		resp.PodResources = append(resp.PodResources, pod("media", fmt.Sprintf("sfu-%d", p), "sfu", "nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", devs[p%8].UUID, p/8)))
	}
	states := make([]telemetry.DeviceState, 8)
	for i := range states {
		for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
			states[i].Set(f, float64(i+int(f)))
		}
		states[i].Supported = telemetry.AllFields
		for e := range telemetry.NumEngines {
			states[i].Windows[e] = telemetry.Window{Count: 90, Max: 90, Mean: 45}
		}
	}
	src := snapshots{&telemetry.Snapshot{Time: time.Now(), Devices: devs, States: states, Window: 15 * time.Second}}
	p := pods{a: podresources.BuildAssignments(resp, podresources.NewResolver(gpus)), st: podresources.Status{Up: true}}
	return NewCollector(attribution.NewAttributor(src, p, nil), Options{Hostname: "node", Interval: 100 * time.Millisecond})
}

// BenchmarkCollect8GPUs64Pods is the Collector through a registry and
// expfmt, the way a library user would serve it (the agent's handler
// writes the device families itself, see BenchmarkScrapeHTTP). It
// allocates per series: the registry turns every metric into a dto.Metric
// and hashes it; the label pairs are built once per pod, not per series.
func BenchmarkCollect8GPUs64Pods(b *testing.B) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(benchNode(b).Latest())
	scrape := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
		n := 0
		for _, mf := range mfs {
			n += len(mf.Metric)
			if err := enc.Encode(mf); err != nil {
				b.Fatal(err)
			}
		}
		return n
	}
	b.ReportMetric(float64(scrape()), "series")
	b.ReportAllocs()
	for b.Loop() {
		scrape()
	}
}

// BenchmarkScrapeHTTP8GPUs64Pods is a whole /metrics request on the bench
// node, as Prometheus makes it (OpenMetrics, gzip) and as curl does (text,
// identity). The allocations left are the registry's, for the agent's own
// metrics, and the response recorder's.
func BenchmarkScrapeHTTP8GPUs64Pods(b *testing.B) {
	h := newTestHandler(b, benchNode(b), time.Second)
	for _, tt := range []struct{ name, accept, encoding string }{
		{"text", "text/plain;version=0.0.4", "identity"},
		{"openmetrics-gzip", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "gzip"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			var size int
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
				req.Header.Set("Accept", tt.accept)
				req.Header.Set("Accept-Encoding", tt.encoding)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "bytes/scrape")
		})
	}
}
