package exporter

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

func names(ls labelSet) []string {
	var out []string
	for _, p := range ls {
		out = append(out, p.GetName()+"="+p.GetValue())
	}
	return out
}

func TestLabelSetSortedAndShared(t *testing.T) {
	base := newLabelSet([]string{"gpu", "UUID", "pod"}, []string{"0", "GPU-x", "p"})
	want := []string{"UUID=GPU-x", "gpu=0", "pod=p"} // byte order, as the text format prints
	if got := names(base); !slices.Equal(got, want) {
		t.Fatalf("newLabelSet = %v, want %v", got, want)
	}
	withEngine := base.with(enginePairs[telemetry.EngineEncoder])
	if got, want := names(withEngine), []string{"UUID=GPU-x", "engine=encoder", "gpu=0", "pod=p"}; !slices.Equal(got, want) {
		t.Errorf("with(engine) = %v, want %v", got, want)
	}
	last := base.with(&dto.LabelPair{Name: new("zone"), Value: new("z")})
	if got := names(last); got[len(got)-1] != "zone=z" {
		t.Errorf("with(zone) = %v, want it last", got)
	}
	if got := names(base); !slices.Equal(got, want) {
		t.Errorf("with modified its receiver: %v", got)
	}
}

func TestSampleWrite(t *testing.T) {
	ls := newLabelSet([]string{"gpu"}, []string{"3"})
	desc := prometheus.NewDesc("m", "h", []string{"gpu"}, nil)
	for _, tt := range []struct {
		typ  prometheus.ValueType
		pick func(*dto.Metric) float64
	}{
		{prometheus.GaugeValue, func(m *dto.Metric) float64 { return m.GetGauge().GetValue() }},
		{prometheus.CounterValue, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() }},
		{prometheus.UntypedValue, func(m *dto.Metric) float64 { return m.GetUntyped().GetValue() }},
	} {
		s := &sample{desc: desc, labels: ls, typ: tt.typ, value: 42.5}
		var m dto.Metric
		if err := s.Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := tt.pick(&m); got != 42.5 {
			t.Errorf("type %v: value %v, want 42.5", tt.typ, got)
		}
		if len(m.Label) != 1 || m.Label[0].GetValue() != "3" {
			t.Errorf("type %v: labels %v", tt.typ, m.Label)
		}
	}
}
