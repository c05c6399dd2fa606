package scaler

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
)

// BenchmarkPushLatency times a load step from the fake agent's publish to
// (a) GetMetrics returning the new value and (b) the StreamIsActive
// transition, at KEDA's client, through the real scaler (flags, Run,
// gRPC on loopback), while two more agents publish at 4 Hz. PUSH_STEPS
// (1,000) steps:
//
//	go test -run '^$' -bench PushLatency -benchtime 1x ./internal/scaler/
func BenchmarkPushLatency(b *testing.B) {
	steps := 1000
	if n, err := strconv.Atoi(os.Getenv("PUSH_STEPS")); err == nil && n > 0 {
		steps = n
	}
	for b.Loop() {
		pushLatency(b, steps)
	}
}

func pushLatency(b *testing.B, steps int) {
	var fleet []*scalertest.Agent
	var addrs string
	for _, node := range []string{"a", "b", "c"} {
		a, err := scalertest.StartAgent(node, "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer a.Stop()
		fleet = append(fleet, a)
		if addrs != "" {
			addrs += ","
		}
		addrs += a.Addr()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, a := range fleet[1:] {
		go func() {
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for {
				a.Publish(scalertest.Device("GPU-"+a.Node, 20, "media/webrtc-"+a.Node))
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	h := startScaler(b, nil, "--agents="+addrs, "--log.level=warn")
	r := ref("metric", "enc_util", "namespace", "media", "podPattern", "webrtc-.*", "target", "80", "activationTarget", "50", "aggregation", "max")
	step := func(_ context.Context, high bool) (time.Time, error) {
		v := 30.0
		if high {
			v = 90
		}
		return fleet[0].Publish(scalertest.Device("GPU-a", v, "media/webrtc-a")), nil
	}
	lat, err := scalertest.MeasurePushLatency(ctx, h.client, r, 30, 90, steps, step)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(scalertest.Percentile(lat.GetMetrics, 50).Microseconds())/1000, "getmetrics-p50-ms")
	b.ReportMetric(float64(scalertest.Percentile(lat.GetMetrics, 99).Microseconds())/1000, "getmetrics-p99-ms")
	b.ReportMetric(float64(scalertest.Percentile(lat.Stream, 50).Microseconds())/1000, "stream-p50-ms")
	b.ReportMetric(float64(scalertest.Percentile(lat.Stream, 99).Microseconds())/1000, "stream-p99-ms")
	b.Log(lat)
}
