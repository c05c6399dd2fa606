package fleet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"regexp/syntax"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Metric is what a trigger scales on: one reading of the devices a pod holds.
type Metric uint8

// The metrics a trigger may name, in the units docs/stream-and-scaler.md
// documents.
const (
	GPUUtil        Metric = iota // percent, 0-100
	MemCopyUtil                  // percent, 0-100
	EncUtil                      // percent, 0-100
	DecUtil                      // percent, 0-100
	FBUsedRatio                  // framebuffer used / total, 0-1
	EncoderFPS                   // frames per second, average over sessions
	EncoderLatency               // seconds, average over sessions

	// The GPU's own figures: no pod has a share of them, so every pod
	// holding the GPU reads the GPU's value; a MIG instance has none.
	Temperature       // degrees Celsius
	MemoryTemperature // degrees Celsius (HBM)
	Power             // watts
	PowerRatio        // power / enforced power limit, 0-1
	PCIeTX            // bytes per second
	PCIeRX            // bytes per second
	NVLink            // bytes per second, sent and received over all links
	// DCGM's profiling fields (the agent's --dcgm), ratios 0-1.
	GrEngineActive // time the graphics or compute engine is active
	SMActive       // cycles an SM has at least one warp assigned
	TensorActive   // cycles a tensor pipe is active
	DRAMActive     // cycles the memory interface is sending or receiving

	numMetrics
)

// metricSet holds a bit per metric.
type metricSet uint32

// A metricSet holds every metric.
const _ = uint(32 - numMetrics) // a compile error past 32 metrics

// has reports whether m is in the set.
func (s metricSet) has(m Metric) bool { return s&(1<<m) != 0 }

// deviceWide are the metrics that are figures of the whole GPU.
const deviceWide = metricSet(1<<Temperature | 1<<MemoryTemperature | 1<<Power | 1<<PowerRatio |
	1<<PCIeTX | 1<<PCIeRX | 1<<NVLink | 1<<GrEngineActive | 1<<SMActive | 1<<TensorActive | 1<<DRAMActive)

var metricNames = [numMetrics]string{
	GPUUtil:           "gpu_util",
	MemCopyUtil:       "mem_copy_util",
	EncUtil:           "enc_util",
	DecUtil:           "dec_util",
	FBUsedRatio:       "fb_used_ratio",
	EncoderFPS:        "encoder_fps",
	EncoderLatency:    "encoder_latency",
	Temperature:       "temperature",
	MemoryTemperature: "memory_temperature",
	Power:             "power",
	PowerRatio:        "power_ratio",
	PCIeTX:            "pcie_tx",
	PCIeRX:            "pcie_rx",
	NVLink:            "nvlink",
	GrEngineActive:    "gr_engine_active",
	SMActive:          "sm_active",
	TensorActive:      "tensor_active",
	DRAMActive:        "dram_active",
}

func (m Metric) String() string {
	if m < numMetrics {
		return metricNames[m]
	}
	return "unknown"
}

// Aggregation reduces the matching pods' values to the one number KEDA gets.
type Aggregation uint8

// The aggregations a trigger may name.
const (
	Avg Aggregation = iota
	Max
	Sum
	P95

	numAggregations
)

var aggregationNames = [numAggregations]string{Avg: "avg", Max: "max", Sum: "sum", P95: "p95"}

func (a Aggregation) String() string {
	if a < numAggregations {
		return aggregationNames[a]
	}
	return "unknown"
}

// Metadata keys of a trigger (ScaledObjectRef.scalerMetadata).
const (
	KeyMetric           = "metric"
	KeyPodPattern       = "podPattern"
	KeyNamespace        = "namespace"
	KeyAggregation      = "aggregation"
	KeyTarget           = "target"
	KeyActivationTarget = "activationTarget"
	KeyWindow           = "window"
	// metric: app only (app.go).
	KeyAppMetric = "appMetric"
	KeyAppLabels = "appLabels"
	KeyAppType   = "appType"
	KeyQuantile  = "quantile"
	KeyScale     = "scale"
)

