package exporter

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// labelSet is the label pairs of one target, sorted by name (the order the
// registry wants and the text format prints), shared by every metric
// emitted for the target and never modified once built. Const metrics
// would build and sort a fresh set for each series: on a node of 8 GPUs
// shared by 64 pods that was most of a scrape's cost.
type labelSet []*dto.LabelPair

func newLabelSet(names, values []string) labelSet {
	ls := make(labelSet, len(names))
	pairs := make([]dto.LabelPair, len(names)) // one allocation for all of them
	for i := range names {
		pairs[i].Name, pairs[i].Value = &names[i], &values[i]
		ls[i] = &pairs[i]
	}
	slices.SortFunc(ls, func(a, b *dto.LabelPair) int { return strings.Compare(*a.Name, *b.Name) })
	return ls
}

// with returns a copy of ls with one more label pair. The pair is shared,
// not copied (the static pairs below are shared by every scrape), so it
// must never be modified.
func (ls labelSet) with(p *dto.LabelPair) labelSet {
	i, _ := slices.BinarySearchFunc(ls, *p.Name, func(q *dto.LabelPair, n string) int { return strings.Compare(*q.Name, n) })
	out := make(labelSet, 0, len(ls)+1)
	out = append(out, ls[:i]...)
	out = append(out, p)
	return append(out, ls[i:]...)
}

// staticPairs returns a label pair name=value(i) for each i < n, built
// once: the engine and field labels, whose values are a fixed set.
func staticPairs[T ~uint8](name string, n T, value func(T) string) []*dto.LabelPair {
	out := make([]*dto.LabelPair, n)
	for i := range n {
		out[i] = &dto.LabelPair{Name: &name, Value: new(value(i))}
	}
	return out
}

var (
	enginePairs = staticPairs("engine", telemetry.NumEngines, telemetry.Engine.String)
	fieldPairs  = staticPairs("field", telemetry.NumFields, telemetry.Field.String)
	codecPairs  = staticPairs("codec", telemetry.NumCodecs, telemetry.Codec.String)
	// statPairs are the stat label of gpu_agent_pod_encoder_latency_seconds.
	statMean, statMax = &dto.LabelPair{Name: new("stat"), Value: new("mean")}, &dto.LabelPair{Name: new("stat"), Value: new("max")}
)

// sample is a prometheus.Metric over a shared labelSet. It carries its own
// dto value, so writing it allocates nothing.
type sample struct {
	desc    *prometheus.Desc
	labels  labelSet
	typ     prometheus.ValueType
	value   float64
	gauge   dto.Gauge
	counter dto.Counter
	untyped dto.Untyped
}

func (s *sample) Desc() *prometheus.Desc { return s.desc }

func (s *sample) Write(out *dto.Metric) error {
	out.Label = s.labels
	switch s.typ {
	case prometheus.CounterValue:
		s.counter.Value = &s.value
		out.Counter = &s.counter
	case prometheus.GaugeValue:
		s.gauge.Value = &s.value
		out.Gauge = &s.gauge
	default:
		s.untyped.Value = &s.value
		out.Untyped = &s.untyped
	}
	return nil
}

// emitter sends samples, allocated in slabs: one allocation per slabSize
// series rather than one per series. A slab is never written again once
// its samples are sent; a full one is left to the garbage collector.
type emitter struct {
	ch   chan<- prometheus.Metric
	fn   func(prometheus.Metric) // instead of ch, where set
	slab []sample
}

// put hands one metric on.
func (e *emitter) put(m prometheus.Metric) {
	if e.fn != nil {
		e.fn(m)
		return
	}
	e.ch <- m
}

const slabSize = 64

// sink takes the samples of the device families: the emitter sends them
// to a registry, the text writer writes them out.
type sink interface {
	emit(f *family, t target, v float64)
}

// emit sends a device metric of family f for target t.
func (e *emitter) emit(f *family, t target, v float64) {
	e.send(f.desc(t), f.typ, t.labels, v)
}

// send sends one sample; labels must match desc's label names.
func (e *emitter) send(desc *prometheus.Desc, typ prometheus.ValueType, labels labelSet, v float64) {
	if len(e.slab) == cap(e.slab) {
		e.slab = make([]sample, 0, slabSize)
	}
	e.slab = append(e.slab, sample{desc: desc, labels: labels, typ: typ, value: v})
	e.put(&e.slab[len(e.slab)-1])
}
