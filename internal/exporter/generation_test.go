package exporter

import (
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

func TestParseGeneration(t *testing.T) {
	for in, want := range map[string]Generation{
		"4.8.2": Gen482, "4.8.1": Gen482, "4.8": Gen48, "4.8.3": Gen48, "4.8.4": Gen48,
		"4.9": Gen49, "4.9.0": Gen49, "4.10": Gen410, "4.10.0": Gen410, "4.7": Gen482, "4.2.3": Gen482, "4.0.0": Gen482,
	} {
		got, err := ParseGeneration(in)
		if err != nil || got != want {
			t.Errorf("ParseGeneration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "4", "4.11", "latest", "4.9x", "3.3.9", "4.7.", "4.7.x", "4.77", "4.8.5"} {
		if g, err := ParseGeneration(in); err == nil {
			t.Errorf("ParseGeneration(%q) = %v, want an error", in, g)
		}
	}
	for g := range numGenerations {
		if back, err := ParseGeneration(g.String()); err != nil || back != g {
			t.Errorf("%v does not parse back: %v, %v", g, back, err)
		}
	}
}

// generationScrape gathers the device families of testSnapshot served as
// generation g, with field list fields (nil: the default list).
func generationScrape(t *testing.T, g Generation, fields []dcgmcsv.Field) map[string]*dto.MetricFamily {
	t.Helper()
	snap := testSnapshot()
	for f, v := range map[telemetry.Field]float64{telemetry.SMClock: 1590, telemetry.MemCopyUtil: 20, telemetry.FBTotal: 15 << 30} {
		snap.States[0].Set(f, v)
	}
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), nil),
		Options{Hostname: "node-a", Interval: time.Second, DriverVersion: "550.54.15", Generation: g, Counters: fields})
	out := map[string]*dto.MetricFamily{}
	for n, mf := range gather(t, c.Latest()) {
		if strings.HasPrefix(n, "DCGM_") {
			out[n] = mf
		}
	}
	return out
}

// labelOf is the value of label name on m, and whether it has it.
func labelOf(m *dto.Metric, name string) (string, bool) {
	for _, p := range m.GetLabel() {
		if p.GetName() == name {
			return p.GetValue(), true
		}
	}
	return "", false
}