// MetricApp is the metric value of a trigger on an app's own metric
// family, which the agents scrape from the node's pods.
const MetricApp = "app"

// kedaKeys are KEDA's own keys of an external trigger, which KEDA passes on
// in scalerMetadata; they are not ours to judge.
var kedaKeys = map[string]bool{"scalerAddress": true, "enableTLS": true, "unsafeSsl": true}

var ourKeys = []string{KeyMetric, KeyPodPattern, KeyNamespace, KeyAggregation, KeyTarget, KeyActivationTarget, KeyWindow,
	KeyAppMetric, KeyAppLabels, KeyAppType, KeyQuantile, KeyScale}

// appKeys are the keys that only metric: app takes.
var appKeys = []string{KeyAppMetric, KeyAppLabels, KeyAppType, KeyQuantile, KeyScale}

// MetadataError is a bad trigger: the key, its value and why. The KEDA
// server answers it with InvalidArgument.
type MetadataError struct {
	Key, Value, Why string
}

func (e *MetadataError) Error() string {
	return fmt.Sprintf("scalerMetadata %s=%q: %s", e.Key, e.Value, e.Why)
}

// Query is one parsed trigger: which pods, which metric, how reduced.
type Query struct {
	Metric           Metric
	Namespace        string
	PodPattern       string // as written; matched against the whole pod name
	Aggregation      Aggregation
	Target           float64
	ActivationTarget float64
	// Window, when not zero, aggregates every sample of the last Window
	// (the node's clock) instead of each pod's latest value.
	Window time.Duration
	// App is set for metric: app, a trigger on an app's own family; Metric
	// is then meaningless.
	App *AppQuery

	pod  *regexp.Regexp
	name string
	key  string // what the answer depends on: the aggregate's identity

	// Pod names repeat in every snapshot of every node: remembering the
	// answer per name costs a map lookup where the regexp costs a few
	// hundred ns, for each of thousands of pods on every evaluation.
	matched  sync.Map // pod name -> bool
	nMatched atomic.Int64
}

// maxMatchCache bounds the names a query remembers; past it, the regexp
// answers (pods churn: names of deleted pods are not worth keeping).
const maxMatchCache = 1 << 16

// Matches reports whether a pod is one of the query's.
func (q *Query) Matches(namespace, name string) bool {
	if namespace != q.Namespace {
		return false
	}
	if m, ok := q.matched.Load(name); ok {
		return m.(bool)
	}
	m := q.pod.MatchString(name)
	if q.nMatched.Add(1) <= maxMatchCache {
		q.matched.Store(name, m)
	}
	return m
}

// MetricName is stable and unique per trigger: readable parts for humans
// (kubectl get hpa), a hash of every part for uniqueness, since a regular
// expression is not a valid metric name.
func (q *Query) MetricName() string { return q.name }

// Active is KEDA's activation rule: strictly above the activation target.
func (q *Query) Active(value float64) bool { return value > q.ActivationTarget }

// DefaultPodPattern matches every pod of the namespace.
const DefaultPodPattern = ".*"

