package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/fleet"
)

// podTemplateMarker opens the pod template an example shows as a comment:
// the lines from it on that start with "#   ", less that prefix, are a
// Deployment (partial: what the agent's scrape needs of it). A comment, so
// that applying the example never rewrites the workload's own spec.
const podTemplateMarker = "#   apiVersion: apps/v1"

// commentedDeployment returns the Deployment an example shows in its
// comments, nil when it shows none.
func commentedDeployment(source string, raw []byte) (*appsv1.Deployment, error) {
	lines := strings.Split(string(raw), "\n")
	start := -1
	for i, l := range lines {
		if l == podTemplateMarker {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, nil
	}
	var doc strings.Builder
	for _, l := range lines[start:] {
		rest, ok := strings.CutPrefix(l, "#   ")
		if !ok {
			break
		}
		doc.WriteString(rest + "\n")
	}
	o, err := decodeStrict(source+" (commented Deployment)", []byte(doc.String()))
	if err != nil {
		return nil, err
	}
	dep, ok := o.Obj.(*appsv1.Deployment)
	if !ok {
		return nil, fmt.Errorf("%s: the commented object is a %s, want a Deployment", source, o.Kind)
	}
	return dep, nil
}

// checkAppTrigger checks a metric: app trigger against the Deployment
// whose pods it reads: the pods opt in with annotations the agent's own
// parser accepts (its floor, the DaemonSet's --app.interval as default),
// those keep the trigger's family, the trigger's podPattern and namespace
// select them, and the window holds two scrapes at least (a rate, or a
// histogram's increase, needs two points).
func checkAppTrigger(q *fleet.Query, dep *appsv1.Deployment, defInterval time.Duration) []error {
	if dep == nil {
		return []error{errors.New("metric: app, but the example shows no Deployment with the gpu-agent.io/ annotations its pods need")}
	}
	pod := app.PodInfo{
		Namespace: dep.Namespace, Name: dep.Name + "-7c9d8f6b5-x2x4q", UID: "uid",
		Phase: "Running", IP: "10.0.0.1", Annotations: map[string]string{},
	}
	for k, v := range dep.Spec.Template.Annotations {
		if strings.HasPrefix(k, app.AnnotationPrefix) {
			pod.Annotations[k] = v
		}
	}
	for _, c := range dep.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			pod.Ports = append(pod.Ports, app.Port{Container: c.Name, Name: p.Name, Number: p.ContainerPort, Protocol: string(p.Protocol)})
		}
	}
	var errs []error
	tgt, err := app.ParseTarget(pod, app.MinInterval, defInterval)
	if err != nil {
		return append(errs, fmt.Errorf("Deployment %s/%s: the agent would not scrape its pods: %w", dep.Namespace, dep.Name, err))
	}
	if !tgt.Families.MatchString(q.App.Family) {
		errs = append(errs, fmt.Errorf("appMetric %s: not kept by the pods' %s=%q", q.App.Family, app.AnnotationFamilies, pod.Annotations[app.AnnotationFamilies]))
	}
	if !q.Matches(pod.Namespace, pod.Name) {
		errs = append(errs, fmt.Errorf("podPattern %q in namespace %s does not select pod %s/%s of the annotated Deployment", q.PodPattern, q.Namespace, pod.Namespace, pod.Name))
	}
	if q.Window < 2*tgt.Interval {
		errs = append(errs, fmt.Errorf("window %s: under two scrapes of the pods (%s=%s)", q.Window, app.AnnotationInterval, tgt.Interval))
	}
	return errs
}

// averageable reports whether a trigger's answer is a total over its
// pods, the only kind metricType AverageValue may take: the HPA divides
// it by the replicas.
func averageable(q *fleet.Query) bool {
	if q.App != nil {
		switch q.App.Type {
		case fleet.AppHistogram:
			return false // a quantile
		case fleet.AppCounter:
			return true // the rates summed
		}
	}
	return q.Aggregation == fleet.Sum
}