// Each generation serves its default names, never both names of a field,
// with its host and driver labels.
func TestGenerationDefaults(t *testing.T) {
	for _, c := range []struct {
		g                   Generation
		host, driver        string
		has, lacks          []string
		hostLabelMissing    string
		driverLabelMissing  string
		fbTotalUnderOldName bool
	}{
		{Gen482, "Hostname", "DCGM_FI_DRIVER_VERSION",
			[]string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_XID_ERRORS"},
			[]string{"DCGM_FI_DEV_GPU_UTIL_RATIO", "DCGM_FI_DEV_SM_CLOCK_HERTZ", "DCGM_FI_DEV_BOARD_POWER_WATTS", "DCGM_FI_DEV_XID_ERROR", "DCGM_FI_DEV_FB_TOTAL"},
			"hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION", false},
		{Gen48, "hostname", "DCGM_FI_DRIVER_VERSION",
			[]string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_XID_ERRORS"},
			[]string{"DCGM_FI_DEV_GPU_UTIL_RATIO", "DCGM_FI_DEV_XID_ERROR"},
			"Hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION", false},
		{Gen49, "hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION",
			[]string{"DCGM_FI_DEV_GPU_UTIL_RATIO", "DCGM_FI_DEV_SM_CLOCK_HERTZ", "DCGM_FI_DEV_BOARD_POWER_WATTS", "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL",
				"DCGM_FI_DEV_XID_ERROR", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_TOTAL"},
			[]string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_XID_ERRORS"},
			"Hostname", "DCGM_FI_DRIVER_VERSION", true},
		{Gen410, "hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION",
			[]string{"DCGM_FI_DEV_GPU_UTIL_RATIO", "DCGM_FI_DEV_XID_ERROR"},
			[]string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_XID_ERRORS"},
			"Hostname", "DCGM_FI_DRIVER_VERSION", true},
	} {
		t.Run(c.g.String(), func(t *testing.T) {
			mfs := generationScrape(t, c.g, nil)
			for _, n := range c.has {
				if mfs[n] == nil {
					t.Errorf("%s is not served", n)
				}
			}
			for _, n := range c.lacks {
				if mfs[n] != nil {
					t.Errorf("%s is served", n)
				}
			}
			for n, mf := range mfs {
				for _, m := range mf.GetMetric() {
					if v, ok := labelOf(m, c.host); !ok || v != "node-a" {
						t.Errorf("%s %v: no %s=node-a", n, m.GetLabel(), c.host)
					}
					if v, ok := labelOf(m, c.driver); !ok || v != "550.54.15" {
						t.Errorf("%s %v: no %s=550.54.15", n, m.GetLabel(), c.driver)
					}
					for _, l := range []string{c.hostLabelMissing, c.driverLabelMissing} {
						if _, ok := labelOf(m, l); ok {
							t.Errorf("%s %v: has %s", n, m.GetLabel(), l)
						}
					}
				}
			}
			// Never two names of one field by default.
			byField := map[telemetry.Field][]string{}
			for _, m := range dcgmMetrics {
				if mfs[m.Name] != nil {
					byField[m.Field] = append(byField[m.Field], m.Name)
				}
			}
			for f, names := range byField {
				if len(names) > 1 {
					t.Errorf("field %s served under %v", f, names)
				}
			}
		})
	}
}

// A field list may mix the generations' names: each row is served under
// its name, in its unit, whatever the generation.
func TestFieldListMixesGenerations(t *testing.T) {
	var fields []dcgmcsv.Field
	for _, m := range dcgmMetrics {
		fields = append(fields, dcgmcsv.Field{Name: m.Name, Type: dcgmcsv.TypeGauge})
	}
	fields = append(fields, dcgmcsv.Field{Name: "DCGM_FI_DEV_XID_ERRORS", Type: dcgmcsv.TypeGauge},
		dcgmcsv.Field{Name: "DCGM_FI_DEV_XID_ERROR", Type: dcgmcsv.TypeGauge},
		dcgmcsv.Field{Name: "DCGM_FI_DRIVER_VERSION", Type: dcgmcsv.TypeLabel},
		dcgmcsv.Field{Name: "DCGM_FI_SYSTEM_DRIVER_VERSION", Type: dcgmcsv.TypeLabel})
	if u := Unsupported(fields); len(u) != 0 {
		t.Errorf("Unsupported = %v, want none", u)
	}
	snap := testSnapshot()
	for _, g := range []Generation{Gen482, Gen410} {
		mfs := generationScrape(t, g, fields)
		// GPU 0 (held by inference-0): the values of testSnapshot.
		value := func(name string) float64 {
			t.Helper()
			mf := mfs[name]
			if mf == nil {
				t.Fatalf("%s: %s not served", g, name)
			}
			for _, m := range mf.GetMetric() {
				if gpu, _ := labelOf(m, "gpu"); gpu == "0" {
					if _, ok := labelOf(m, "DCGM_FI_SYSTEM_DRIVER_VERSION"); !ok {
						t.Errorf("%s %v: the list's second driver label is missing", name, m.GetLabel())
					}
					switch {
					case m.Gauge != nil:
						return m.GetGauge().GetValue()
					case m.Counter != nil:
						return m.GetCounter().GetValue()
					}
				}
			}
			t.Fatalf("%s: %s has no series of GPU 0", g, name)
			return 0
		}
		st := &snap.States[0]
		util, _ := st.Get(telemetry.GPUUtil)
		energy, _ := st.Get(telemetry.Energy)
		for _, c := range []struct {
			name string
			want float64
		}{
			{"DCGM_FI_DEV_GPU_UTIL", util},
			{"DCGM_FI_DEV_GPU_UTIL_RATIO", util / 100},
			{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", energy},
			{"DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL", energy / 1000},
			{"DCGM_FI_DEV_POWER_USAGE", 42.5},
			{"DCGM_FI_DEV_BOARD_POWER_WATTS", 42.5},
			{"DCGM_FI_DEV_XID_ERRORS", 79},
			{"DCGM_FI_DEV_XID_ERROR", 79},
		} {
			if got := value(c.name); math.Abs(got-c.want) > 1e-9 {
				t.Errorf("%s: %s = %v, want %v", g, c.name, got, c.want)
			}
		}
	}
}

// The clocks in MHz and in hertz, and memory in MiB, over a reading that
// has them.
func TestGenerationUnits(t *testing.T) {
	snap := testSnapshot()
	snap.States[0].Set(telemetry.SMClock, 1590)
	snap.States[0].Set(telemetry.MemClock, 5001)
	snap.States[0].Set(telemetry.FBTotal, 15<<30)
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, nil, nil), Options{Interval: time.Second, Counters: []dcgmcsv.Field{
		{Name: "DCGM_FI_DEV_SM_CLOCK"}, {Name: "DCGM_FI_DEV_SM_CLOCK_HERTZ"},
		{Name: "DCGM_FI_DEV_MEM_CLOCK"}, {Name: "DCGM_FI_DEV_MEMORY_CLOCK_HERTZ"}, {Name: "DCGM_FI_DEV_FB_TOTAL"},
	}})
	got := map[string]float64{}
	for n, mf := range gather(t, c.Latest()) {
		for _, m := range mf.GetMetric() {
			if gpu, _ := labelOf(m, "gpu"); gpu == "0" && strings.HasPrefix(n, "DCGM_") {
				got[n] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"DCGM_FI_DEV_SM_CLOCK": 1590, "DCGM_FI_DEV_SM_CLOCK_HERTZ": 1590e6,
		"DCGM_FI_DEV_MEM_CLOCK": 5001, "DCGM_FI_DEV_MEMORY_CLOCK_HERTZ": 5001e6,
		"DCGM_FI_DEV_FB_TOTAL": 15 * 1024,
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("%s = %v, want %v", n, got[n], w)
		}
	}
}

// The table's invariants: names unique; a row of a renamed field cites
// its source; every field served by default in one generation is served
// by default in all, under one name or another (a swap loses nothing).
func TestDCGMMetricsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range DCGMNames() {
		if seen[n] {
			t.Errorf("%s is in the table twice", n)
		}
		seen[n] = true
	}
	for _, m := range dcgmMetrics {
		if m.Default != 0 && m.Default&oldNames == 0 && m.Source == "" {
			t.Errorf("%s: a name new in 4.9 or 4.10 without a source", m.Name)
		}
		if m.Type != prometheus.CounterValue && m.Type != prometheus.GaugeValue {
			t.Errorf("%s: type %v", m.Name, m.Type)
		}
	}
	fieldsOf := func(g Generation) []telemetry.Field {
		var fs []telemetry.Field
		for _, m := range dcgmMetrics {
			if m.Default.has(g) && !slices.Contains(fs, m.Field) {
				fs = append(fs, m.Field)
			}
		}
		slices.Sort(fs)
		return fs
	}
	old := fieldsOf(Gen482)
	for g := range numGenerations {
		got := fieldsOf(g)
		for _, f := range old {
			if !slices.Contains(got, f) {
				t.Errorf("generation %s serves no name of %s by default", g, f)
			}
		}
	}
}

