package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type machine struct {
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	OS        string `json:"os"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

// result is one run: one agent process, n scrapers.
type result struct {
	Variant          string  `json:"variant"` // sim, mock or mock+dcgm
	Scrapers         int     `json:"scrapers"`
	CPUPercent       float64 `json:"cpu_percent_of_one_core"`
	TickPercent      float64 `json:"sampling_ticks_percent_of_wall"`
	RSSSteadyMiB     float64 `json:"rss_steady_mib"`
	RSSAnonMiB       float64 `json:"rss_steady_anon_mib"`
	RSSFileMiB       float64 `json:"rss_steady_file_mib"`
	RSSPeakMiB       float64 `json:"rss_peak_mib"`
	Scrapes          int     `json:"scrapes"`
	ScrapeP50ms      float64 `json:"scrape_p50_ms"`
	ScrapeP99ms      float64 `json:"scrape_p99_ms"`
	ScrapeMaxms      float64 `json:"scrape_max_ms"`
	AgeP50ms         float64 `json:"snapshot_age_at_scrape_p50_ms"`
	AgeMaxms         float64 `json:"snapshot_age_at_scrape_max_ms"`
	Ticks            int     `json:"ticks"`
	ExpectedTicks    int     `json:"ticks_expected"`
	MissedTicks      int     `json:"ticks_missed"`
	MetricsBytes     int     `json:"metrics_bytes"`
	MetricsGzipBytes int     `json:"metrics_gzip_bytes"`
	Series           int     `json:"series"`
}

type report struct {
	Machine machine  `json:"machine"`
	Command string   `json:"command"`
	Config  config   `json:"config"`
	Runs    []result `json:"runs"`
}

// The targets of issue 3, for the run with one scraper.
const (
	targetCPUPercent = 1
	targetRSSMiB     = 30
	targetP99ms      = 5
)

func (r *report) missedTargets() []string {
	var out []string
	for _, run := range r.Runs {
		if run.Scrapers != 1 || !isAgent(run.Variant) {
			continue
		}
		if run.CPUPercent >= targetCPUPercent {
			out = append(out, fmt.Sprintf("CPU %.2f%% of a core, target < %d%%", run.CPUPercent, targetCPUPercent))
		}
		if run.RSSSteadyMiB >= targetRSSMiB {
			out = append(out, fmt.Sprintf("steady RSS %.1f MiB, target < %d MiB", run.RSSSteadyMiB, targetRSSMiB))
		}
		if run.ScrapeP99ms >= targetP99ms {
			out = append(out, fmt.Sprintf("scrape p99 %.2f ms, target < %d ms", run.ScrapeP99ms, targetP99ms))
		}
		if run.MissedTicks > 0 || run.Ticks < run.ExpectedTicks {
			out = append(out, fmt.Sprintf("%d of %d ticks taken, %d missed; target: none missed", run.Ticks, run.ExpectedTicks, run.MissedTicks))
		}
	}
	return out
}

// table renders the runs as a Markdown table, one column per run.
func (r *report) table() string {
	var b strings.Builder
	what := "simulated GPUs"
	if r.Config.NVML == "mock" {
		what = "GPUs of NVIDIA's mock NVML (T4 profile)"
	}
	fmt.Fprintf(&b, "\n%d %s sampled every %s, %d pods, %s measured per run after %s warm-up\n",
		r.Config.GPUs, what, r.Config.Interval, r.Config.Pods, r.Config.Duration, r.Config.Warmup)
	fmt.Fprintf(&b, "machine: %s, %d CPUs, %s, Linux %s, %s\n\n", r.Machine.CPU, r.Machine.CPUs, r.Machine.OS, r.Machine.Kernel, r.Machine.GoVersion)
	b.WriteString("| |")
	for _, run := range r.Runs {
		fmt.Fprintf(&b, " %s, %d scraper(s) at 1 Hz |", run.Variant, run.Scrapers)
	}
	b.WriteString(" target (1 scraper) |\n|---|")
	for range r.Runs {
		b.WriteString("---:|")
	}
	b.WriteString("---|\n")
	row := func(name, target string, cell func(result) string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, run := range r.Runs {
			fmt.Fprintf(&b, " %s |", cell(run))
		}
		fmt.Fprintf(&b, " %s |\n", target)
	}
	row("agent CPU, % of one core (user+sys)", fmt.Sprintf("< %d%%", targetCPUPercent), func(x result) string { return fmt.Sprintf("%.2f%%", x.CPUPercent) })
	row("of which in sampling ticks (NVML included)", "", func(x result) string { return fmt.Sprintf("%.3f%%", x.TickPercent) })
	row("RSS steady (median), MiB", fmt.Sprintf("< %d MiB", targetRSSMiB), func(x result) string { return fmt.Sprintf("%.1f", x.RSSSteadyMiB) })
	row("of which anonymous (heap, stacks) / file (the binary), MiB", "", func(x result) string { return fmt.Sprintf("%.1f / %.1f", x.RSSAnonMiB, x.RSSFileMiB) })
	row("RSS peak (VmHWM), MiB", "", func(x result) string { return fmt.Sprintf("%.1f", x.RSSPeakMiB) })
	row("scrape latency p50, ms", "", func(x result) string { return fmt.Sprintf("%.2f", x.ScrapeP50ms) })
	row("scrape latency p99, ms", fmt.Sprintf("< %d ms", targetP99ms), func(x result) string { return fmt.Sprintf("%.2f", x.ScrapeP99ms) })
	row("scrape latency max, ms", "", func(x result) string { return fmt.Sprintf("%.2f", x.ScrapeMaxms) })
	row("age of the snapshot served, p50 / max, ms", "", func(x result) string { return fmt.Sprintf("%.0f / %.0f", x.AgeP50ms, x.AgeMaxms) })
	row("scrapes timed", "", func(x result) string { return fmt.Sprint(x.Scrapes) })
	row("ticks taken / expected", "all", func(x result) string { return fmt.Sprintf("%d / %d", x.Ticks, x.ExpectedTicks) })
	row("ticks missed", "0", func(x result) string { return fmt.Sprint(x.MissedTicks) })
	row("/metrics bytes (text / gzip)", "", func(x result) string { return fmt.Sprintf("%d / %d", x.MetricsBytes, x.MetricsGzipBytes) })
	row("/metrics series", "", func(x result) string { return fmt.Sprint(x.Series) })
	b.WriteString("\n")
	// The floor: what any exporter pays the library per interval.
	for _, f := range r.Runs {
		if f.Variant == "floor" {
			fmt.Fprintf(&b, "floor (one NVML call per GPU per interval, %d scraper(s)): CPU %.2f%%, RSS %.1f MiB\n", f.Scrapers, f.CPUPercent, f.RSSSteadyMiB)
		}
	}
	// The agent beside the peer, run for run.
	for _, p := range r.Runs {
		if p.Variant != "peer" || p.CPUPercent <= 0 {
			continue
		}
		for _, a := range r.Runs {
			if isAgent(a.Variant) && a.Scrapers == p.Scrapers {
				fmt.Fprintf(&b, "%s beside nvidia_gpu_exporter, %d scraper(s): CPU %.2fx (%.2f%% / %.2f%%), RSS %.2fx (%.1f / %.1f MiB), anonymous RSS %.2fx\n",
					a.Variant, a.Scrapers, a.CPUPercent/p.CPUPercent, a.CPUPercent, p.CPUPercent,
					a.RSSSteadyMiB/p.RSSSteadyMiB, a.RSSSteadyMiB, p.RSSSteadyMiB, a.RSSAnonMiB/p.RSSAnonMiB)
			}
		}
	}
	return b.String()
}

// isAgent says whether a run's variant is the agent's, not the peer's
// nor the floor's.
func isAgent(variant string) bool { return variant != "peer" && variant != "floor" }

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
