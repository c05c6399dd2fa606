package fleet

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func md(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestParseMetadata(t *testing.T) {
	q, err := ParseMetadata(md("scalerAddress", "gpu-scaler:9500", "metric", "enc_util", "podPattern", "webrtc-.*",
		"namespace", "media", "aggregation", "p95", "target", "60", "activationTarget", "20.5", "window", "5"), "default", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := Query{Metric: EncUtil, Namespace: "media", PodPattern: "webrtc-.*", Aggregation: P95, Target: 60, ActivationTarget: 20.5, Window: 5 * time.Second}
	if q.Metric != want.Metric || q.Namespace != want.Namespace || q.PodPattern != want.PodPattern || q.Aggregation != want.Aggregation ||
		q.Target != want.Target || q.ActivationTarget != want.ActivationTarget || q.Window != want.Window {
		t.Errorf("got %+v, want %+v", q, &want)
	}
	if !q.Matches("media", "webrtc-sfu-0") || q.Matches("media", "x-webrtc-sfu-0") || q.Matches("default", "webrtc-sfu-0") {
		t.Error("podPattern must match the whole name, in the namespace only")
	}

	// Defaults: the ScaledObject's namespace, every pod, avg, latest value.
	q, err = ParseMetadata(md("metric", "gpu_util", "target", "70"), "apps", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if q.Namespace != "apps" || q.PodPattern != ".*" || q.Aggregation != Avg || q.Window != 0 || q.ActivationTarget != 0 {
		t.Errorf("defaults: %+v", q)
	}
	// Every metric by name, and windows as durations.
	for m := range numMetrics {
		if q, err := ParseMetadata(md("metric", m.String(), "target", "1", "window", "1500ms"), "ns", time.Minute); err != nil || q.Metric != m || q.Window != 1500*time.Millisecond {
			t.Errorf("metric %s: %v %v", m, q, err)
		}
	}
	// <key>FromEnv is KEDA's resolved environment value.
	if q, err := ParseMetadata(md("metric", "gpu_util", "targetFromEnv", "42"), "ns", time.Minute); err != nil || q.Target != 42 {
		t.Errorf("targetFromEnv: %v %v", q, err)
	}
}

func TestParseMetadataErrors(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := md("metric", "gpu_util", "target", "70")
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<delete>" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	for _, tc := range []struct {
		name string
		md   map[string]string
		ns   string
		key  string
	}{
		{"no metric", base("metric", "<delete>"), "ns", "metric"},
		{"unknown metric", base("metric", "gpu_utilization"), "ns", "metric"},
		{"bad regexp", base("podPattern", "inference-(.*"), "ns", "podPattern"},
		{"empty pattern", base("podPattern", ""), "ns", "podPattern"},
		{"no namespace", base(), "", "namespace"},
		{"bad namespace", base("namespace", "Not_A_Namespace"), "ns", "namespace"},
		{"bad aggregation", base("aggregation", "median"), "ns", "aggregation"},
		{"no target", base("target", "<delete>"), "ns", "target"},
		{"target not a number", base("target", "seventy"), "ns", "target"},
		{"target zero", base("target", "0"), "ns", "target"},
		{"target negative", base("target", "-5"), "ns", "target"},
		{"target NaN", base("target", "NaN"), "ns", "target"},
		{"target Inf", base("target", "+Inf"), "ns", "target"},
		{"activation not a number", base("activationTarget", "x"), "ns", "activationTarget"},
		{"activation negative", base("activationTarget", "-1"), "ns", "activationTarget"},
		{"window not a duration", base("window", "soon"), "ns", "window"},
		{"window negative", base("window", "-3s"), "ns", "window"},
		{"window too long", base("window", "2m"), "ns", "window"},
		{"unknown key", base("podpattern", "x"), "ns", "podpattern"},
		{"key given twice", base("targetFromEnv", "3"), "ns", "target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMetadata(tc.md, tc.ns, time.Minute)
			var me *MetadataError
			if !errors.As(err, &me) {
				t.Fatalf("err = %v, want a MetadataError", err)
			}
			if !strings.HasPrefix(me.Key, tc.key) || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("err %q names key %q, want %q", err, me.Key, tc.key)
			}
		})
	}
}

