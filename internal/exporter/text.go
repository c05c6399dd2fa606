package exporter

import (
	"bytes"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/attribution"
)

// The device families are most of a scrape: one series per family, GPU
// and pod, 2,000 and more on a node of 8 GPUs shared by 64 pods. Going
// through the registry costs each series a dto.Metric, a hash, a sort and
// an encoder pass; WriteDevices writes the same lines straight from the
// snapshot instead, with each pod's label text built once per scrape. A
// test holds its output line for line to what the registry and expfmt
// make of Collect.

// textSink collects the device families' sample lines, family by family
// (the formats want a family's series together, Collect goes GPU by GPU).
type textSink struct {
	om     bool
	lines  [][]byte                   // by family.idx
	labels map[**dto.LabelPair][]byte // a labelSet's text, keyed by its backing array
	buf    []byte
}

// One is kept, as one gzip writer is (see gzipWriters): concurrent
// scrapes of a view share one rendering.
var textSinks = newFreeList(1, func() *textSink { return &textSink{labels: map[**dto.LabelPair][]byte{}} })

// freeList keeps up to cap(items) idle items for reuse. Unlike a
// sync.Pool, which the garbage collector empties, it keeps them across
// collections: a scrape's buffers (half a megabyte of text, a compressor)
// would otherwise be reallocated every few scrapes, which shows in both
// latency and RSS. Beyond the bound (many concurrent scrapes), items are
// made and dropped.
type freeList[T any] struct {
	items   chan T
	newItem func() T
}

func newFreeList[T any](n int, newItem func() T) *freeList[T] {
	return &freeList[T]{items: make(chan T, n), newItem: newItem}
}

func (l *freeList[T]) get() T {
	select {
	case it := <-l.items:
		return it
	default:
		return l.newItem()
	}
}

func (l *freeList[T]) put(it T) {
	select {
	case l.items <- it:
	default:
	}
}

func (s *textSink) emit(f *family, t target, v float64) {
	b := append(s.lines[f.idx], f.name...)
	b = append(b, s.labelText(t.labels)...)
	b = append(b, ' ')
	b = appendValue(b, v, s.om)
	s.lines[f.idx] = append(b, '\n')
}

// labelText renders ls as {name="value",...} once per scrape.
func (s *textSink) labelText(ls labelSet) []byte {
	if len(ls) == 0 {
		return nil
	}
	if txt, ok := s.labels[&ls[0]]; ok {
		return txt
	}
	start := len(s.buf)
	b := append(s.buf, '{')
	for i, p := range ls {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p.GetName()...)
		b = append(b, '=', '"')
		b = appendEscaped(b, p.GetValue(), true)
		b = append(b, '"')
	}
	b = append(b, '}')
	s.buf = b
	txt := b[start:len(b):len(b)]
	s.labels[&ls[0]] = txt
	return txt
}

func (s *textSink) reset() {
	for i := range s.lines {
		s.lines[i] = s.lines[i][:0]
	}
	clear(s.labels)
	s.buf = s.buf[:0]
}

// WriteDevices writes the device families of view to w, in the
// Prometheus text format or, if openMetrics, in OpenMetrics (without the
// closing "# EOF"): the same series as Latest's device families, for a
// scrape that gathered the agent's own families of the same view.
func (c *Collector) WriteDevices(w io.Writer, view *attribution.View, openMetrics bool) error {
	if view == nil {
		return nil
	}
	s := textSinks.get()
	defer func() { s.reset(); textSinks.put(s) }()
	s.om = openMetrics
	if len(s.lines) < len(c.families) {
		s.lines = append(s.lines, make([][]byte, len(c.families)-len(s.lines))...)
	}
	c.collectTargets(s, view)

	var head []byte
	for _, f := range c.families {
		if len(s.lines[f.idx]) == 0 {
			continue
		}
		head = appendHeader(head[:0], f, openMetrics)
		if _, err := w.Write(head); err != nil {
			return err
		}
		if _, err := w.Write(s.lines[f.idx]); err != nil {
			return err
		}
	}
	return nil
}

// appendHeader writes a family's HELP and TYPE lines as expfmt does. The
// device families are gauges or counters (dcgm-exporter's, whose names
// lack _total). Under OpenMetrics expfmt types such a counter "unknown"
// and keeps its name, since OpenMetrics wants counters named _total; so
// does this, and TestWriteDevicesMatchesCollect holds it to that. No
// device family ends in _total (NewCollector checks).
func appendHeader(b []byte, f *family, om bool) []byte {
	b = append(b, "# HELP "...)
	b = append(b, f.name...)
	b = append(b, ' ')
	b = appendEscaped(b, f.help, om)
	b = append(b, "\n# TYPE "...)
	b = append(b, f.name...)
	switch {
	case f.typ == prometheus.GaugeValue:
		b = append(b, " gauge\n"...)
	case f.typ == prometheus.CounterValue && !om:
		b = append(b, " counter\n"...)
	case om:
		b = append(b, " unknown\n"...)
	default:
		b = append(b, " untyped\n"...)
	}
	return b
}

// appendEscaped escapes a label value (quote true) or a HELP text: a
// backslash and a newline always, a double quote in label values and in
// OpenMetrics HELP.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !strings.ContainsAny(s, "\\\n\"") {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendValue formats a sample value as expfmt does: the text format's
// shortest representation, or OpenMetrics', which marks integers with ".0".
func appendValue(b []byte, v float64, om bool) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case v == 0: // and -0, which AppendFloat would print as such
		v = 0
	}
	if v == math.Trunc(v) && v > -1e6 && v < 1e6 {
		// Most values are whole and small (clocks, temperatures, MiB,
		// counts): AppendFloat's shortest 'g' writes them as plain
		// digits, as AppendInt does, only slower.
		b = strconv.AppendInt(b, int64(v), 10)
		if om {
			b = append(b, ".0"...)
		}
		return b
	}
	start := len(b)
	b = strconv.AppendFloat(b, v, 'g', -1, 64)
	if om && !bytes.ContainsAny(b[start:], "e.") {
		b = append(b, ".0"...)
	}
	return b
}
