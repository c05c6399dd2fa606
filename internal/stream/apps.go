package stream

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/app"
)

// AppSource is where the node's app scrapes come from: internal/app's
// Manager.
type AppSource interface {
	Latest() *app.Set
	Wait(ctx context.Context, seq uint64) (*app.Set, error)
}

// runApps wakes the subscribers that asked for app families on every new
// app set. The wake-up is a one-slot signal apart from the snapshot
// buffer, so app scrapes never push a device snapshot out of it.
func (s *Server) runApps(ctx context.Context) {
	var seq uint64
	for {
		set, err := s.opts.Apps.Wait(ctx, seq)
		if err != nil {
			return
		}
		seq = set.Seq
		s.mu.Lock()
		for sub := range s.subs {
			if sub.apps {
				select {
				case sub.appWake <- struct{}{}:
				default: // already signalled
				}
			}
		}
		s.mu.Unlock()
	}
}

// appCache is one subscriber's app messages of the latest set it read:
// messages are immutable once built, so a set that has not changed is
// not converted again.
type appCache struct {
	seq  uint64
	msgs []*telemetryv1.AppScrape
}

// apps returns the subscriber's app messages of the latest set, and
// whether the set is newer than the one it last got.
func (s *Server) apps(f *filter, c *appCache) ([]*telemetryv1.AppScrape, bool) {
	if f.Families == nil || s.opts.Apps == nil {
		return nil, false
	}
	set := s.opts.Apps.Latest()
	if set == nil || set.Seq == c.seq && c.seq != 0 {
		return c.msgs, false
	}
	c.seq = set.Seq
	c.msgs = c.msgs[:0:0]
	for _, sc := range set.Scrapes {
		if !f.MatchPod(sc.Namespace, sc.Name) {
			continue
		}
		c.msgs = append(c.msgs, appScrape(sc, f.Families))
	}
	return c.msgs, true
}

var appTypes = map[app.Type]telemetryv1.AppMetricType{
	app.Counter:   telemetryv1.AppMetricType_APP_METRIC_TYPE_COUNTER,
	app.Gauge:     telemetryv1.AppMetricType_APP_METRIC_TYPE_GAUGE,
	app.Histogram: telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM,
	app.Untyped:   telemetryv1.AppMetricType_APP_METRIC_TYPE_UNTYPED,
}

func appScrape(sc *app.Scrape, families map[string]bool) *telemetryv1.AppScrape {
	m := &telemetryv1.AppScrape{Namespace: sc.Namespace, Pod: sc.Name}
	if !sc.Time.IsZero() {
		m.ScrapeTime = timestamppb.New(sc.Time)
	}
	if sc.Err != nil {
		m.Error = sc.Err.Error()
	}
	for i := range sc.Families {
		f := &sc.Families[i]
		if !families[f.Name] {
			continue
		}
		fm := &telemetryv1.AppFamily{Name: f.Name, Type: appTypes[f.Type], Series: make([]*telemetryv1.AppSeries, len(f.Series))}
		for j := range f.Series {
			fm.Series[j] = appSeries(&f.Series[j])
		}
		m.Families = append(m.Families, fm)
	}
	return m
}

func appSeries(s *app.Series) *telemetryv1.AppSeries {
	m := &telemetryv1.AppSeries{Value: s.Value}
	if len(s.Labels) > 0 {
		m.Labels = make([]*telemetryv1.Label, len(s.Labels))
		for i, l := range s.Labels {
			m.Labels[i] = &telemetryv1.Label{Name: l.Name, Value: l.Value}
		}
	}
	if h := s.Hist; h != nil {
		m.Histogram = &telemetryv1.AppHistogram{UpperBounds: h.Bounds, CumulativeCounts: h.Counts, Sum: h.Sum, Count: h.Count}
	}
	return m
}

// String is for logs.
func (c *appCache) String() string { return fmt.Sprintf("apps@%d", c.seq) }
