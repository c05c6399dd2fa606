package deploy

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gpu-telemetry/agent/internal/fleet/promql"
)

var update = flag.Bool("update", false, "rewrite deploy/grafana/dashboard.md from the dashboard")

var (
	dashboardFile = filepath.Join(repo, "deploy", "grafana", "gpu-agent.json")
	dashboardDoc  = filepath.Join(repo, "deploy", "grafana", "dashboard.md")
)

type gridPos struct{ X, Y, W, H int }

type panel struct {
	ID          int
	Type        string
	Title       string
	Description string
	GridPos     gridPos `json:"gridPos"`
	Datasource  *struct{ Type, UID string }
	FieldConfig struct {
		Defaults struct{ Unit string }
	} `json:"fieldConfig"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string
		LegendFormat string `json:"legendFormat"`
	}
}

type dashboard struct {
	UID        string
	Title      string
	Templating struct {
		List []struct {
			Name       string
			Type       string
			Definition string
			AllValue   string `json:"allValue"`
			Query      any
			Current    struct{ Value any }
			Options    []struct{ Text, Value string }
		}
	}
	Panels []panel
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// grafanaVars are Grafana's variables and what they become at query
// time: the interval ones durations, the dashboard's query variables
// (used in regular-expression matchers) their "All" value.
var grafanaVars = []string{
	"$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h",
	"$node", ".*", "$namespace", ".*", "$pod", ".+",
}

// queryVars replaces the variables of a dashboard's queries: those of
// grafanaVars, and the dashboard's own textbox and custom variables (the
// application's families and units) with their current values, the
// defaults a dashboard imported as is queries with.
func queryVars(t *testing.T, d dashboard) *strings.Replacer {
	t.Helper()
	var pairs []string
	for _, v := range d.Templating.List {
		switch v.Type {
		case "textbox", "custom", "constant":
		default:
			continue
		}
		val, _ := v.Current.Value.(string)
		if val == "" {
			t.Errorf("variable %s: no current value", v.Name)
			continue
		}
		if v.Type == "custom" && !slices.ContainsFunc(v.Options, func(o struct{ Text, Value string }) bool { return o.Value == val }) {
			t.Errorf("variable %s: current value %q is none of its options %v", v.Name, val, v.Options)
		}
		pairs = append(pairs, "${"+v.Name+"}", val, "$"+v.Name, val)
	}
	return strings.NewReplacer(append(pairs, grafanaVars...)...)
}

// unitSuffixes are the base-unit suffixes of latency family names and
// their seconds per unit, as the dashboard's $latency_unit spells them.
var unitSuffixes = map[string]string{"_seconds": "1", "_ms": "0.001", "_us": "0.000001", "_ns": "0.000000001"}

var labelValues = regexp.MustCompile(`^label_values\((.+), *([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	expand := queryVars(t, d)
	vars := map[string]bool{}
	defaults := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		defaults[v.Name], _ = v.Current.Value.(string)
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		sel := expand.Replace(m[1])
		for _, err := range checkExpr(t, sel) {
			t.Errorf("variable %s: %v", v.Name, err)
		}
		if name := strings.SplitN(sel, "{", 2)[0]; !slices.Contains(targetLabels, m[2]) {
			if f, ok := exported(t)[name]; !ok || (f.labels != nil && !f.labels[m[2]]) {
				t.Errorf("variable %s: %s has no label %s", v.Name, name, m[2])
			}
		}
	}
	for _, want := range []string{"datasource", "node", "namespace", "pod", "latency_histogram", "latency_unit", "requests_counter"} {
		if !vars[want] {
			t.Errorf("no $%s variable", want)
		}
	}
	// The default latency family's name says its unit; the default unit
	// must be that one, or the p95 panel's seconds are wrong.
	var unitOK bool
	for suf, perUnit := range unitSuffixes {
		unitOK = unitOK || (strings.HasSuffix(defaults["latency_histogram"], suf) && defaults["latency_unit"] == perUnit)
	}
	if !unitOK {
		t.Errorf("$latency_histogram %q with $latency_unit %q: the unit is not the one its name says", defaults["latency_histogram"], defaults["latency_unit"])
	}

	ids := map[int]bool{}
	var occupied [][24]int // occupied[y][x] = panel id
	all := ""
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
			continue
		}
		for y := g.Y; y < g.Y+g.H; y++ {
			for len(occupied) <= y {
				occupied = append(occupied, [24]int{})
			}
			for x := g.X; x < g.X+g.W; x++ {
				if o := occupied[y][x]; o != 0 {
					t.Errorf("panel %q overlaps panel %d at (%d,%d)", p.Title, o, x, y)
				}
				occupied[y][x] = p.ID
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the $datasource variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 || p.Description == "" || p.FieldConfig.Defaults.Unit == "" {
			t.Errorf("panel %q: no queries, description or unit", p.Title)
		}
		for _, tg := range p.Targets {
			all += tg.Expr + "\n"
			for _, err := range checkExpr(t, expand.Replace(tg.Expr)) {
				t.Errorf("panel %q %s: %v", p.Title, tg.RefID, err)
			}
		}
	}

	// The four panels WebRTC operators watch come first, in a row.
	var first []string
	for _, p := range d.Panels {
		if p.Type == "row" && p.GridPos.Y == 0 && p.Title != "Service experience" {
			t.Errorf("first row %q, want Service experience", p.Title)
		}
		if p.Type != "row" && p.GridPos.Y <= 1 {
			first = append(first, p.Title)
		}
	}
	if want := []string{"p95 latency", "Requests per second", "GPU utilization", "Pod replicas"}; !slices.Equal(first, want) {
		t.Errorf("first row %q, want %q", first, want)
	}
	// And the rest of what the issue lists, by the metric each needs.
	for what, metric := range map[string]string{
		"GPU utilization":           "DCGM_FI_DEV_GPU_UTIL",
		"encoder utilization":       "DCGM_FI_DEV_ENC_UTIL",
		"decoder utilization":       "DCGM_FI_DEV_DEC_UTIL",
		"the sub-second window max": "gpu_agent_utilization_window_max_ratio",
		"framebuffer":               "DCGM_FI_DEV_FB_USED",
		"encoder sessions":          "gpu_agent_encoder_sessions",
		"encoder fps":               "gpu_agent_encoder_fps",
		"encoder latency":           "gpu_agent_encoder_latency_seconds",
		"per-pod encoder":           "gpu_agent_pod_encoder_latency_seconds",
		"XID errors":                "gpu_agent_xid_errors_total",
		"sampling health":           "gpu_agent_sample_rate_hertz",
		"stalled GPUs":              "gpu_agent_device_stalled",
		"the scaler":                "gpu_scaler_agents_connected",
		"replicas":                  "kube_deployment_status_replicas_available",
		"the app's own latency":     "${latency_histogram}_bucket",
		"the app's own requests":    "rate(${requests_counter}",
	} {
		if !strings.Contains(all, metric) {
			t.Errorf("no panel shows %s (%s)", what, metric)
		}
	}

	got := renderDashboard(d)
	if *update {
		if err := os.WriteFile(dashboardDoc, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(dashboardDoc)
	if err != nil || string(old) != got {
		t.Errorf("%s is not the rendering of %s; run: go test -run Dashboard -update (in test/deploy)", dashboardDoc, dashboardFile)
	}
}

// renderDashboard draws the panel layout as text (each grid column three
// characters, each grid row one line) and lists every panel's queries, so
// that the dashboard can be reviewed without Grafana.
func renderDashboard(d dashboard) string {
	height := 0
	for _, p := range d.Panels {
		height = max(height, p.GridPos.Y+p.GridPos.H)
	}
	const cw = 3
	canvas := make([][]rune, height+1)
	for i := range canvas {
		canvas[i] = []rune(strings.Repeat(" ", 24*cw+1))
	}
	put := func(x, y int, s string) {
		for i, r := range []rune(s) {
			if x+i < len(canvas[y]) {
				canvas[y][x+i] = r
			}
		}
	}
	for _, p := range d.Panels {
		g := p.GridPos
		x0, x1, y0, y1 := g.X*cw, (g.X+g.W)*cw, g.Y, g.Y+g.H
		if p.Type == "row" {
			put(0, y0, strings.Repeat("=", 24*cw+1))
			put(2, y0, " "+p.Title+" ")
			continue
		}
		for x := x0; x <= x1; x++ {
			canvas[y0][x], canvas[y1][x] = '-', '-'
		}
		for y := y0; y <= y1; y++ {
			canvas[y][x0], canvas[y][x1] = '|', '|'
		}
		for _, c := range [][2]int{{x0, y0}, {x1, y0}, {x0, y1}, {x1, y1}} {
			canvas[c[1]][c[0]] = '+'
		}
		title := fmt.Sprintf("%d %s", p.ID, p.Title)
		width := x1 - x0 - 3
		for i, line := range wrap(title, width) {
			if y0+1+i < y1 {
				put(x0+2, y0+1+i, line)
			}
		}
		if y1-1 > y0+2 {
			q := "queries"
			if len(p.Targets) == 1 {
				q = "query"
			}
			label := []rune(fmt.Sprintf("%d %s, %s", len(p.Targets), q, p.FieldConfig.Defaults.Unit))
			put(x0+2, y1-1, string(label[:min(len(label), width)]))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", d.Title)
	b.WriteString("Rendered from `gpu-agent.json` by `TestDashboard` (test/deploy; `go test -run Dashboard -update` rewrites it, and the test fails when it is stale). Import the JSON into Grafana with a Prometheus data source; `$node`, `$namespace` and `$pod` filter every panel. The first row reads the application's own families, which Prometheus scrapes from its pods: `$latency_histogram` in `$latency_unit` (seconds per unit: `s`, `ms`, `us`, `ns`) and `$requests_counter`, by default the conventional names listed at the end (for a LiveKit SFU, `livekit_rtt_ms` in `ms`).\n\n")
	b.WriteString("## Layout\n\n```\n")
	for _, l := range canvas {
		b.WriteString(strings.TrimRight(string(l), " ") + "\n")
	}
	b.WriteString("```\n\n## Panels and queries\n\n| # | panel | unit | query | legend |\n|---|---|---|---|---|\n")
	for _, p := range d.Panels {
		if p.Type == "row" {
			fmt.Fprintf(&b, "| | **%s** | | | |\n", p.Title)
			continue
		}
		for i, tg := range p.Targets {
			title, unit := "", ""
			if i == 0 {
				title, unit = p.Title, p.FieldConfig.Defaults.Unit
			}
			fmt.Fprintf(&b, "| %s | %s | %s | `%s` | %s |\n", map[bool]string{true: fmt.Sprint(p.ID), false: ""}[i == 0], title, unit,
				strings.ReplaceAll(tg.Expr, "|", `\|`), strings.ReplaceAll(tg.LegendFormat, "|", `\|`))
		}
	}
	b.WriteString("\nMetrics that are not the agent's or the scaler's: ")
	var ext []string
	for _, m := range slices.Sorted(mapsKeys(notOurs)) {
		ext = append(ext, fmt.Sprintf("`%s` (%s)", m, notOurs[m]))
	}
	b.WriteString(strings.Join(ext, "; ") + ".\n")
	return b.String()
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len([]rune(line))+1+len([]rune(w)) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

// The first row's app panels, set to the latency example's family
// (deploy/examples/scaledobject-webrtc-latency.yaml: livekit_rtt_ms, in
// ms) and a LiveKit counter, asked of Prometheus's own engine (promtool
// test rules) on one SFU pod's series: the p95 panel answers in seconds
// what the example's trigger reads in ms (the scaler's
// histogram_quantile of the same buckets, times its scale), and the
// requests panel the counter's per-second rate.
func TestDashboardAppPanels(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found, and CI=true: install it (Debian: prometheus)")
		}
		t.Skip("promtool not found: the app panels are not evaluated (TestDashboard still parses them)")
	}
	d := loadDashboard(t)
	var msPerUnit string
	for _, v := range d.Templating.List {
		for _, o := range v.Options {
			if v.Name == "latency_unit" && o.Text == "ms" {
				msPerUnit = o.Value
			}
		}
	}
	trigger := exampleAppTrigger(t, "scaledobject-webrtc-latency.yaml")
	const counter = "livekit_node_twirp_request_status" // a LiveKit server's API requests
	expand := strings.NewReplacer(append([]string{
		"${latency_histogram}", trigger.App.Family, "$latency_unit", msPerUnit, "${requests_counter}", counter,
	}, grafanaVars...)...)
	exprOf := func(title string) string {
		for _, p := range d.Panels {
			if p.Title == title && len(p.Targets) > 0 {
				return expand.Replace(p.Targets[0].Expr)
			}
		}
		t.Fatalf("no panel %q", title)
		return ""
	}

	// LiveKit v1.13.5's RTT buckets (pkg/telemetry/prometheus/packets.go)
	// and how many of each scrape's 10 new observations fall at or below
	// each bound: p95 in (200, 250].
	bounds := []string{"50", "100", "150", "200", "250", "500", "750", "1000", "5000", "10000", "+Inf"}
	cum := []float64{0, 0, 1, 5, 10, 10, 10, 10, 10, 10, 10}
	var in strings.Builder
	var buckets []promql.Bucket
	pod := `namespace="media", pod="livekit-sfu-7c9d8f6b5-x2x4q"`
	for i, b := range bounds {
		fmt.Fprintf(&in, "      - series: '%s_bucket{le=%q, %s}'\n        values: '0+%gx40'\n", trigger.App.Family, b, pod, cum[i])
		ub, _ := strconv.ParseFloat(b, 64)
		buckets = append(buckets, promql.Bucket{UpperBound: ub, Count: cum[i]})
	}
	fmt.Fprintf(&in, "      - series: '%s{%s}'\n        values: '0+30x40'\n", counter, pod)
	triggerMS := promql.HistogramQuantile(trigger.App.Quantile, buckets) * trigger.App.Scale
	perUnit, err := strconv.ParseFloat(msPerUnit, 64)
	if err != nil || triggerMS <= 200 || triggerMS >= 250 {
		t.Fatalf("$latency_unit ms = %q (%v); the trigger reads %g ms", msPerUnit, err, triggerMS)
	}
	tests := fmt.Sprintf(`tests:
  - interval: 15s
    input_series:
%s    promql_expr_test:
      - expr: 'abs((%s) - %g) < bool 1e-9'
        eval_time: 10m
        exp_samples: [{labels: '{}', value: 1}]
      - expr: 'abs((%s) - 2) < bool 1e-9'
        eval_time: 10m
        exp_samples: [{labels: '{namespace="media"}', value: 1}]
`, in.String(), exprOf("p95 latency"), triggerMS*perUnit, exprOf("Requests per second"))
	f := filepath.Join(t.TempDir(), "app-panels.test.yaml")
	if err := os.WriteFile(f, []byte(tests), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s\n%s", err, out, tests)
	}
}
