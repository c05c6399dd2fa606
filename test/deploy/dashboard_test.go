package deploy

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
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

// grafanaVars replaces Grafana's variables with what they become at
// query time: the interval ones with durations, the dashboard's own
// (used in regular-expression matchers) with their "All" value.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h",
	"$node", ".*", "$namespace", ".*", "$pod", ".+",
)

var labelValues = regexp.MustCompile(`^label_values\((.+), *([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		sel := grafanaVars.Replace(m[1])
		for _, err := range checkExpr(t, sel) {
			t.Errorf("variable %s: %v", v.Name, err)
		}
		if name := strings.SplitN(sel, "{", 2)[0]; !slices.Contains(targetLabels, m[2]) {
			if f, ok := exported(t)[name]; !ok || (f.labels != nil && !f.labels[m[2]]) {
				t.Errorf("variable %s: %s has no label %s", v.Name, name, m[2])
			}
		}
	}
	for _, want := range []string{"datasource", "node", "namespace", "pod"} {
		if !vars[want] {
			t.Errorf("no $%s variable", want)
		}
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
			for _, err := range checkExpr(t, grafanaVars.Replace(tg.Expr)) {
				t.Errorf("panel %q %s: %v", p.Title, tg.RefID, err)
			}
		}
	}

	// The four panels WebRTC operators watch come first, in a row.
	var first []string
	for _, p := range d.Panels {
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
	b.WriteString("Rendered from `gpu-agent.json` by `TestDashboard` (test/deploy; `go test -run Dashboard -update` rewrites it, and the test fails when it is stale). Import the JSON into Grafana with a Prometheus data source; `$node`, `$namespace` and `$pod` filter every panel.\n\n")
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
