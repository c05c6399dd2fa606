package livekit

import (
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

const (
	// runFor is how long the load runs before the histograms are read:
	// long enough for the window below to hold only steady load.
	runFor = 35 * time.Second
	// window is how far back the spread is counted: five rounds of
	// LiveKit's 5-second stream stats.
	window = 25 * time.Second
	// minSpread is how many buckets each family must use.
	minSpread = 3
	// quantileWindow is the rate window of the logged quantiles.
	quantileWindow = 10 * time.Second
)

// TestImpairedSFUHistograms runs the default impairment and load and
// checks that each of LiveKit's jitter, RTT and loss histograms has
// observations in at least minSpread buckets over the last window, then
// logs each family's buckets and Prometheus's p50 and p95.
func TestImpairedSFUHistograms(t *testing.T) {
	e := Start(t, DefaultOptions())
	ctx := t.Context()
	t.Logf("load: %+v", e.Options.Load)

	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(runFor):
	}
	for _, p := range []*testutil.Proc{e.SFU, e.Publishers, e.Subscribers} {
		if err := p.Alive(); err != nil {
			t.Fatal(err)
		}
	}

	// The spread is a property of the load, not of time: if a window
	// falls short, a later one may not. The timeout only bounds a broken
	// run.
	spread := map[string][]Bucket{}
	var queryErr error
	_ = testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		for _, h := range Histograms {
			bs, err := e.Buckets(ctx, h.Name, window)
			if err != nil {
				queryErr = err
				return true, err
			}
			spread[h.Name] = bs
		}
		for _, h := range Histograms {
			if Spread(spread[h.Name]) < minSpread {
				return false, nil
			}
		}
		return true, nil
	})
	for _, h := range Histograms {
		bs := spread[h.Name]
		var qs [2]string
		for i, q := range []float64{0.5, 0.95} {
			v, ok, qerr := e.Quantile(ctx, q, h.Name, quantileWindow)
			switch {
			case qerr != nil:
				qs[i] = qerr.Error()
			case !ok:
				qs[i] = "no data"
			default:
				qs[i] = formatValue(v)
			}
		}
		t.Logf("%s: %d buckets used in the last %s: %s; p50 %s, p95 %s", h.Name, Spread(bs), window, FormatBuckets(bs), qs[0], qs[1])
	}
	t.Logf("qdiscs:\n%s", e.Net.QdiscStats())
	if queryErr != nil {
		t.Fatalf("reading the histograms: %v", queryErr)
	}
	// The bucket layouts the harness documents are the ones LiveKit exports.
	for _, h := range Histograms {
		var les []float64
		for _, b := range spread[h.Name] {
			les = append(les, b.LE)
		}
		if want := append(slices.Clone(h.Buckets), math.Inf(1)); !slices.Equal(les, want) {
			t.Errorf("%s: LiveKit exports buckets %v, Histograms says %v", h.Name, les, want)
		}
	}
	for _, h := range Histograms {
		if n := Spread(spread[h.Name]); n < minSpread {
			t.Errorf("%s: observations in %d buckets over the last %s, want at least %d: %s", h.Name, n, window, minSpread, FormatBuckets(spread[h.Name]))
		}
	}
}

func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }
