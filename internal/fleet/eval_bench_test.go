package fleet

import (
	"fmt"
	"testing"
	"time"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// benchStore is 1,000 nodes of 8 GPUs, one inference pod each, with 5 s of
// 4 Hz history (1.5 hardware samples per engine per snapshot).
func benchStore(b *testing.B) *Store {
	s := NewStore(Options{StaleAfter: time.Hour, MaxWindow: time.Minute})
	s.Retain(&Query{Metric: EncUtil, Window: 5 * time.Second}) // BenchmarkFanIn's windowed trigger
	for tick := range 20 {
		at := epoch.Add(time.Duration(tick) * 250 * time.Millisecond)
		for n := range 1000 {
			devs := make([]*telemetryv1.Device, 8)
			for g := range devs {
				d := dev(fmt.Sprintf("GPU-%d-%d", n, g), float64((n+g+tick)%100), fmt.Sprintf("default/inference-%04d-%d", n, g))
				for e := telemetryv1.Engine_ENGINE_GPU; e <= telemetryv1.Engine_ENGINE_DECODER; e++ {
					es := &telemetryv1.EngineSamples{Engine: e}
					for k := range 1 + tick%2 {
						es.Samples = append(es.Samples, &telemetryv1.Sample{TimeUnixMicro: at.Add(-time.Duration(k) * 166 * time.Millisecond).UnixMicro(), Value: float64(g * 10)})
					}
					d.Samples = append(d.Samples, es)
				}
				devs[g] = d
			}
			if err := s.Ingest(snap(fmt.Sprintf("node-%04d", n), uint64(tick+1), at, devs...)); err != nil {
				b.Fatal(err)
			}
		}
	}
	return s
}

// BenchmarkEvaluate is GetMetrics' work without gRPC: 8,000 matching pods.
func BenchmarkEvaluate(b *testing.B) {
	s := benchStore(b)
	for _, kv := range [][]string{
		{"aggregation", "avg"},
		{"aggregation", "p95"},
		{"metric", "enc_util", "aggregation", "max", "window", "5s"},
		{"podPattern", "inference-0042-.*"},
	} {
		q := mustQuery(b, append([]string{"metric", "gpu_util", "podPattern", "inference-.*", "target", "70"}, kv...)...)
		b.Run(q.MetricName(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Evaluate(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchQueries are BenchmarkFanIn's triggers, and one matching one node.
func benchQueries(b *testing.B) []*Query {
	var qs []*Query
	for _, kv := range [][]string{
		{"aggregation", "avg"},
		{"aggregation", "p95"},
		{"metric", "enc_util", "aggregation", "max", "window", "5s"},
		{"podPattern", "inference-0042-.*"},
	} {
		qs = append(qs, mustQuery(b, append([]string{"metric", "gpu_util", "podPattern", "inference-.*", "target", "70"}, kv...)...))
	}
	return qs
}

// BenchmarkAnswer is GetMetrics' work from a maintained aggregate, while
// the store is not being written: compare with BenchmarkEvaluate.
func BenchmarkAnswer(b *testing.B) {
	s := benchStore(b)
	for _, q := range benchQueries(b) {
		if _, err := s.Answer(q); err != nil { // made on first poll
			b.Fatal(err)
		}
		b.Run(q.MetricName(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Answer(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIngestPolled is BenchmarkIngest with BenchmarkFanIn's three
// polled triggers kept answered as well: the ingest's share of their cost.
func BenchmarkIngestPolled(b *testing.B) {
	s := benchStore(b)
	_, _, cancel := s.Watch(mustQuery(b, "metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "activationTarget", "50"))
	defer cancel()
	for _, q := range benchQueries(b)[:3] {
		if _, err := s.Answer(q); err != nil {
			b.Fatal(err)
		}
	}
	devs := make([]*telemetryv1.Device, 8)
	for g := range devs {
		devs[g] = dev(fmt.Sprintf("GPU-7-%d", g), 50, fmt.Sprintf("default/inference-0007-%d", g))
	}
	b.ReportAllocs()
	seq := uint64(100)
	for b.Loop() {
		seq++
		if err := s.Ingest(snap("node-0007", seq, epoch.Add(time.Duration(seq)*250*time.Millisecond), devs...)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIngest is one 8-GPU snapshot into a 1,000-node store with one
// StreamIsActive watcher matching every pod.
func BenchmarkIngest(b *testing.B) {
	s := benchStore(b)
	_, _, cancel := s.Watch(mustQuery(b, "metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "activationTarget", "50"))
	defer cancel()
	devs := make([]*telemetryv1.Device, 8)
	for g := range devs {
		devs[g] = dev(fmt.Sprintf("GPU-7-%d", g), 50, fmt.Sprintf("default/inference-0007-%d", g))
	}
	b.ReportAllocs()
	seq := uint64(100)
	for b.Loop() {
		seq++
		if err := s.Ingest(snap("node-0007", seq, epoch.Add(time.Duration(seq)*250*time.Millisecond), devs...)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIngestShares is BenchmarkIngest where every GPU is time-shared
// by two pods and the agent sends each one's own share (GPU, memory,
// encoder and decoder utilization, framebuffer, encoder figures), kept
// with the window's history: the cost of per-pod shares on ingest.
func BenchmarkIngestShares(b *testing.B) {
	s := benchStore(b)
	_, _, cancel := s.Watch(mustQuery(b, "metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "activationTarget", "50"))
	defer cancel()
	devs := make([]*telemetryv1.Device, 8)
	for g := range devs {
		devs[g] = dev(fmt.Sprintf("GPU-7-%d", g), 50)
		used, total := uint64(4<<30), uint64(16<<30)
		devs[g].FbUsedBytes, devs[g].FbTotalBytes = &used, &total
		for k := range 2 {
			u, fb, n, fps, lat := float64(20+10*k), uint64(2<<30), uint32(3), 30.0, 0.004
			devs[g].Pods = append(devs[g].Pods, &telemetryv1.Pod{Namespace: "default", Name: fmt.Sprintf("inference-0007-%d-%d", g, k), Container: "c",
				GpuUtil: &u, MemCopyUtil: &u, EncUtil: &u, DecUtil: &u, FbUsedBytes: &fb,
				EncoderSessions: &n, EncoderFps: &fps, EncoderLatencySeconds: &lat, EncoderLatencyMaxSeconds: &lat})
		}
	}
	b.ReportAllocs()
	seq := uint64(100)
	for b.Loop() {
		seq++
		if err := s.Ingest(snap("node-0007", seq, epoch.Add(time.Duration(seq)*250*time.Millisecond), devs...)); err != nil {
			b.Fatal(err)
		}
	}
}
