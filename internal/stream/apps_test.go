package stream

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/app"
)

func sfuScrape(name string, at time.Time, jitterCount float64) *app.Scrape {
	return &app.Scrape{Namespace: "media", Name: name, Time: at, Series: 2, Families: []app.Family{
		{Name: "livekit_jitter_us", Type: app.Histogram, Series: []app.Series{{
			Labels: []app.Label{{Name: "kind", Value: "video"}},
			Hist:   &app.HistValues{Bounds: []float64{100, 1000}, Counts: []float64{1, jitterCount - 1}, Sum: 5000, Count: jitterCount},
		}}},
		{Name: "livekit_room_total", Type: app.Gauge, Series: []app.Series{{Value: 3}}},
	}}
}

// A subscriber that names app families gets them on every message (the
// whole set), and a new scrape between two ticks at once, as an
// apps_only message; one that names none gets no app data at all.
func TestAppFamilies(t *testing.T) {
	apps := app.NewBoard()
	h := newHarness(t, Options{Apps: apps})
	apps.Publish([]*app.Scrape{sfuScrape("sfu-0", epoch, 10), sfuScrape("other-0", epoch, 4)})
	h.store.Publish(snapshot(1))

	plain := h.watch(t, &telemetryv1.WatchRequest{IncludeUnattributed: true})
	w := h.watch(t, &telemetryv1.WatchRequest{IncludeUnattributed: true, PodPattern: "sfu-.*", AppFamilies: []string{"livekit_jitter_us"}})

	m := recv(t, w)
	if m.GetAppsOnly() || len(m.GetApps()) != 1 {
		t.Fatalf("first message: apps_only %v, %d apps; want the tick with sfu-0", m.GetAppsOnly(), len(m.GetApps()))
	}
	a := m.GetApps()[0]
	if a.GetPod() != "sfu-0" || !a.GetScrapeTime().AsTime().Equal(epoch) || len(a.GetFamilies()) != 1 {
		t.Fatalf("app %+v", a)
	}
	f := a.GetFamilies()[0]
	hist := f.GetSeries()[0].GetHistogram()
	if f.GetName() != "livekit_jitter_us" || f.GetType() != telemetryv1.AppMetricType_APP_METRIC_TYPE_HISTOGRAM ||
		f.GetSeries()[0].GetLabels()[0].GetValue() != "video" || hist.GetCount() != 10 || hist.GetCumulativeCounts()[1] != 9 || hist.GetUpperBounds()[0] != 100 {
		t.Fatalf("family %+v", f)
	}
	if pm := recv(t, plain); len(pm.GetApps()) != 0 {
		t.Fatalf("a request without app_families got apps: %+v", pm.GetApps())
	}

	// A scrape lands between ticks: an apps_only message, at once.
	later := epoch.Add(250 * time.Millisecond)
	apps.Publish([]*app.Scrape{sfuScrape("sfu-0", later, 20)})
	m = recv(t, w)
	if !m.GetAppsOnly() || len(m.GetDevices()) != 0 || m.GetSequence() != 1 || len(m.GetApps()) != 1 ||
		!m.GetApps()[0].GetScrapeTime().AsTime().Equal(later) || m.GetApps()[0].GetFamilies()[0].GetSeries()[0].GetHistogram().GetCount() != 20 {
		t.Fatalf("apps_only message %+v", m)
	}
	// The next tick carries the set again; the pod gone leaves it.
	apps.Publish([]*app.Scrape{sfuScrape("other-0", later, 4)})
	m = recv(t, w)
	if !m.GetAppsOnly() || len(m.GetApps()) != 0 {
		t.Fatalf("after sfu-0 left: %+v", m)
	}
	h.store.Publish(snapshot(2))
	m = recv(t, w)
	if m.GetAppsOnly() || m.GetSequence() != 2 || len(m.GetApps()) != 0 {
		t.Fatalf("tick 2: %+v", m)
	}
	// The plain subscriber got tick 2 and nothing in between.
	if pm := recv(t, plain); pm.GetSequence() != 2 || pm.GetAppsOnly() {
		t.Fatalf("plain subscriber: %+v", pm)
	}
}

// App scrapes never push a device snapshot out of a subscriber's buffer.
func TestAppWakeupsKeepTheSnapshots(t *testing.T) {
	apps := app.NewBoard()
	h := newHarness(t, Options{Apps: apps})
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{IncludeUnattributed: true, AppFamilies: []string{"livekit_jitter_us"}})
	recv(t, w)
	for i := range 50 {
		apps.Publish([]*app.Scrape{sfuScrape("sfu-0", epoch.Add(time.Duration(i)*time.Millisecond), 10)})
	}
	h.store.Publish(snapshot(2))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		m := recv(t, w)
		if m.GetAppsOnly() {
			continue
		}
		if m.GetSequence() != 2 || m.GetSkipped() != 0 {
			t.Fatalf("tick message %d skipped %d", m.GetSequence(), m.GetSkipped())
		}
		return
	}
	t.Fatal(errors.New("tick 2 never came"))
}

// A min_period below the sampling interval is the interval: apps_only
// messages come no closer together than that after the previous message
// (here: none within the test, with a 10 s interval), where a 1 ms period
// taken as is would send one per app scrape.
func TestMinPeriodBelowTheIntervalIsTheInterval(t *testing.T) {
	apps := app.NewBoard()
	h := newHarness(t, Options{Apps: apps, Interval: 10 * time.Second})
	h.store.Publish(snapshot(1))
	w := h.watch(t, &telemetryv1.WatchRequest{IncludeUnattributed: true, MinPeriod: durationpb.New(time.Millisecond), AppFamilies: []string{"livekit_jitter_us"}})
	if m := recv(t, w); m.GetSequence() != 1 {
		t.Fatalf("first message %d", m.GetSequence())
	}
	start := time.Now()
	for i := range 20 {
		apps.Publish([]*app.Scrape{sfuScrape("sfu-0", epoch.Add(time.Duration(i)*time.Millisecond), 10)})
		time.Sleep(5 * time.Millisecond)
	}
	got := make(chan *telemetryv1.NodeSnapshot, 1)
	go func() {
		if m, err := w.Recv(); err == nil {
			got <- m
		}
	}()
	select {
	case m := <-got:
		if time.Since(start) < 10*time.Second {
			t.Errorf("a message (apps_only %v) within the clamped min_period of 10s", m.GetAppsOnly())
		}
	case <-time.After(500 * time.Millisecond):
	}
}
