package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The memory limits of deploy/: a binary over its limit is OOM-killed.
var memLimitMiB = map[string]float64{"agent": 256, "scaler": 512}

// binary is what one process did over the run.
type binary struct {
	Name     string `json:"name"`
	Baseline usage  `json:"baseline"`  // at rest, before the clients
	WarmedUp usage  `json:"warmed_up"` // the window's first sample
	End      usage  `json:"end"`       // its last
	Peak     usage  `json:"peak"`      // each field's highest, warm-up included
	After    usage  `json:"after"`     // once the clients left
	// AfterIn is how long after the clients left After was read: when
	// both counts were back, or the settle time.
	AfterIn         time.Duration `json:"after_in_ns"`
	GoroutineGrowth growth        `json:"goroutine_growth"` // long mode
	FDGrowth        growth        `json:"fd_growth"`        // long mode
}

// back reports whether goroutines and descriptors returned to their
// baselines.
func (b *binary) back() bool {
	return b.After.Goroutines <= b.Baseline.Goroutines+backSlack && b.After.FDs <= b.Baseline.FDs+backSlack
}

// latency is one kind of call's figures over the window.
type latency struct {
	N        int            `json:"n"`
	P50      float64        `json:"p50_ms"`
	P99      float64        `json:"p99_ms"`
	Max      float64        `json:"max_ms"`
	Refused  int            `json:"refused,omitempty"` // 503 under --web.max-requests
	Failures map[string]int `json:"failures,omitempty"`
}

type report struct {
	Command string `json:"command"`
	// Load is the load average at the start and at the end.
	Load   [2]string     `json:"load_average"`
	Config config        `json:"config"`
	Window time.Duration `json:"window_ns"`

	Ticks         int `json:"ticks"`
	ExpectedTicks int `json:"ticks_expected"`
	MissedTicks   int `json:"ticks_missed"`

	Scrapes        latency `json:"scrapes"`
	GetMetrics     latency `json:"get_metrics"`
	StreamIsActive int64   `json:"stream_is_active_messages"`

	Readers       []seqReport    `json:"readers"`
	Dropped       float64        `json:"agent_dropped_snapshots"` // gpu_agent_stream_dropped_snapshots_total, every subscriber
	Churned       int64          `json:"churn_rounds"`
	ChurnFailures map[string]int `json:"churn_failures,omitempty"`

	Binaries []*binary `json:"binaries"`
}

func (r *report) bin(name string) *binary {
	for _, b := range r.Binaries {
		if b.Name == name {
			return b
		}
	}
	b := &binary{Name: name}
	r.Binaries = append(r.Binaries, b)
	return b
}

// failures are what fails the run: what no load explains.
func (r *report) failures() []string {
	var out []string
	for i, s := range r.Readers {
		if len(s.Unaccounted) > 0 {
			out = append(out, fmt.Sprintf("reader %d: sequences not accounted for: %s", i, strings.Join(s.Unaccounted, "; ")))
		}
		if len(s.Proven) > 0 {
			out = append(out, fmt.Sprintf("reader %d kept up and lost snapshots: %s", i, strings.Join(s.Proven, "; ")))
		}
	}
	for _, b := range r.Binaries {
		if b.GoroutineGrowth.Leak {
			out = append(out, fmt.Sprintf("%s: goroutines grow (floors %v, slack %g)", b.Name, b.GoroutineGrowth.Floors, b.GoroutineGrowth.Slack))
		}
		if b.FDGrowth.Leak {
			out = append(out, fmt.Sprintf("%s: descriptors grow (floors %v, slack %g)", b.Name, b.FDGrowth.Floors, b.FDGrowth.Slack))
		}
	}
	return out
}

