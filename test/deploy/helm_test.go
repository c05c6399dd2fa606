package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/gpu-telemetry/agent/internal/agent"
)

var chartDir = filepath.Join(repo, "deploy", "helm", "gpu-agent")

// valuesFile reads one of the chart's values files.
func valuesFile(t *testing.T, name string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := sigsyaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// render renders the chart with helm's own library as helm install
// --namespace gpu-agent gpu-agent would (the schema checked, then every
// template), and decodes every object strictly. It returns the error of
// the values or templates instead, when there is one.
func render(t *testing.T, release string, vals map[string]any) ([]object, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals,
		common.ReleaseOptions{Name: release, Namespace: "gpu-agent", Revision: 1, IsInstall: true},
		common.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(out))
	var objs []object
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		o, err := decodeAll(name, []byte(out[name]))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return objs, nil
}

func mustRender(t *testing.T, vals map[string]any) []object {
	t.Helper()
	objs, err := render(t, "gpu-agent", vals)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return objs
}

// helmLint runs helm lint's rules (chart file, values against the schema,
// templates rendered and parsed) and fails on a warning or an error.
func helmLint(t *testing.T, vals map[string]any) {
	t.Helper()
	l := lint.RunAll(chartDir, vals, "gpu-agent")
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m)
		}
	}
}

// comparable is an object less what only the chart adds: labels,
// annotations, the pod template's metadata, image tags and pull policies.
func comparable(t *testing.T, o object) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(o.JSON, &m); err != nil {
		t.Fatal(err)
	}
	md := m["metadata"].(map[string]any)
	delete(md, "labels")
	delete(md, "annotations")
	if spec, ok := m["spec"].(map[string]any); ok {
		if tpl, ok := spec["template"].(map[string]any); ok {
			delete(tpl, "metadata")
			ps := tpl["spec"].(map[string]any)
			for _, c := range ps["containers"].([]any) {
				c := c.(map[string]any)
				delete(c, "imagePullPolicy")
				img := c["image"].(string)
				c["image"] = img[:strings.LastIndex(img, ":")]
			}
		}
	}
	return m
}

// The chart's defaults render deploy/'s objects (less the Namespace,
// which helm install --create-namespace makes).
func TestHelmDefaultsAreTheKustomization(t *testing.T) {
	vals := map[string]any{}
	helmLint(t, vals)
	chartObjs := mustRender(t, vals)
	want := map[string]object{}
	for _, o := range kustomized(t, "deploy") {
		if o.Kind != "Namespace" {
			want[o.Kind+"/"+o.Name] = o
		}
	}
	got := map[string]object{}
	for _, o := range chartObjs {
		got[o.Kind+"/"+o.Name] = o
	}
	if k1, k2 := slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got)); !slices.Equal(k1, k2) {
		t.Fatalf("objects differ:\nkustomize %v\nhelm      %v", k1, k2)
	}
	for k, w := range want {
		if d := cmp.Diff(comparable(t, w), comparable(t, got[k])); d != "" {
			t.Errorf("%s differs (-kustomize +helm):\n%s", k, d)
		}
	}
	checkConsistent(t, deployment{name: "helm defaults", objs: chartObjs, scaler: true})
	checkRules(t, chartObjs)
}