// The app checks can fail: a commented Deployment whose annotations the
// agent refuses, that does not keep the family, whose pods the pattern
// misses, a window of one scrape, a missing Deployment.
func TestCheckAppTriggerRejects(t *testing.T) {
	raw := []byte(strings.Join([]string{
		"#   apiVersion: apps/v1",
		"#   kind: Deployment",
		"#   metadata: {name: sfu, namespace: media}",
		"#   spec:",
		"#     template:",
		"#       metadata:",
		`#         annotations: {gpu-agent.io/scrape: "true", gpu-agent.io/port: metrics, gpu-agent.io/families: "livekit_rtt_ms", gpu-agent.io/interval: "1s"}`,
		"#       spec:",
		"#         containers: [{name: sfu, ports: [{name: metrics, containerPort: 6789}]}]",
		"# the end",
	}, "\n"))
	good := map[string]string{
		"metric": "app", "appMetric": "livekit_rtt_ms", "quantile": "0.95", "window": "10s",
		"podPattern": "sfu-.*", "target": "200",
	}
	parse := func(md map[string]string) *fleet.Query {
		t.Helper()
		q, err := fleet.ParseMetadata(md, "media", 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	dep, err := commentedDeployment("test", raw)
	if err != nil || dep == nil {
		t.Fatalf("commented Deployment: %v, %v", dep, err)
	}
	if errs := checkAppTrigger(parse(good), dep, time.Second); len(errs) > 0 {
		t.Fatalf("the good trigger: %v", errs)
	}
	with := func(k, v string) map[string]string {
		md := map[string]string{}
		for kk, vv := range good {
			md[kk] = vv
		}
		md[k] = v
		return md
	}
	for name, c := range map[string]struct {
		md  map[string]string
		raw string
	}{
		"family not kept":  {md: with("appMetric", "livekit_jitter_us")},
		"pods not matched": {md: with("podPattern", "other-.*")},
		"one scrape":       {md: with("window", "1s")},
		"bad annotation":   {md: good, raw: strings.Replace(string(raw), `interval: "1s"`, `interval: "1"`, 1)},
		"no such port":     {md: good, raw: strings.Replace(string(raw), "name: metrics, ", "", 1)},
	} {
		d := dep
		if c.raw != "" {
			if d, err = commentedDeployment(name, []byte(c.raw)); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if c.raw != "" && c.raw == string(raw) {
			t.Fatalf("%s: the replacement did not apply; fix the test", name)
		}
		errs := checkAppTrigger(parse(c.md), d, time.Second)
		if len(errs) == 0 {
			t.Errorf("%s: accepted", name)
		}
		t.Logf("%s: %v", name, errs)
	}
	if errs := checkAppTrigger(parse(good), nil, time.Second); len(errs) == 0 {
		t.Error("no Deployment: accepted")
	}
	if d, err := commentedDeployment("none", []byte("# nothing here\n")); d != nil || err != nil {
		t.Errorf("no marker: %v, %v", d, err)
	}
}

// exampleAppTrigger returns the first metric: app trigger of an example,
// parsed by the scaler's parser.
func exampleAppTrigger(t *testing.T, file string) *fleet.Query {
	t.Helper()
	f := filepath.Join(repo, "deploy", "examples", file)
	raw, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(f, raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		so, ok := o.Obj.(*kedav1alpha1.ScaledObject)
		if !ok {
			continue
		}
		for _, tr := range so.Spec.Triggers {
			if tr.Metadata["metric"] != fleet.MetricApp {
				continue
			}
			q, err := fleet.ParseMetadata(tr.Metadata, so.Namespace, time.Hour)
			if err != nil {
				t.Fatalf("%s: %v", o, err)
			}
			return q
		}
	}
	t.Fatalf("%s: no metric: app trigger", f)
	return nil
}