// generationRows are the lines of docs/dcgm-exporter.md's table of the
// names 4.9 renamed: the 4.8 name, the 4.9 name, its unit and the source
// it rests on, for each row of the tables with a source.
func generationRows() []string {
	type row struct{ old, new, unit, source string }
	var rows []row
	for _, m := range dcgmMetrics {
		if m.Source == "" {
			continue
		}
		old := "—"
		for _, o := range dcgmMetrics {
			if o.Field == m.Field && o.Source == "" && o.Name != m.Name {
				old = "`" + o.Name + "` (" + unitOrCount(o.Unit) + ")"
			}
		}
		rows = append(rows, row{old, m.Name, unitOrCount(m.Unit), m.Source})
	}
	for _, m := range xidMetrics {
		if m.Source != "" {
			rows = append(rows, row{"`" + xidMetrics[0].Name + "` (XID)", m.Name, "XID", m.Source})
		}
	}
	rows = append(rows, row{"`" + driverVersionLabel + "` (label)", systemDriverVersionLabel, "label",
		header(3694, "`DCGM_FI_DRIVER_VERSION` is an alias of `DCGM_FI_SYSTEM_DRIVER_VERSION` (1)")})
	var out []string
	for _, r := range rows {
		out = append(out, "| "+r.old+" | `"+r.new+"` | "+r.unit+" | "+r.source+" |")
	}
	return out
}