// Every option on (ci/all-on-values.yaml): strict types, consistent with
// the binaries, and each option visible where it belongs.
func TestHelmAllOn(t *testing.T) {
	// helm lint coalesces the values in place (a null that drops a
	// default goes): each gets its own copy.
	helmLint(t, valuesFile(t, "ci/all-on-values.yaml"))
	objs := mustRender(t, valuesFile(t, "ci/all-on-values.yaml"))
	checkConsistent(t, deployment{name: "helm all on", objs: objs, scaler: true, migOn: true, webConfig: true})
	checkRules(t, objs)

	ds := one[*appsv1.DaemonSet](t, objs, "DaemonSet", "gpu-telemetry")
	c := container(t, ds.Spec.Template.Spec, "gpu-agent")
	for _, want := range []string{"--interval=100ms", "--utilization.window=15s", "--log.level=debug", "--log.format=logfmt",
		"--kubelet.gpu-resource-names=nvidia.com/t4", "--kubelet.max-stale=2m", "--web.config.file=/etc/gpu-agent/web/web-config.yml"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("agent args %v: no %s", c.Args, want)
		}
	}
	if got, want := appValues(agentConfig(t, c).App), appValuesOf(valuesFile(t, "ci/all-on-values.yaml")); !maps.Equal(got, want) {
		t.Errorf("the agent's --app.* flags read %v, the values say %v (args %v)", got, want, c.Args)
	}
	if env := envMap(t, c); env["GODEBUG"].Value != "madvdontneed=1" {
		t.Errorf("extraEnv not in the agent's env: %v", c.Env)
	}
	if c.Image != "registry.example.com/gpu-agent:v1.2.3" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("agent image %s %s", c.Image, c.ImagePullPolicy)
	}
	if got := c.Resources.Limits.Memory().String(); got != "384Mi" {
		t.Errorf("agent memory limit %s, want the values' 384Mi", got)
	}
	if ds.Spec.Template.Spec.NodeSelector["node-role.example.com/gpu"] != "" || len(ds.Spec.Template.Spec.NodeSelector) != 2 {
		t.Errorf("nodeSelector %v", ds.Spec.Template.Spec.NodeSelector)
	}
	if len(ds.Spec.Template.Spec.Tolerations) != 2 || ds.Spec.Template.Spec.Affinity == nil {
		t.Errorf("tolerations %v, affinity %v", ds.Spec.Template.Spec.Tolerations, ds.Spec.Template.Spec.Affinity)
	}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if len(p.HTTPGet.HTTPHeaders) != 1 || p.HTTPGet.HTTPHeaders[0].Name != "Authorization" {
			t.Errorf("probe %+v: no basic auth header", p.HTTPGet)
		}
	}
	var sec *corev1.Secret
	for _, o := range objs {
		if s, ok := o.Obj.(*corev1.Secret); ok {
			sec = s
		}
	}
	if sec == nil {
		t.Fatal("no web config Secret")
	}
	wc := sec.StringData["web-config.yml"]
	var web struct {
		TLS struct {
			Cert string `json:"cert_file"`
			Key  string `json:"key_file"`
		} `json:"tls_server_config"`
		Users map[string]string `json:"basic_auth_users"`
	}
	if err := sigsyaml.UnmarshalStrict([]byte(wc), &web); err != nil {
		t.Fatalf("web config %q: %v", wc, err)
	}
	if !strings.HasPrefix(web.Users["prometheus"], "$2") || web.TLS.Cert == "" {
		t.Errorf("web config %q: want a bcrypt hash for prometheus and a certificate", wc)
	}
	for _, f := range []string{web.TLS.Cert, web.TLS.Key} {
		if _, _, ok := mountFor(ds.Spec.Template.Spec, c, f); !ok {
			t.Errorf("web config names %s, under no mount", f)
		}
	}
	sm := one[*monitoringv1.ServiceMonitor](t, objs, "ServiceMonitor", "gpu-telemetry")
	ep := sm.Spec.Endpoints[0]
	if ep.BasicAuth == nil || ep.BasicAuth.Username.Name != sec.Name || ep.TLSConfig == nil {
		t.Errorf("ServiceMonitor endpoint %+v: want basic auth from %s and a TLS config", ep, sec.Name)
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v: no additionalLabels", sm.Labels)
	}
	dep := one[*appsv1.Deployment](t, objs, "Deployment", "gpu-telemetry-scaler")
	if sc := container(t, dep.Spec.Template.Spec, "gpu-scaler"); !slices.Contains(sc.Args, "--window.max=30s") || len(sc.Env) != 1 {
		t.Errorf("scaler args %v env %v: no extraArgs or extraEnv", sc.Args, sc.Env)
	}
}

// Options off: no scaler, no monitoring objects, no pod watch (and so no
// RBAC and no token).
func TestHelmOptionsOff(t *testing.T) {
	vals := map[string]any{
		"podWatch":       false,
		"scaler":         map[string]any{"enabled": false},
		"serviceMonitor": map[string]any{"enabled": false},
		"prometheusRule": map[string]any{"enabled": false},
	}
	helmLint(t, vals)
	objs := mustRender(t, vals)
	checkConsistent(t, deployment{name: "helm off", objs: objs, noServiceMonitor: true})
	kinds := byKind(objs)
	for _, k := range []string{"Deployment", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "ClusterRole", "ClusterRoleBinding", "Secret"} {
		if len(kinds[k]) > 0 {
			t.Errorf("%s rendered with its option off", k)
		}
	}
	ds := one[*appsv1.DaemonSet](t, objs, "DaemonSet", "")
	if c := container(t, ds.Spec.Template.Spec, "gpu-agent"); !slices.Contains(c.Args, "--kubernetes.pod-watch=false") || !slices.Contains(c.Args, "--app.enabled=false") {
		t.Errorf("pod watch off (and with it app scraping, which reads the pods from it), args %v", c.Args)
	}
	if a := ds.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
		t.Error("pod watch off, yet the service account token is mounted")
	}
}

