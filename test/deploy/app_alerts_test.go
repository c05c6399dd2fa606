package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The app-scraping alerts, evaluated by promtool on deploy/'s own rules:
// a scrape failing by one reason for 10 minutes fires
// GPUAgentAppScrapeFailing (one that recovers does not), and an opted-in
// pod left unscraped for 10 minutes fires GPUAgentAppTargetNotScraped.
func TestAppAlertsFire(t *testing.T) {
	tests := `rule_files: [rules.yaml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'gpu_agent_app_scrape_errors_total{node="n1", reason="timeout"}'
        values: '0+1x80'
      - series: 'gpu_agent_app_scrape_errors_total{node="n1", reason="parse"}'
        values: '0+1x10 11x70'
      - series: 'gpu_agent_app_scrape_errors_total{node="n1", reason="config"}'
        values: '0+1x80'
      - series: 'gpu_agent_app_targets{node="n1", state="invalid"}'
        values: '1x80'
      - series: 'gpu_agent_app_targets{node="n1", state="scraping"}'
        values: '3x80'
    alert_rule_test:
      - eval_time: 5m
        alertname: GPUAgentAppScrapeFailing
        exp_alerts: []
      - eval_time: 18m
        alertname: GPUAgentAppScrapeFailing
        exp_alerts:
          - exp_labels: {severity: warning, node: n1, reason: timeout}
            exp_annotations:
              summary: GPU agent on n1 cannot scrape an app (timeout)
              description: "App scrapes on node n1 have failed with timeout for 10 minutes (0.06666666666666667 a second); metric: app triggers answer from the last good values while they are in their window, then without that pod."
      - eval_time: 18m
        alertname: GPUAgentAppTargetNotScraped
        exp_alerts:
          - exp_labels: {severity: warning, node: n1, state: invalid}
            exp_annotations:
              summary: GPU agent on n1 does not scrape an opted-in pod (invalid)
              description: "1 pods on node n1 ask to be scraped (gpu-agent.io/scrape) but are not: a bad gpu-agent.io/ annotation (invalid; the agent logs which) or past --app.max-targets (over_limit)."
`
	promtoolTestRules(t, tests)
}

// promtoolTestRules runs promtool's rule unit tests (tests, a test file
// naming rule_files: [rules.yaml]) on the PrometheusRule groups of
// deploy/'s kustomize build.
func promtoolTestRules(t *testing.T, tests string) {
	t.Helper()
	promtool := testutil.RequireTool(t, "promtool", "prometheus")
	var groups []monitoringv1.RuleGroup
	for _, o := range kustomized(t, "deploy") {
		if pr, ok := o.Obj.(*monitoringv1.PrometheusRule); ok {
			groups = append(groups, pr.Spec.Groups...)
		}
	}
	dir := t.TempDir()
	y, err := sigsyaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), y, 0o600); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "rules.test.yaml")
	if err := os.WriteFile(f, []byte(tests), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}
