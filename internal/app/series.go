package app

import (
	"time"
)

// Type is a family's metric type, as the app's exposition declares it.
type Type uint8

// The types kept. Summaries and native-only histograms are dropped (a
// summary's quantiles cannot be aggregated across pods).
const (
	Untyped Type = iota
	Counter
	Gauge
	Histogram
)

func (t Type) String() string {
	switch t {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	case Histogram:
		return "histogram"
	}
	return "untyped"
}

// Label is one label pair of a series.
type Label struct{ Name, Value string }

// Series is one series of a family: its labels (sorted by name) and its
// value, or its buckets for a histogram.
type Series struct {
	Labels []Label
	Value  float64     // counter, gauge, untyped
	Hist   *HistValues // histogram
}

// HistValues is a classic histogram: finite upper bounds, ascending, and
// the cumulative count of each; the +Inf bucket is Count.
type HistValues struct {
	Bounds []float64
	Counts []float64
	Sum    float64
	Count  float64
}

// Family is one metric family kept from a scrape.
type Family struct {
	Name   string
	Type   Type
	Series []Series
}

// Scrape is a target's latest result: the families kept from its latest
// good scrape and when that scrape started (its samples' timestamp, as
// Prometheus stamps a scrape), and the error of the latest scrape if it
// failed.
type Scrape struct {
	Namespace, Name string // the pod
	Time            time.Time
	Families        []Family // sorted by name
	Series          int      // series kept, over every family
	Err             error    // the latest scrape's failure; nil when it succeeded
}

// Family returns the kept family of this name, or nil.
func (s *Scrape) Family(name string) *Family {
	for i := range s.Families {
		if s.Families[i].Name == name {
			return &s.Families[i]
		}
	}
	return nil
}

// Set is every current target's latest scrape, sorted by namespace and
// name, published as a whole: readers never see half an update. Seq
// grows with every publication.
type Set struct {
	Seq     uint64
	Scrapes []*Scrape
}
