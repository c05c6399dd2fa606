package deploy

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/scaler"
)

// family is a metric family someone exports, with the label names its
// series carry where a real scrape shows them (nil: documented only).
type family struct {
	source string
	labels map[string]bool
}

// targetLabels are the labels Prometheus adds to every scraped series of
// the ServiceMonitors here (job from the Service's app label, node from
// the relabeling), beside those the exporters write.
var targetLabels = []string{"job", "instance", "node", "endpoint", "service"}

// notOurs are the metrics the rules and the dashboard may name that
// neither the agent nor the scaler exports, each with where it comes
// from. Keep it short and explain each.
var notOurs = map[string]string{
	"up": "Prometheus: 1 when the target's last scrape succeeded",
	"kube_deployment_status_replicas_available":            "kube-state-metrics: the replicas of the scaled Deployment",
	"kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics: what KEDA's HPA asks for",
	"http_requests_total":                                  "the application's request counter, the conventional name: the default of the dashboard's $requests_counter",
	"http_request_duration_seconds_bucket":                 "the application's request latency histogram, the conventional name: the default of the dashboard's $latency_histogram",
}

var (
	metricsOnce sync.Once
	metricsSet  map[string]family
	metricsErr  error
)

// exported returns every metric family the agent and the scaler export:
// the agent's from its golden /metrics (test/testdata/metrics.golden,
// with each family's label names) and the tables of docs/metrics.md
// (families a simulated node does not produce, such as XID counters); the
// scaler's from its table there, which internal/scaler's
// TestMetricsDocumented holds equal to its registry.
func exported(t *testing.T) map[string]family {
	t.Helper()
	metricsOnce.Do(func() { metricsSet, metricsErr = loadExported() })
	if metricsErr != nil {
		t.Fatal(metricsErr)
	}
	return metricsSet
}