// ParseMetadata parses a trigger's metadata. defaultNamespace is the
// ScaledObject's; maxWindow bounds `window` (the history the scaler keeps).
// Keys KEDA resolved from the environment arrive as <key>FromEnv and count
// as <key>.
func ParseMetadata(md map[string]string, defaultNamespace string, maxWindow time.Duration) (*Query, error) {
	vals := make(map[string]string, len(md))
	keyOf := make(map[string]string, len(md)) // our key -> the key as written
	for k, v := range md {
		if kedaKeys[k] {
			continue
		}
		base := strings.TrimSuffix(k, "FromEnv")
		if !isOurKey(base) {
			return nil, &MetadataError{Key: k, Value: v, Why: "unknown key; known: " + strings.Join(ourKeys, ", ")}
		}
		if prev, dup := keyOf[base]; dup {
			return nil, &MetadataError{Key: k, Value: v, Why: "given twice, also as " + prev}
		}
		keyOf[base], vals[base] = k, v
	}
	bad := func(key, why string) error {
		k := keyOf[key]
		if k == "" {
			k = key
		}
		return &MetadataError{Key: k, Value: vals[key], Why: why}
	}
	q := &Query{Namespace: defaultNamespace, PodPattern: DefaultPodPattern}

	known := strings.Join(metricNames[:], ", ") + ", " + MetricApp
	m, ok := vals[KeyMetric]
	if !ok || m == "" {
		return nil, bad(KeyMetric, "required; one of "+known)
	}
	if m == MetricApp {
		a, err := parseAppQuery(vals, bad)
		if err != nil {
			return nil, err
		}
		q.App = a
	} else {
		if q.Metric, ok = lookup[Metric](metricNames[:], m); !ok {
			return nil, bad(KeyMetric, "unknown metric; one of "+known)
		}
		for _, k := range appKeys {
			if _, ok := vals[k]; ok {
				return nil, bad(k, "only with metric: app")
			}
		}
	}
	if v, ok := vals[KeyNamespace]; ok {
		q.Namespace = v
	}
	if q.Namespace == "" {
		return nil, bad(KeyNamespace, "empty, and the ScaledObject has no namespace")
	}
	if len(q.Namespace) > 63 || !dnsLabel.MatchString(q.Namespace) {
		return nil, bad(KeyNamespace, "not a namespace name (a DNS label)")
	}
	if v, ok := vals[KeyPodPattern]; ok {
		if v == "" {
			return nil, bad(KeyPodPattern, "empty; leave the key out to match every pod")
		}
		q.PodPattern = v
	}
	// The pattern must compile on its own first: wrapped unchecked, one
	// such as "a)|(b" would close the group and escape the anchors.
	_, err := regexp.Compile(q.PodPattern)
	var re *regexp.Regexp
	if err == nil {
		re, err = regexp.Compile(`^(?:` + q.PodPattern + `)$`)
	}
	if err != nil {
		return nil, bad(KeyPodPattern, "not an RE2 regular expression: "+unwrapRegexp(err))
	}
	q.pod = re
	if v, ok := vals[KeyAggregation]; ok {
		a, ok := lookup[Aggregation](aggregationNames[:], v)
		if !ok {
			return nil, bad(KeyAggregation, "one of avg, max, sum, p95")
		}
		q.Aggregation = a
	}
	v, ok := vals[KeyTarget]
	if !ok {
		return nil, bad(KeyTarget, "required")
	}
	if q.Target, err = parseNumber(v); err != nil || q.Target <= 0 {
		return nil, bad(KeyTarget, "must be a number above 0")
	}
	if v, ok := vals[KeyActivationTarget]; ok {
		if q.ActivationTarget, err = parseNumber(v); err != nil || q.ActivationTarget < 0 {
			return nil, bad(KeyActivationTarget, "must be a number, 0 or above")
		}
	}
	if v, ok := vals[KeyWindow]; ok {
		w, err := parseWindow(v)
		if err != nil {
			return nil, bad(KeyWindow, err.Error())
		}
		if w > maxWindow {
			return nil, bad(KeyWindow, fmt.Sprintf("longer than the scaler's --window.max (%s)", maxWindow))
		}
		q.Window = w
	}
	if q.App != nil {
		if err := q.App.finish(q, vals, bad, maxWindow); err != nil {
			return nil, err
		}
	}
	q.name = metricName(q)
	q.key = fmt.Sprintf("%d\x00%s\x00%s\x00%d\x00%d", q.Metric, q.Namespace, q.PodPattern, q.Aggregation, q.Window)
	if q.App != nil {
		q.key += "\x00app\x00" + q.App.key()
	}
	return q, nil
}

