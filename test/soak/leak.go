package main

import (
	"fmt"
	"slices"
)

// growth says whether a count sampled over a steady run grows without
// bound, in a way a short run can prove: split the samples after warm-up
// into thirds and take each third's minimum (its floor: a scrape or a
// call in flight at one sample lifts that sample, not the floor). The
// count grows when the floors never fall and the last is above the first
// by more than slack. A leak of a goroutine per request or per
// reconnection does that within minutes; noise does not.
type growth struct {
	Floors []float64 `json:"floors"` // the three thirds' minimums
	Slack  float64   `json:"slack"`
	Leak   bool      `json:"leak"`
}

// minSamples is the fewest samples after warm-up growth judges.
const minSamples = 6

func judgeGrowth(samples []float64, slack float64) (growth, error) {
	if len(samples) < minSamples {
		return growth{}, fmt.Errorf("%d samples after warm-up, need %d to judge growth", len(samples), minSamples)
	}
	n := len(samples)
	g := growth{Slack: slack}
	for i := range 3 {
		g.Floors = append(g.Floors, slices.Min(samples[i*n/3:(i+1)*n/3]))
	}
	g.Leak = g.Floors[1] >= g.Floors[0] && g.Floors[2] >= g.Floors[1] && g.Floors[2] > g.Floors[0]+slack
	return g, nil
}

// slackFor is the growth judgeGrowth tolerates over a floor of base: 10,
// or 10% of base when that is more.
func slackFor(base float64) float64 { return max(10, base/10) }