func unitOrCount(u string) string {
	if u == "" {
		return "count"
	}
	return u
}

// docs/dcgm-exporter.md's table of renamed fields is the code's.
func TestGenerationsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/dcgm-exporter.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Generations\n")
	if !ok {
		t.Fatal(`docs/dcgm-exporter.md has no "## Generations" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var got []string
	for _, l := range strings.Split(section, "\n") {
		if strings.HasPrefix(l, "| `DCGM_FI_") || strings.HasPrefix(l, "| — |") {
			got = append(got, l)
		}
	}
	want := generationRows()
	if !slices.Equal(got, want) {
		t.Errorf("docs/dcgm-exporter.md's renamed fields table differs from the code's; want:\n%s", strings.Join(want, "\n"))
	}
	for g := range numGenerations {
		if !strings.Contains(section, "| `"+g.String()+"` |") {
			t.Errorf("generation %s has no row in docs/dcgm-exporter.md's generations table", g)
		}
	}
}

// dcgm-exporter's XID families, when the field list names them: the
// XIDs of the window by XID, labelled with the window (a GPU with none
// in it: one series, 0, without xid), and every XID since start.
func TestXIDCountAndTotal(t *testing.T) {
	snap := testSnapshot()
	now := time.Now()
	snap.States[0].XID = &telemetry.XIDCounts{Last: 79, Counts: map[uint64]uint64{31: 2, 79: 1},
		Recent: []telemetry.XIDEvent{{XID: 31, At: now.Add(-20 * time.Minute)}, {XID: 31, At: now.Add(-time.Minute)}, {XID: 79, At: now.Add(-time.Second)}}}
	fields := []dcgmcsv.Field{{Name: "DCGM_EXP_XID_ERRORS_COUNT", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_EXP_XID_ERRORS_TOTAL", Type: dcgmcsv.TypeCounter}}
	if u := Unsupported(fields); len(u) != 0 {
		t.Fatalf("Unsupported = %v", u)
	}
	for _, c := range []struct {
		window time.Duration
		ms     string
		count  map[string]float64 // GPU 0's by xid
	}{
		{0, "300000", map[string]float64{"31": 1, "79": 1}}, // the default, 5 minutes
		{30 * time.Minute, "1800000", map[string]float64{"31": 2, "79": 1}},
		{30 * time.Second, "30000", map[string]float64{"79": 1}},
		{100 * time.Millisecond, "100", map[string]float64{"": 0}},
	} {
		col := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), nil),
			Options{Interval: time.Second, Counters: fields, XIDWindow: c.window})
		mfs := gather(t, col.Latest())
		// byGPU is each GPU's series by xid label ("" without one).
		byGPU := func(name string) map[string]map[string]float64 {
			out := map[string]map[string]float64{}
			for _, m := range mfs[name].GetMetric() {
				gpu, _ := labelOf(m, "gpu")
				xid, _ := labelOf(m, "xid")
				if out[gpu] == nil {
					out[gpu] = map[string]float64{}
				}
				out[gpu][xid] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				if name == "DCGM_EXP_XID_ERRORS_COUNT" {
					if w, _ := labelOf(m, "window_size_in_ms"); w != c.ms {
						t.Errorf("%s %v: window_size_in_ms=%q, want %s", name, m.GetLabel(), w, c.ms)
					}
				}
				if gpu == "0" {
					if pod, _ := labelOf(m, "pod"); pod != "inference-0" {
						t.Errorf("%s %v: not on the pod's series", name, m.GetLabel())
					}
				}
			}
			return out
		}
		count := byGPU("DCGM_EXP_XID_ERRORS_COUNT")
		if !maps.Equal(count["0"], c.count) {
			t.Errorf("window %v: GPU 0's count %v, want %v", c.window, count["0"], c.count)
		}
		// GPUs 1 (shared) and 2 (MIG-enabled) have no XIDs: a 0 on the
		// device series; a MIG instance has none of its own.
		for _, gpu := range []string{"1", "2"} {
			if want := map[string]float64{"": 0}; !maps.Equal(count[gpu], want) {
				t.Errorf("GPU %s's count %v, want %v", gpu, count[gpu], want)
			}
		}
		for _, m := range mfs["DCGM_EXP_XID_ERRORS_COUNT"].GetMetric() {
			if _, ok := labelOf(m, "GPU_I_ID"); ok {
				t.Errorf("a MIG instance's series: %v", m.GetLabel())
			}
		}
		total := byGPU("DCGM_EXP_XID_ERRORS_TOTAL")
		if got, want := total["0"], map[string]float64{"31": 2, "79": 1}; !maps.Equal(got, want) || len(total) != 1 {
			t.Errorf("total %v, want GPU 0's %v only", total, want)
		}
		if mfs["DCGM_EXP_XID_ERRORS_TOTAL"].GetType() != dto.MetricType_COUNTER {
			t.Errorf("DCGM_EXP_XID_ERRORS_TOTAL type %v", mfs["DCGM_EXP_XID_ERRORS_TOTAL"].GetType())
		}
	}
}