// The schema refuses misspelt keys and bad values, and the templates
// refuse incomplete web configs.
func TestHelmValuesRejected(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"misspelt key":           {"intervall": "250ms"},
		"misspelt nested key":    {"serviceMonitor": map[string]any{"intervall": "5s"}},
		"bad duration":           {"interval": "250"},
		"bad port":               {"ports": map[string]any{"metrics": 70000, "grpc": 9401}},
		"bad log format":         {"logFormat": "text"},
		"extra arg not a flag":   {"extraArgs": []any{"simulate"}},
		"tls without its secret": {"webConfig": map[string]any{"tls": map[string]any{"enabled": true}}},
		"gRPC TLS, no secrets":   {"grpcTLS": map[string]any{"enabled": true}},
		"basic auth, no user":    {"webConfig": map[string]any{"basicAuth": map[string]any{"enabled": true, "password": "x"}}},
		"scaler replicas 0":      {"scaler": map[string]any{"replicas": 0}},
		"misspelt app key":       {"app": map[string]any{"intervall": "1s"}},
		"app bad duration":       {"app": map[string]any{"interval": "1"}},
		"app concurrency 0":      {"app": map[string]any{"concurrency": 0}},
		"app body under 1 KiB":   {"app": map[string]any{"maxBodyBytes": 100}},
	} {
		if _, err := render(t, "gpu-agent", vals); err == nil {
			t.Errorf("%s: rendered", name)
		} else {
			t.Logf("%s: %v", name, firstLine(err.Error()))
		}
	}
}

// The app block of values.yaml is the agent's own defaults, which the
// template leaves out of the arguments (deploy/'s DaemonSet has none):
// each one changed alone becomes its flag, and the agent reads it back.
func TestHelmAppFlags(t *testing.T) {
	def, err := agent.ParseFlags(nil, func(k string) string {
		if k == "NODE_NAME" {
			return "node-1"
		}
		return ""
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defaults := valuesFile(t, "values.yaml")["app"].(map[string]any)
	if got, want := appValuesOf(map[string]any{"app": defaults}), appValues(def.App); !maps.Equal(got, want) {
		t.Errorf("values.yaml app %v; the agent's defaults are %v", got, want)
	}
	// The agent's container, and its --app.* arguments.
	agentOf := func(vals map[string]any) (corev1.Container, []string) {
		t.Helper()
		ds := one[*appsv1.DaemonSet](t, mustRender(t, vals), "DaemonSet", "")
		c := container(t, ds.Spec.Template.Spec, "gpu-agent")
		var app []string
		for _, a := range c.Args {
			if strings.HasPrefix(a, "--app.") {
				app = append(app, a)
			}
		}
		return c, app
	}
	if _, a := agentOf(map[string]any{}); len(a) > 0 {
		t.Errorf("defaults render %v", a)
	}
	for key, c := range map[string]struct {
		value any
		arg   string
	}{
		"enabled":         {false, "--app.enabled=false"},
		"interval":        {"2s", "--app.interval=2s"},
		"timeout":         {"500ms", "--app.timeout=500ms"},
		"maxBodyBytes":    {1 << 20, "--app.max-body-bytes=1048576"},
		"maxSeriesPerPod": {10000, "--app.max-series-per-pod=10000"},
		"maxTargets":      {32, "--app.max-targets=32"},
		"concurrency":     {2, "--app.concurrency=2"},
	} {
		// Go ints, as --set gives them (values files give float64: TestHelmAllOn).
		ac, a := agentOf(map[string]any{"app": map[string]any{key: c.value}})
		if !slices.Equal(a, []string{c.arg}) {
			t.Errorf("app.%s=%v renders %v, want [%s]", key, c.value, a, c.arg)
		}
		if got, want := appValues(agentConfig(t, ac).App), fmt.Sprint(c.value); got[key] != want {
			t.Errorf("app.%s=%v: the agent reads %s", key, c.value, got[key])
		}
	}
}

// appValues is an agent's app configuration keyed and spelt as the
// chart's app values.
func appValues(a agent.AppConfig) map[string]string {
	return map[string]string{
		"enabled":         strconv.FormatBool(a.Enabled),
		"interval":        a.Interval.String(),
		"timeout":         a.Timeout.String(),
		"maxBodyBytes":    strconv.FormatInt(a.MaxBodyBytes, 10),
		"maxSeriesPerPod": strconv.Itoa(a.MaxSeriesPerPod),
		"maxTargets":      strconv.Itoa(a.MaxTargets),
		"concurrency":     strconv.Itoa(a.Concurrency),
	}
}

// appValuesOf reads a values file's app block as appValues spells it
// (YAML numbers decode as float64).
func appValuesOf(vals map[string]any) map[string]string {
	out := map[string]string{}
	for k, v := range vals["app"].(map[string]any) {
		switch v := v.(type) {
		case float64:
			out[k] = strconv.FormatInt(int64(v), 10)
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// A release with another name keeps the agent, its stream Service and
// the scaler pointing at each other.
func TestHelmOtherReleaseName(t *testing.T) {
	objs, err := render(t, "telemetry", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, deployment{name: "helm telemetry", objs: objs, scaler: true})
	var names []string
	for _, o := range objs {
		names = append(names, o.Kind+"/"+o.Name)
	}
	sort.Strings(names)
	if !slices.Contains(names, "DaemonSet/telemetry-gpu-agent") || !slices.Contains(names, "Deployment/telemetry-gpu-scaler") {
		t.Errorf("objects %v", names)
	}
}