// missed are the reported thresholds the run missed.
func (r *report) missed() []string {
	var out []string
	if r.MissedTicks*100 > r.ExpectedTicks || (r.ExpectedTicks-r.Ticks)*100 > r.ExpectedTicks {
		out = append(out, fmt.Sprintf("%d of %d ticks taken, %d missed: over 1%%", r.Ticks, r.ExpectedTicks, r.MissedTicks))
	}
	for _, b := range r.Binaries {
		if mib(b.Peak.RSS) >= memLimitMiB[b.Name] {
			out = append(out, fmt.Sprintf("%s: RSS peaked at %.0f MiB, its limit in deploy/ is %.0f MiB", b.Name, mib(b.Peak.RSS), memLimitMiB[b.Name]))
		}
		if !b.back() {
			out = append(out, fmt.Sprintf("%s: %v goroutines and %d descriptors %s after the clients left, baseline %v and %d",
				b.Name, b.After.Goroutines, b.After.FDs, r.Config.Settle, b.Baseline.Goroutines, b.Baseline.FDs))
		}
	}
	if n := len(r.Scrapes.Failures); n > 0 {
		out = append(out, fmt.Sprintf("scrapes failed: %v", r.Scrapes.Failures))
	}
	if n := len(r.GetMetrics.Failures); n > 0 {
		out = append(out, fmt.Sprintf("KEDA calls failed: %v", r.GetMetrics.Failures))
	}
	return out
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func check(ok bool) string {
	if ok {
		return "✔"
	}
	return "✘"
}

// table renders the report as Markdown.
func (r *report) table() string {
	var b strings.Builder
	c := r.Config
	scrapeHow := "in a closed loop"
	if c.ScrapePeriod > 0 {
		scrapeHow = "every " + c.ScrapePeriod.String()
	}
	fmt.Fprintf(&b, "\n`%s`: %s measured after %s warm-up; load average %s at the start, %s at the end\n\n", r.Command, r.Window.Round(time.Second), c.Warmup, r.Load[0], r.Load[1])
	fmt.Fprintf(&b, "agent: %d simulated GPUs every %s, %d pods; scrapers: %d %s; Watch readers: %d, never reading: %d, connecting and dropping: %d\n",
		c.GPUs, c.Interval, c.Pods, c.Scrapers, scrapeHow, c.Readers, c.Stalled, c.Churners)
	fmt.Fprintf(&b, "scaler: the agent and %d fake agents of 8 GPUs every %s; KEDA clients: %d, each GetMetrics every %s and one StreamIsActive\n\n",
		c.FakeAgents, c.FakePeriod, c.KEDA, c.KEDAPeriod)

	b.WriteString("| | value | threshold |\n|---|---:|---|\n")
	row := func(name, value, threshold string) { fmt.Fprintf(&b, "| %s | %s | %s |\n", name, value, threshold) }
	missedOK := r.MissedTicks*100 <= r.ExpectedTicks && (r.ExpectedTicks-r.Ticks)*100 <= r.ExpectedTicks
	row("agent ticks taken / expected (missed)", fmt.Sprintf("%d / %d (%d)", r.Ticks, r.ExpectedTicks, r.MissedTicks), "≤ 1% missed "+check(missedOK))
	lat := func(name string, l latency, extra string) {
		row(name+" p50 / p99 / max, ms", fmt.Sprintf("%.2f / %.2f / %.2f", l.P50, l.P99, l.Max), "reported")
		row(name+" answered"+extra, fmt.Sprintf("%d", l.N), "")
		if len(l.Failures) > 0 {
			row(name+" failed", fmt.Sprint(l.Failures), "none "+check(false))
		}
	}
	lat("scrape", r.Scrapes, "")
	if r.Scrapes.Refused > 0 || c.Scrapers > 1 {
		row("scrapes refused 503 (--web.max-requests 40)", fmt.Sprint(r.Scrapes.Refused), "the limit working")
	}
	lat("GetMetrics at KEDA's client", r.GetMetrics, "")
	row("StreamIsActive messages", fmt.Sprint(r.StreamIsActive), "")

	var msgs int
	var skipped uint64
	kept, proven, unaccounted := 0, 0, 0
	for _, s := range r.Readers {
		msgs += s.Messages
		skipped += s.Skipped
		proven += len(s.Proven)
		unaccounted += len(s.Unaccounted)
		if s.KeptUp() {
			kept++
		}
	}
	row("Watch readers that saw every sequence", fmt.Sprintf("%d of %d (%d messages)", kept, len(r.Readers), msgs), "reported")
	row("snapshots skipped for readers (counted in `skipped`)", fmt.Sprint(skipped), "slow reader: by design")
	row("gaps a reader that kept up cannot cause", fmt.Sprint(proven), "0 "+check(proven == 0))
	row("sequences neither received nor counted", fmt.Sprint(unaccounted), "0 "+check(unaccounted == 0))
	if c.Stalled > 0 || c.Churners > 0 {
		row("snapshots the agent dropped, every subscriber", fmt.Sprintf("%.0f", r.Dropped), "the stalled ones' (by design)")
		row("connect-and-drop rounds", fmt.Sprint(r.Churned), "")
		if len(r.ChurnFailures) > 0 {
			row("connect-and-drop failures", fmt.Sprint(r.ChurnFailures), "reported")
		}
	}

	b.WriteString("\n| | agent | scaler | threshold |\n|---|---:|---:|---|\n")
	bins := slices.Clone(r.Binaries)
	brow := func(name string, cell func(*binary) string, threshold string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, x := range bins {
			fmt.Fprintf(&b, " %s |", cell(x))
		}
		fmt.Fprintf(&b, " %s |\n", threshold)
	}
	mem := func(u usage) string { return fmt.Sprintf("%.1f / %.1f", mib(u.RSS), mib(u.Anon)) }
	brow("RSS / anonymous at rest, MiB", func(x *binary) string { return mem(x.Baseline) }, "")
	brow("RSS / anonymous after warm-up, MiB", func(x *binary) string { return mem(x.WarmedUp) }, "")
	brow("RSS / anonymous at the end, MiB", func(x *binary) string { return mem(x.End) }, "")
	brow("RSS / anonymous peak, MiB", func(x *binary) string { return mem(x.Peak) }, "under deploy/'s limit (256 / 512 MiB) "+
		check(mib(bins[0].Peak.RSS) < memLimitMiB[bins[0].Name] && mib(bins[1].Peak.RSS) < memLimitMiB[bins[1].Name]))
	brow("goroutines at rest / peak / end", func(x *binary) string {
		return fmt.Sprintf("%.0f / %.0f / %.0f", x.Baseline.Goroutines, x.Peak.Goroutines, x.End.Goroutines)
	}, "")
	brow("descriptors at rest / peak / end", func(x *binary) string {
		return fmt.Sprintf("%d / %d / %d", x.Baseline.FDs, x.Peak.FDs, x.End.FDs)
	}, "")
	brow("goroutines / descriptors after the clients left", func(x *binary) string {
		return fmt.Sprintf("%.0f / %d (%s)", x.After.Goroutines, x.After.FDs, x.AfterIn.Round(100*time.Millisecond))
	}, fmt.Sprintf("at rest + %d %s", backSlack, check(bins[0].back() && bins[1].back())))
	if c.Mode == "long" {
		g := func(x growth) string { return fmt.Sprintf("%v %s", x.Floors, check(!x.Leak)) }
		brow("goroutine floors over the window's thirds", func(x *binary) string { return g(x.GoroutineGrowth) }, "no growth beyond slack")
		brow("descriptor floors over the window's thirds", func(x *binary) string { return g(x.FDGrowth) }, "no growth beyond slack")
	}
	b.WriteString("\n")
	return b.String()
}