// The health fields, with -f, under both names and in each name's unit.
func TestHealthFieldsServedWithFieldList(t *testing.T) {
	snap := testSnapshot()
	for f, v := range map[telemetry.Field]float64{telemetry.ECCSBEVolatile: 3, telemetry.RetiredPagesDBE: 1,
		telemetry.PowerViolation: 1.5, telemetry.FanSpeed: 40, telemetry.PState: 8, telemetry.EnforcedPowerLimit: 65,
		telemetry.ClocksEventReasons: 0xA, telemetry.PowerMgmtLimit: 72.5, telemetry.ThermalViolation: 0.1 + 0.2} {
		snap.States[0].Set(f, v)
	}
	want := map[string]float64{
		"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 3, "DCGM_FI_DEV_RETIRED_DBE": 1, "DCGM_FI_DEV_PAGE_RETIRED_DBE_TOTAL": 1,
		"DCGM_FI_DEV_POWER_VIOLATION": 1.5e9, "DCGM_FI_DEV_FAN_SPEED": 40, "DCGM_FI_DEV_FAN_SPEED_RATIO": 0.4,
		"DCGM_FI_DEV_PSTATE": 8, "DCGM_FI_DEV_GPU_PSTATE": 8, "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": 65,
		"DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS": 65, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": 10, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 10,
		// Whole watts and whole nanoseconds, as DCGM writes them.
		"DCGM_FI_DEV_POWER_MGMT_LIMIT": 72, "DCGM_FI_DEV_THERMAL_VIOLATION": 300000000,
	}
	var fields []dcgmcsv.Field
	for n := range want {
		fields = append(fields, dcgmcsv.Field{Name: n, Type: dcgmcsv.TypeGauge})
	}
	c := NewCollector(attribution.NewAttributor(snapshots{snap}, nil, nil), Options{Interval: time.Second, Counters: fields})
	got := map[string]float64{}
	for n, mf := range gather(t, c.Latest()) {
		for _, m := range mf.GetMetric() {
			if gpu, _ := labelOf(m, "gpu"); gpu == "0" && strings.HasPrefix(n, "DCGM_") {
				got[n] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	for n, w := range want {
		if g, ok := got[n]; !ok || g != w {
			t.Errorf("%s = %v (served %v), want %v", n, g, ok, w)
		}
	}
}

// -o keeps its meaning in every generation: uuid and the old pod labels,
// beside the generation's host and driver labels.
func TestOldNamespaceInEveryGeneration(t *testing.T) {
	for g := range numGenerations {
		c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, testPods(t), nil),
			Options{Hostname: "node-a", Interval: time.Second, DriverVersion: "550.54.15", Generation: g, UseOldNamespace: true})
		mfs := gather(t, c.Latest())
		name := "DCGM_FI_DEV_GPU_UTIL"
		if g >= Gen49 {
			name = "DCGM_FI_DEV_GPU_UTIL_RATIO"
		}
		var held *dto.Metric
		for _, m := range mfs[name].GetMetric() {
			if p, _ := labelOf(m, "pod_name"); p == "inference-0" {
				held = m
			}
		}
		if held == nil {
			t.Fatalf("%s: no %s series with pod_name=inference-0", g, name)
		}
		for _, l := range []string{"uuid", "pod_namespace", "container_name", g.HostLabel(), g.driverLabel()} {
			if _, ok := labelOf(held, l); !ok {
				t.Errorf("%s: %s lacks %s: %v", g, name, l, held.GetLabel())
			}
		}
		for _, l := range []string{"UUID", "pod", "namespace"} {
			if _, ok := labelOf(held, l); ok {
				t.Errorf("%s: %s has %s with -o", g, name, l)
			}
		}
	}
}

// defaultList48 is the field list the image ships, both files of it.
func TestDefaultList48(t *testing.T) {
	want := slices.Clone(defaultList48)
	slices.Sort(want)
	for _, f := range []string{"default-counters.csv", "dcp-metrics-included.csv"} {
		fields, err := dcgmcsv.ReadFile("../../deploy/dcgm-exporter/" + f)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range fields {
			got = append(got, f.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s names %v, want %v", f, got, want)
		}
		if !isDefaultList48(fields) {
			t.Errorf("%s is not taken for the default list", f)
		}
	}
}

// profNames are the profiling fields of each generation's default list,
// written out apart from the table (4.9: dcgm_fields.h:3910-3914 aliases;
// 4.10: its release note), that GenerationList must give.
func profNames(g Generation) []string {
	switch {
	case g >= Gen410:
		return []string{"DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", "DCGM_FI_PROF_TENSOR_UTIL_RATIO", "DCGM_FI_PROF_DRAM_UTIL_RATIO",
			"DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND", "DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND"}
	case g >= Gen49:
		return []string{"DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", "DCGM_FI_PROF_TENSOR_UTIL_RATIO", "DCGM_FI_PROF_DRAM_UTIL_RATIO",
			"DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES"}
	}
	return defaultList48[len(defaultList48)-5:]
}

// The shipped 4.8 list, given with -f, serves each generation's default
// list from 4.9 on: the same families as no -f (less the agent's own
// PCIe throughputs, which the list leaves out), the PROF fields under the
// generation's names. Another list is untouched.
func TestGenerationList(t *testing.T) {
	fields, err := dcgmcsv.ReadFile("../../deploy/dcgm-exporter/dcp-metrics-included.csv")
	if err != nil {
		t.Fatal(err)
	}
	for g := range numGenerations {
		list, ok := GenerationList(fields, g)
		if ok != (g >= Gen49) {
			t.Errorf("%s: translated %v", g, ok)
		}
		names := func(mfs map[string]*dto.MetricFamily) []string {
			out := slices.Sorted(maps.Keys(mfs))
			return slices.DeleteFunc(out, func(n string) bool {
				return strings.HasPrefix(n, "DCGM_FI_DEV_PCIE_") && strings.HasSuffix(n, "_THROUGHPUT")
			})
		}
		if got, want := names(generationScrape(t, g, list)), names(generationScrape(t, g, nil)); !slices.Equal(got, want) {
			t.Errorf("%s: -f the shipped list serves %v, without -f %v", g, got, want)
		}
		if u := Unsupported(list); len(u) != 0 {
			t.Errorf("%s: unsupported %v, want none", g, u)
		}
		got, want := ProfilingNames(list), profNames(g)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: profiling fields %v, want %v", g, got, want)
		}
	}
	custom := []dcgmcsv.Field{{Name: "DCGM_FI_DEV_GPU_UTIL", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_FI_DEV_SM_CLOCK_HERTZ", Type: dcgmcsv.TypeGauge}}
	if list, ok := GenerationList(custom, Gen410); ok || !slices.Equal(list, custom) {
		t.Errorf("a custom list was rewritten: %v", list)
	}
	if got := OldNames(custom, Gen49); !slices.Equal(got, []string{"DCGM_FI_DEV_GPU_UTIL"}) {
		t.Errorf("OldNames = %v", got)
	}
	if got := OldNames(custom, Gen48); got != nil {
		t.Errorf("OldNames under 4.8 = %v", got)
	}
}