func loadExported() (map[string]family, error) {
	fams := map[string]family{}
	golden := filepath.Join(repo, "test", "testdata", "metrics.golden")
	f, err := os.Open(golden)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	types := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	series := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? `)
	labelName := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if fs := strings.Fields(rest); len(fs) == 2 {
				types[fs[0]] = fs[1]
				fams[fs[0]] = family{source: "metrics.golden", labels: map[string]bool{}}
			}
			continue
		}
		m := series.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[1]
		fam := name
		for _, suf := range []string{"_bucket", "_sum", "_count", "_total", "_created"} {
			if b, ok := strings.CutSuffix(name, suf); ok {
				if _, known := types[b]; known {
					fam = b
				}
			}
		}
		if _, ok := fams[name]; !ok {
			fams[name] = family{source: "metrics.golden", labels: map[string]bool{}}
		}
		for _, l := range labelName.FindAllStringSubmatch(m[3], -1) {
			fams[name].labels[l[1]] = true
			fams[fam].labels[l[1]] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(fams) < 20 {
		return nil, fmt.Errorf("%s: only %d families", golden, len(fams))
	}
	doc, err := os.ReadFile(filepath.Join(repo, "docs", "metrics.md"))
	if err != nil {
		return nil, err
	}
	row := regexp.MustCompile("(?m)^\\| `((?:gpu_agent|gpu_scaler|DCGM_FI_DEV)_[a-zA-Z0-9_]+)` \\| ([a-z]+ )?")
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		name := m[1]
		if _, ok := fams[name]; ok {
			continue
		}
		fams[name] = family{source: "docs/metrics.md"}
		if strings.TrimSpace(m[2]) == "histogram" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				fams[name+suf] = family{source: "docs/metrics.md"}
			}
		}
	}
	return fams, nil
}

var promqlParser = parser.NewParser(parser.Options{})

// checkExpr parses a PromQL expression and checks that every metric it
// selects is exported (or in notOurs) and that every label it matches
// on is one the family carries.
func checkExpr(t *testing.T, expr string) []error {
	t.Helper()
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		return []error{fmt.Errorf("%q: %w", expr, err)}
	}
	fams := exported(t)
	var errs []error
	for _, sel := range parser.ExtractSelectors(e) {
		var name string
		for _, m := range sel {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			errs = append(errs, fmt.Errorf("%q: a selector without a metric name: %v", expr, sel))
			continue
		}
		fam, ok := fams[name]
		if !ok {
			if _, ext := notOurs[name]; !ext {
				errs = append(errs, fmt.Errorf("%q: %s is exported by neither the agent nor the scaler", expr, name))
			}
			continue
		}
		if fam.labels == nil {
			continue
		}
		for _, m := range sel {
			if m.Name == model.MetricNameLabel || fam.labels[m.Name] || slices.Contains(targetLabels, m.Name) {
				continue
			}
			// A matcher that matches the empty string selects series
			// without the label: meaningful on a family that has it on
			// some series only, a mistake on one that never has it.
			errs = append(errs, fmt.Errorf("%q: %s has no label %s (it has %v)", expr, name, m.Name, keysOf(fam.labels)))
		}
	}
	return errs
}

func keysOf(m map[string]bool) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	slices.Sort(k)
	return k
}

// checkRules checks a set's PrometheusRules: expressions parse and name
// exported metrics and labels, every alert has a severity and a summary,
// and promtool (where installed; required under CI=true) accepts the
// groups, templates included.
func checkRules(t *testing.T, objs []object) {
	t.Helper()
	var n int
	for _, o := range objs {
		pr, ok := o.Obj.(*monitoringv1.PrometheusRule)
		if !ok {
			continue
		}
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				n++
				for _, err := range checkExpr(t, r.Expr.String()) {
					t.Errorf("%s alert %s: %v", o, r.Alert, err)
				}
				if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "") {
					t.Errorf("%s alert %s: no severity label or summary annotation", o, r.Alert)
				}
			}
		}
		promtoolCheckRules(t, pr)
	}
	if n == 0 {
		t.Error("no PrometheusRule rules")
	}
}

func promtoolCheckRules(t *testing.T, pr *monitoringv1.PrometheusRule) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found, and CI=true: install it (Debian: prometheus); .ci/run does")
		}
		t.Log("promtool not found: rules not checked by promtool (the PromQL parser still checked them)")
		return
	}
	y, err := sigsyaml.Marshal(map[string]any{"groups": pr.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), pr.Name+".rules.yaml")
	if err := os.WriteFile(f, y, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules (%s): %v\n%s", pr.Name, err, out)
	}
}

func TestAlertRules(t *testing.T) {
	objs := kustomized(t, "deploy")
	checkRules(t, objs)
	// The alerts the issue asks for, by what they watch.
	var exprs []string
	for _, o := range objs {
		if pr, ok := o.Obj.(*monitoringv1.PrometheusRule); ok {
			for _, g := range pr.Spec.Groups {
				for _, r := range g.Rules {
					exprs = append(exprs, r.Expr.String())
				}
			}
		}
	}
	all := strings.Join(exprs, "\n")
	for what, metric := range map[string]string{
		"agent down":                 `up{job="gpu-agent"}`,
		"sampling stalled":           "gpu_agent_last_sample_timestamp_seconds",
		"sampling slower":            "gpu_agent_sample_rate_hertz",
		"a GPU stalled":              "gpu_agent_device_stalled",
		"a GPU lost":                 "gpu_agent_device_up",
		"XID errors":                 "gpu_agent_xid_errors_total",
		"framebuffer nearly full":    "DCGM_FI_DEV_FB_FREE",
		"kubelet pod map stale":      "gpu_agent_kubelet_pod_map_stale",
		"the scaler's agent streams": "gpu_scaler_agents_connected",
	} {
		if !strings.Contains(all, metric) {
			t.Errorf("no alert on %s (%s)", what, metric)
		}
	}
}

// The check can fail: unknown metrics, labels a family does not have,
// and syntax errors are reported.
func TestCheckExprRejects(t *testing.T) {
	for _, bad := range []string{
		`gpu_agent_bogus_metric > 0`,
		`avg(DCGM_FI_DEV_GPU_UTIL{podd=~"inference-.*"})`,
		`rate(gpu_agent_samples_total[5m]`,
		`{__name__=~"gpu_agent_.*"}`,
	} {
		if errs := checkExpr(t, bad); len(errs) == 0 {
			t.Errorf("%s: accepted", bad)
		}
	}
	if errs := checkExpr(t, `avg(DCGM_FI_DEV_GPU_UTIL{pod=~"inference-.*"})`); len(errs) > 0 {
		t.Errorf("the README's query: %v", errs)
	}
}

// The examples' ScaledObjects: the prometheus trigger's query reduces to
// one value over metrics the agent exports; the external triggers point
// at the scaler's Service, with metadata the scaler's own parser accepts
// under deploy/'s --window.max, and metricType AverageValue only for a
// total; a metric: app trigger's pods opt in as the agent's own parser
// accepts (checkAppTrigger). Every file of deploy/examples, so that a new
// example is checked without being listed.
func TestScaledObjects(t *testing.T) {
	objs := kustomized(t, "deploy")
	var scalerAddr string
	for _, o := range objs {
		if o.Kind == "Service" && o.Name == "gpu-scaler" {
			scalerAddr = o.Name + "." + o.Namespace + ".svc.cluster.local:9500"
		}
	}
	sc := container(t, one[*appsv1.Deployment](t, objs, "Deployment", "gpu-scaler").Spec.Template.Spec, "gpu-scaler")
	scfg, err := scaler.ParseFlags(sc.Args, io.Discard)
	if err != nil {
		t.Fatalf("scaler args %v: %v", sc.Args, err)
	}
	acfg := agentConfig(t, container(t, one[*appsv1.DaemonSet](t, objs, "DaemonSet", "").Spec.Template.Spec, "gpu-agent"))
	files, _ := filepath.Glob(filepath.Join(repo, "deploy", "examples", "*.yaml"))
	types := map[string]bool{}
	var apps int
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sos, err := decodeAll(f, raw)
		if err != nil {
			t.Fatal(err)
		}
		dep, err := commentedDeployment(f, raw)
		if err != nil {
			t.Error(err)
		}
		for _, o := range sos {
			so, ok := o.Obj.(*kedav1alpha1.ScaledObject)
			if !ok {
				t.Errorf("%s: an example holds ScaledObjects only (show the workload's parts as comments)", o)
				continue
			}
			for i, tr := range so.Spec.Triggers {
				types[tr.Type] = true
				switch tr.Type {
				case "prometheus":
					q := tr.Metadata["query"]
					for _, err := range checkExpr(t, q) {
						t.Errorf("%s trigger %d: %v", o, i, err)
					}
					e, _ := promqlParser.ParseExpr(q)
					if a, ok := e.(*parser.AggregateExpr); !ok || len(a.Grouping) > 0 || a.Without {
						t.Errorf("%s trigger %d: %q does not reduce to one value", o, i, q)
					}
					if !strings.HasPrefix(tr.Metadata["serverAddress"], "http") || tr.Metadata["threshold"] == "" {
						t.Errorf("%s trigger %d: metadata %v", o, i, tr.Metadata)
					}
					if tr.MetricType == "AverageValue" || tr.MetricType == "" {
						t.Errorf("%s trigger %d: an average with metricType %q is divided by the replicas again", o, i, tr.MetricType)
					}
				case "external", "external-push":
					if tr.Metadata["scalerAddress"] != scalerAddr {
						t.Errorf("%s trigger %d: scalerAddress %s, the scaler is %s", o, i, tr.Metadata["scalerAddress"], scalerAddr)
					}
					q, err := fleet.ParseMetadata(tr.Metadata, so.Namespace, scfg.WindowMax)
					if err != nil {
						t.Errorf("%s trigger %d: %v", o, i, err)
						continue
					}
					// KEDA's default metricType is AverageValue.
					if (tr.MetricType == "AverageValue" || tr.MetricType == "") && !averageable(q) {
						t.Errorf("%s trigger %d: metricType %q divides the answer by the replicas; %s is not a total over the pods", o, i, tr.MetricType, q.MetricName())
					}
					if q.App != nil {
						apps++
						for _, err := range checkAppTrigger(q, dep, acfg.App.Interval) {
							t.Errorf("%s trigger %d: %v", o, i, err)
						}
					}
				default:
					t.Errorf("%s trigger %d: type %s", o, i, tr.Type)
				}
			}
		}
	}
	for _, want := range []string{"prometheus", "external", "external-push"} {
		if !types[want] {
			t.Errorf("no example ScaledObject with a %s trigger", want)
		}
	}
	if apps == 0 {
		t.Error("no example ScaledObject with a metric: app trigger")
	}
}