func TestMetricNameStableAndUnique(t *testing.T) {
	parse := func(kv ...string) string {
		q, err := ParseMetadata(md(kv...), "ns", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return q.MetricName()
	}
	a := parse("metric", "gpu_util", "podPattern", "inference-.*", "target", "70")
	if a != parse("metric", "gpu_util", "podPattern", "inference-.*", "target", "80", "activationTarget", "3") {
		t.Error("the name depends on the target: the HPA would be rewritten on every target edit")
	}
	seen := map[string]bool{a: true}
	for _, kv := range [][]string{
		{"metric", "enc_util", "podPattern", "inference-.*", "target", "70"},
		{"metric", "gpu_util", "podPattern", "inference-.+", "target", "70"},
		{"metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "aggregation", "max"},
		{"metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "namespace", "other"},
		{"metric", "gpu_util", "podPattern", "inference-.*", "target", "70", "window", "5s"},
	} {
		n := parse(kv...)
		if seen[n] {
			t.Errorf("%v: name %q not unique", kv, n)
		}
		seen[n] = true
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				t.Fatalf("name %q has %q: not a valid external metric name", n, r)
			}
		}
	}
}

func TestQueryCache(t *testing.T) {
	var parsed int
	c := NewQueryCache(time.Minute, 2, func(*Query) { parsed++ })
	m := md("metric", "gpu_util", "target", "70")
	q1, _ := c.Parse(m, "a")
	q2, _ := c.Parse(md("target", "70", "metric", "gpu_util"), "a")
	if q1 != q2 || parsed != 1 {
		t.Errorf("same trigger parsed %d times", parsed)
	}
	if _, err := c.Parse(md("metric", "nope"), "a"); err == nil {
		t.Error("bad trigger accepted")
	}
	c.Parse(m, "b")
	if c.Len() > 2 {
		t.Errorf("cache holds %d, bound 2", c.Len())
	}
}

// The parser never panics, and whatever it accepts has a valid name and
// compiled pattern; whatever it rejects names a key.
func FuzzParseMetadata(f *testing.F) {
	f.Add("gpu_util", "inference-.*", "default", "avg", "70", "10", "5")
	f.Add("enc_util", "webrtc-(sfu|relay)-[0-9]+", "", "p95", "0.5", "", "1500ms")
	f.Add("fb_used_ratio", "(", "x", "sum", "NaN", "-1", "-1s")
	f.Add("encoder_latency", "", "UPPER", "max", "1e308", "1e309", "99999999999999999999")
	f.Fuzz(func(t *testing.T, metric, pattern, ns, agg, target, act, window string) {
		m := map[string]string{"metric": metric, "podPattern": pattern, "aggregation": agg, "target": target, "activationTarget": act, "window": window}
		q, err := ParseMetadata(m, ns, time.Minute)
		if err != nil {
			var me *MetadataError
			if !errors.As(err, &me) || me.Key == "" {
				t.Fatalf("error %v names no key", err)
			}
			return
		}
		if q.MetricName() == "" || q.pod == nil || q.Target <= 0 || q.Window < 0 || q.Window > time.Minute {
			t.Fatalf("accepted a bad query %+v", q)
		}
	})
}

// The metadata map as a whole, as KEDA hands it over: any keys (ours,
// KEDA's, their FromEnv forms, unknown ones) with any values. The parser
// never panics; an error names a key of the map; an accepted query has a
// name, a compiled pattern, a positive target and a window in bounds, and
// parsing the same map again gives the same name.
func FuzzParseMetadataMap(f *testing.F) {
	f.Add("metric=gpu_util\ntarget=70\npodPattern=inference-.*")
	f.Add("metric=app\nappMetric=lat_seconds\nappType=histogram\nquantile=0.99\ntarget=0.3\nwindow=10s")
	f.Add("metricFromEnv=enc_util\ntarget=50\nscalerAddress=x:9500\nenableTLS=true")
	f.Add("metric=gpu_util\nmetricFromEnv=gpu_util\ntarget=1")
	f.Add("metric=app\nappMetric=rooms\nappLabels=a=b,c!=d\nscale=0.001\ntarget=1e-300")
	f.Add("bogus=1\nmetric=gpu_util")
	f.Fuzz(func(t *testing.T, in string) {
		md := map[string]string{}
		for _, line := range strings.Split(in, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				md[k] = v
			}
		}
		q, err := ParseMetadata(md, "default", time.Minute)
		if err != nil {
			var me *MetadataError
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a MetadataError", err)
			}
			if _, ok := md[me.Key]; !ok && !isOurKey(me.Key) {
				t.Fatalf("error %v names key %q, neither in the map nor ours", err, me.Key)
			}
			return
		}
		if q.MetricName() == "" || q.pod == nil || !(q.Target > 0) || q.Window < 0 || q.Window > time.Minute {
			t.Fatalf("accepted a bad query %+v", q)
		}
		again, err := ParseMetadata(md, "default", time.Minute)
		if err != nil || again.MetricName() != q.MetricName() {
			t.Fatalf("parsed again: %v, name %q vs %q", err, again.MetricName(), q.MetricName())
		}
	})
}

// A pattern that compiles only once wrapped in ^(?:...)$ would escape the
// anchors ("x)|(.*" would match every pod): refused, naming the key.
func TestPodPatternCannotEscapeTheAnchors(t *testing.T) {
	for _, p := range []string{"x)|(.*", "inference-0)|(?:sfu-.*"} {
		_, err := ParseMetadata(map[string]string{"metric": "gpu_util", "target": "70", "podPattern": p}, "default", time.Minute)
		var me *MetadataError
		if !errors.As(err, &me) || me.Key != "podPattern" {
			t.Errorf("podPattern %q: %v, want an error naming podPattern", p, err)
		}
	}
}
