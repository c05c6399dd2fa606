package scaler

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// hpaTolerance is the HPA controller's default: no change while the usage
// ratio is within 10% of 1.
const hpaTolerance = 0.1

// desiredReplicas is the HPA's formula for an External metric, from the
// Kubernetes documentation and the controller's replica calculator:
//
//	Value:        ratio = value / target;                desired = ceil(current * ratio)
//	AverageValue: ratio = value / (target * current);    desired = ceil(value / target)
//
// with no change while |ratio - 1| <= tolerance.
func desiredReplicas(metricType string, current int, value, target float64) int {
	var ratio float64
	var desired int
	switch metricType {
	case "Value":
		ratio = value / target
		desired = int(math.Ceil(float64(current) * ratio))
	case "AverageValue":
		ratio = value / (target * float64(current))
		desired = int(math.Ceil(value / target))
	default:
		panic(metricType)
	}
	if math.Abs(ratio-1) <= hpaTolerance {
		return current
	}
	return desired
}

// The worked example of docs/stream-and-scaler.md, computed from the
// scaler's own answers: four inference pods at 90, 80, 85 and 65 %
// against a target of 70. With metricType Value the trigger's aggregation
// is avg; with AverageValue (KEDA's default) it must be sum, a total the
// HPA divides by the replicas. Both give 5 replicas; avg under
// AverageValue would give 2, scaling an overloaded deployment in.
func TestHPADesiredReplicas(t *testing.T) {
	a, err := scalertest.StartAgent("n1", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	publish := func(loads ...float64) {
		var devs []*telemetryv1.Device
		for i, l := range loads {
			devs = append(devs, scalertest.Device("GPU-"+strconv.Itoa(i), l, "default/inference-"+strconv.Itoa(i)))
		}
		a.Publish(devs...)
	}
	publish(90, 80, 85, 65)
	h := startScaler(t, nil, "--agents="+a.Addr())
	avg := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "aggregation", "avg")
	sum := ref("metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "aggregation", "sum")
	waitMetric(t, h, avg, 80)

	// What KEDA does: the target from GetMetricSpec, the value from
	// GetMetrics, the float fields since both are above 0.
	answer := func(r *externalscaler.ScaledObjectRef) (value, target float64) {
		t.Helper()
		spec, err := h.client.GetMetricSpec(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		m, err := h.client.GetMetrics(context.Background(), &externalscaler.GetMetricsRequest{ScaledObjectRef: r, MetricName: spec.MetricSpecs[0].MetricName})
		if err != nil {
			t.Fatal(err)
		}
		return m.MetricValues[0].MetricValueFloat, spec.MetricSpecs[0].TargetSizeFloat
	}
	for _, tc := range []struct {
		name       string
		ref        *externalscaler.ScaledObjectRef
		metricType string
		want       int
	}{
		{"Value, avg", avg, "Value", 5},               // ceil(4 * 80/70) = ceil(4.57)
		{"AverageValue, sum", sum, "AverageValue", 5}, // ceil(320/70) = ceil(4.57)
		{"AverageValue, avg: wrong", avg, "AverageValue", 2},
	} {
		v, target := answer(tc.ref)
		if got := desiredReplicas(tc.metricType, 4, v, target); got != tc.want {
			t.Errorf("%s: value %g, target %g: desired %d, want %d", tc.name, v, target, got, tc.want)
		}
	}

	// Within the tolerance: avg 75 against 70 is a ratio of 1.07, no change.
	publish(80, 75, 70, 75)
	waitMetric(t, h, avg, 75)
	for _, tc := range []struct {
		ref        *externalscaler.ScaledObjectRef
		metricType string
	}{{avg, "Value"}, {sum, "AverageValue"}} {
		v, target := answer(tc.ref)
		if got := desiredReplicas(tc.metricType, 4, v, target); got != 4 {
			t.Errorf("%s at %g: desired %d, want 4 (within tolerance)", tc.metricType, v, got)
		}
	}
}

// A quantile is not a total: its trigger is metricType Value, which the
// HPA compares with the target as is. Through the real scaler, a p95 of
// 390 ms against a 200 ms target asks 4 replicas for 8; read as an
// AverageValue (divided by the replicas) the same answer would ask for
// 2, scaling an overloaded service in. The scaler asks the agents for
// the trigger's family (demand-driven app_families).
func TestHPAQuantileIsAValue(t *testing.T) {
	a, err := scalertest.StartAgent("n1", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	h := startScaler(t, nil, "--agents="+a.Addr())
	p95 := ref("metric", "app", "appMetric", "rtc_latency_seconds", "quantile", "0.95", "window", "10s", "scale", "1000",
		"podPattern", "sfu-.*", "target", "200")
	spec, err := h.client.GetMetricSpec(context.Background(), p95)
	if err != nil {
		t.Fatal(err)
	}
	// Every observation in (0.2, 0.4]: the p95 interpolates to
	// 0.2 + 0.95 x 0.2 = 0.39 s, whatever the window's extrapolation.
	var n float64
	publish := func() {
		n += 20
		a.PublishApps(nil, []*telemetryv1.AppScrape{{Namespace: "default", Pod: "sfu-0", ScrapeTime: timestamppb.Now(),
			Families: []*telemetryv1.AppFamily{{Name: "rtc_latency_seconds", Type: telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM,
				Series: []*telemetryv1.AppSeries{{Histogram: &telemetryv1.AppHistogram{
					UpperBounds: []float64{0.1, 0.2, 0.4}, CumulativeCounts: []float64{0, 0, n}, Count: n, Sum: 0.3 * n}}}}}}})
	}
	err = testutil.Poll(t.Context(), 10*time.Second, func() (bool, error) {
		publish()
		m, err := h.client.GetMetrics(t.Context(), &externalscaler.GetMetricsRequest{ScaledObjectRef: p95, MetricName: spec.MetricSpecs[0].MetricName})
		if err != nil {
			return false, err
		}
		v := m.MetricValues[0].MetricValueFloat
		if math.Abs(v-390) > 1e-6 {
			return false, fmt.Errorf("p95 %v ms, want 390", v)
		}
		target := spec.MetricSpecs[0].TargetSizeFloat
		if got := desiredReplicas("Value", 4, v, target); got != 8 {
			t.Errorf("Value: desired %d, want 8 (ceil(4 x 390/200))", got)
		}
		if got := desiredReplicas("AverageValue", 4, v, target); got != 2 {
			t.Errorf("AverageValue: desired %d, want 2: the reading the docs warn against", got)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fams := a.AppFamilies()
	if len(fams) == 0 || !slices.Equal(fams[len(fams)-1], []string{"rtc_latency_seconds"}) {
		t.Fatalf("the scaler's Watch requests asked for %v; want the trigger's family last", fams)
	}
}