func isOurKey(k string) bool {
	for _, o := range ourKeys {
		if k == o {
			return true
		}
	}
	return false
}

func lookup[T ~uint8](names []string, s string) (T, bool) {
	for i, n := range names {
		if n == s {
			return T(i), true
		}
	}
	return 0, false
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func parseNumber(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, err
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New("not finite")
	}
	return f, nil
}

// parseWindow takes seconds ("10", "0.5") or a Go duration ("10s", "500ms").
func parseWindow(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := time.ParseDuration(s)
	if err != nil {
		f, ferr := parseNumber(s)
		if ferr != nil || f > math.MaxInt64/float64(time.Second) {
			return 0, errors.New("must be seconds (10) or a duration (10s)")
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

// unwrapRegexp keeps regexp's reason but not its repetition of the pattern.
func unwrapRegexp(err error) string {
	var re *syntax.Error
	if errors.As(err, &re) {
		return string(re.Code)
	}
	return err.Error()
}

var nameUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

func metricName(q *Query) string {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%d", q.Metric, q.Namespace, q.PodPattern, q.Aggregation, q.Window)
	if q.App != nil {
		fmt.Fprintf(h, "\x00app\x00%s", q.App.key())
	}
	readable := strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(q.PodPattern), "-"), "-")
	if len(readable) > 24 {
		readable = strings.Trim(readable[:24], "-")
	}
	parts := []string{"gpu", strings.ReplaceAll(q.Metric.String(), "_", "-"), q.Aggregation.String()}
	if q.App != nil {
		parts = []string{"app", strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(q.App.Family), "-"), "-"), q.App.reduction(q)}
	}
	if q.Window > 0 {
		parts = append(parts, "w"+strconv.FormatInt(int64(q.Window/time.Millisecond), 10)+"ms")
	}
	parts = append(parts, q.Namespace)
	if readable != "" {
		parts = append(parts, readable)
	}
	return fmt.Sprintf("%s-%08x", strings.Join(parts, "-"), h.Sum32())
}

// QueryCache parses each distinct trigger once: the HPA polls the same
// ScaledObjectRef every 15 s, and a regular expression is not free to
// compile. It is bounded: when full it starts over, which costs one parse
// per live trigger, rather than growing with every metadata edit ever seen.
type QueryCache struct {
	maxWindow time.Duration
	max       int
	onParse   func(*Query)

	mu      sync.Mutex
	entries map[string]cacheEntry
}

type cacheEntry struct {
	q   *Query
	err error
}

// NewQueryCache holds up to max parsed triggers. onParse, if not nil, sees
// every newly parsed query (the store sizes its history by their windows).
func NewQueryCache(maxWindow time.Duration, max int, onParse func(*Query)) *QueryCache {
	return &QueryCache{maxWindow: maxWindow, max: max, onParse: onParse, entries: make(map[string]cacheEntry)}
}

// Parse returns the query of a trigger, parsing it on first sight. Errors
// are cached too: a bad trigger is polled as often as a good one.
func (c *QueryCache) Parse(md map[string]string, namespace string) (*Query, error) {
	key := cacheKey(md, namespace)
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok {
		return e.q, e.err
	}
	q, err := ParseMetadata(md, namespace, c.maxWindow)
	if err == nil && c.onParse != nil {
		c.onParse(q)
	}
	c.mu.Lock()
	if len(c.entries) >= c.max {
		clear(c.entries)
	}
	c.entries[key] = cacheEntry{q, err}
	c.mu.Unlock()
	return q, err
}

// Len is the number of cached triggers.
func (c *QueryCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func cacheKey(md map[string]string, namespace string) string {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(namespace)
	for _, k := range keys {
		// NUL cannot appear in a Kubernetes string value's meaning here, so
		// the key is unambiguous.
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(md[k])
	}
	return b.String()
}
