// Package watchreq is what a WatchRequest asks of an agent's stream,
// validated: the pods, the device fields, the periods and the app
// families. The agent's stream (internal/stream) serves by it, and the
// scaler's fake agents (internal/fleet/scalertest) honour a request with
// it, so both read a request the same way.
package watchreq

import (
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// maxSelectors bounds a request's pod selectors, maxMaskPaths its device
// field names and maxAppFamilies its app families: each costs the agent
// work on every snapshot.
const (
	maxSelectors   = 256
	maxMaskPaths   = 256
	maxAppFamilies = 256
)

// MaxHeartbeat is the longest heartbeat the agent keeps to: a subscriber
// asking for a longer one still hears from an idle node every minute.
const MaxHeartbeat = time.Minute

// Filter is a WatchRequest, validated.
type Filter struct {
	Pods         *PodMatcher // nil: every pod
	Unattributed bool
	MinPeriod    time.Duration
	Heartbeat    time.Duration   // 0: a message per snapshot whatever passes
	Families     map[string]bool // app families; nil: none
	Mask         *FieldMask      // nil: every field
}

// Parse validates req; an invalid one is an InvalidArgument status.
func Parse(req *telemetryv1.WatchRequest) (*Filter, error) {
	f := &Filter{Unattributed: req.GetIncludeUnattributed()}
	var err error
	if pf := req.GetPodFilter(); pf != nil {
		f.Pods, err = selectorMatcher(pf.GetSelectors())
	} else {
		f.Pods, err = legacyMatcher(req.GetNamespace(), req.GetPodPattern())
	}
	if err != nil {
		return nil, err
	}
	if mp := req.GetMinPeriod(); mp != nil {
		if err := mp.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "min_period: %v", err)
		}
		if f.MinPeriod = mp.AsDuration(); f.MinPeriod < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "min_period %s: must not be negative", f.MinPeriod)
		}
	}
	if hb := req.GetHeartbeat(); hb != nil {
		if err := hb.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "heartbeat: %v", err)
		}
		if f.Heartbeat = hb.AsDuration(); f.Heartbeat < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "heartbeat %s: must not be negative", f.Heartbeat)
		}
	}
	if f.Pods != nil {
		f.Unattributed = false // the proto: ignored when filtering by pod
	}
	if f.Families, err = appFamilies(req.GetAppFamilies()); err != nil {
		return nil, err
	}
	if m := req.GetDeviceFields(); m != nil {
		if f.Mask, err = NewFieldMask(m.GetPaths()); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Settle fixes the periods against the agent's sampling interval: a
// positive min_period is at least the interval, and a heartbeat at least
// the effective min_period (never more often than data) and at most
// MaxHeartbeat.
func (f *Filter) Settle(interval time.Duration) {
	// Snapshots come one per interval, so a shorter period means every
	// snapshot; it would still let an apps_only message through on every
	// app scrape, many a second on a node of many targets. The interval
	// is the floor; 0 keeps its meaning (every snapshot, and every app
	// scrape at once).
	if f.MinPeriod > 0 && f.MinPeriod < interval {
		f.MinPeriod = interval
	}
	if f.Heartbeat > 0 {
		f.Heartbeat = min(max(f.Heartbeat, f.MinPeriod, interval), MaxHeartbeat)
	}
}

// Period is what a message tells the subscriber of the next one's latest
// arrival: the heartbeat after a message in which nothing passed, the
// data period otherwise.
func (f *Filter) Period(interval time.Duration, empty bool) time.Duration {
	if empty && f.Heartbeat > 0 {
		return f.Heartbeat
	}
	return max(f.MinPeriod, interval)
}

// MatchPod reports whether a pod passes the filter.
func (f *Filter) MatchPod(namespace, name string) bool {
	return f.Pods == nil || f.Pods.Match(namespace, name)
}

// familyName is what a Prometheus metric family may be called (the
// legacy character set; apps that use UTF-8 names are not matched).
var familyName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

func appFamilies(names []string) (map[string]bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if len(names) > maxAppFamilies {
		return nil, status.Errorf(codes.InvalidArgument, "app_families: %d names, at most %d", len(names), maxAppFamilies)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		if !familyName.MatchString(n) {
			return nil, status.Errorf(codes.InvalidArgument, "app_families: %q is not a metric family name", n)
		}
		out[n] = true
	}
	return out, nil
}

// podMatcher is a set of selectors OR-ed, one expression per namespace:
// the patterns of a namespace are joined into one alternation, so a pod
// costs one match however many selectors name its namespace.
type PodMatcher struct {
	byNamespace map[string]*regexp.Regexp // "": any namespace; a nil expression: any pod
}

// Match reports whether the pod namespace/name passes a selector.
func (m *PodMatcher) Match(namespace, name string) bool {
	for _, ns := range [2]string{namespace, ""} {
		if re, ok := m.byNamespace[ns]; ok && (re == nil || re.MatchString(name)) {
			return true
		}
		if namespace == "" {
			break // both keys are ""
		}
	}
	return false
}

// legacyMatcher is namespace and pod_pattern: nil when neither is set.
func legacyMatcher(namespace, pattern string) (*PodMatcher, error) {
	if namespace == "" && pattern == "" {
		return nil, nil
	}
	m := &PodMatcher{byNamespace: map[string]*regexp.Regexp{namespace: nil}}
	if pattern != "" {
		re, err := anchored(pattern)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "pod_pattern %q: %v", pattern, err)
		}
		m.byNamespace[namespace] = re
	}
	return m, nil
}

// selectorMatcher is pod_filter's selectors; none matches no pod.
func selectorMatcher(sels []*telemetryv1.PodSelector) (*PodMatcher, error) {
	if len(sels) > maxSelectors {
		return nil, status.Errorf(codes.InvalidArgument, "pod_filter: %d selectors, at most %d", len(sels), maxSelectors)
	}
	patterns := map[string][]string{} // namespace -> patterns; a nil slice: any pod
	for i, s := range sels {
		p := s.GetPodPattern()
		if p != "" {
			if _, err := anchored(p); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "pod_filter.selectors[%d].pod_pattern %q: %v", i, p, err)
			}
		}
		ps, seen := patterns[s.GetNamespace()]
		switch {
		case seen && ps == nil: // already any pod
		case p == "":
			patterns[s.GetNamespace()] = nil
		default:
			patterns[s.GetNamespace()] = append(ps, p)
		}
	}
	m := &PodMatcher{byNamespace: make(map[string]*regexp.Regexp, len(patterns))}
	for ns, ps := range patterns {
		if ps == nil {
			m.byNamespace[ns] = nil
			continue
		}
		re, err := regexp.Compile(`^(?:(?:` + strings.Join(ps, `)|(?:`) + `))$`)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "pod_filter: the patterns of namespace %q: %v", ns, err)
		}
		m.byNamespace[ns] = re
	}
	return m, nil
}

// FieldMask is device_fields: what a masked subscriber gets of each
// device besides its identity, pods and state.
type FieldMask struct {
	device  []protoreflect.FieldDescriptor // Device fields to copy
	pod     []protoreflect.FieldDescriptor // Pod share fields to copy
	engines map[telemetryv1.Engine]bool    // samples of these engines; nil: no samples
	allPods bool                           // every Pod share field: the pods are shared as they are
}

var (
	deviceDesc = (&telemetryv1.Device{}).ProtoReflect().Descriptor()
	podDesc    = (&telemetryv1.Pod{}).ProtoReflect().Descriptor()
)

// Device fields every masked subscriber gets: what the device is and
// whether it reads at all.
var alwaysSent = map[protoreflect.Name]bool{
	"uuid": true, "gpu_index": true, "model_name": true, "pci_bus_id": true, "parent_uuid": true,
	"mig_profile": true, "gpu_instance_id": true, "pods": true, "stalled": true, "lost": true,
}

// utilEngines are the engines whose samples a utilization field brings.
var utilEngines = map[protoreflect.Name]telemetryv1.Engine{
	"gpu_util": telemetryv1.Engine_ENGINE_GPU, "mem_copy_util": telemetryv1.Engine_ENGINE_MEMORY,
	"enc_util": telemetryv1.Engine_ENGINE_ENCODER, "dec_util": telemetryv1.Engine_ENGINE_DECODER,
}

// NewFieldMask is the mask of device_fields paths; names it does not know
// (a newer subscriber's) are left out.
func NewFieldMask(paths []string) (*FieldMask, error) {
	if len(paths) > maxMaskPaths {
		return nil, status.Errorf(codes.InvalidArgument, "device_fields: %d paths, at most %d", len(paths), maxMaskPaths)
	}
	m := &FieldMask{}
	named := map[protoreflect.Name]bool{}
	for _, p := range paths {
		named[protoreflect.Name(p)] = true
	}
	for name := range named {
		fd := deviceDesc.Fields().ByName(name)
		if fd == nil || alwaysSent[name] || name == "samples" {
			continue // unknown here (a newer subscriber's), or sent anyway
		}
		m.device = append(m.device, fd)
		pn := name
		if pn == "encoder_latency_seconds" {
			if pd := podDesc.Fields().ByName("encoder_latency_max_seconds"); pd != nil {
				m.pod = append(m.pod, pd)
			}
		}
		if pd := podDesc.Fields().ByName(pn); pd != nil && !alwaysSentPod[pn] {
			m.pod = append(m.pod, pd)
		}
	}
	if named["samples"] {
		m.engines = map[telemetryv1.Engine]bool{}
		for name, e := range utilEngines {
			if named[name] {
				m.engines[e] = true
			}
		}
	}
	m.allPods = len(m.pod) == podDesc.Fields().Len()-len(alwaysSentPod)
	return m, nil
}

var alwaysSentPod = map[protoreflect.Name]bool{"namespace": true, "name": true, "container": true}

// Project is src with the mask's fields only. src is shared between
// subscribers and left untouched; the result shares its field values.
func (m *FieldMask) Project(src *telemetryv1.Device) *telemetryv1.Device {
	dst := &telemetryv1.Device{
		Uuid: src.Uuid, GpuIndex: src.GpuIndex, ModelName: src.ModelName, PciBusId: src.PciBusId,
		ParentUuid: src.ParentUuid, MigProfile: src.MigProfile, GpuInstanceId: src.GpuInstanceId,
		Stalled: src.Stalled, Lost: src.Lost,
	}
	if m.allPods {
		dst.Pods = src.Pods
	} else if len(src.Pods) > 0 {
		dst.Pods = make([]*telemetryv1.Pod, len(src.Pods))
		for i, p := range src.Pods {
			q := &telemetryv1.Pod{Namespace: p.Namespace, Name: p.Name, Container: p.Container}
			copyFields(q.ProtoReflect(), p.ProtoReflect(), m.pod)
			dst.Pods[i] = q
		}
	}
	copyFields(dst.ProtoReflect(), src.ProtoReflect(), m.device)
	for _, es := range src.Samples {
		if m.engines[es.GetEngine()] {
			dst.Samples = append(dst.Samples, es)
		}
	}
	return dst
}

func copyFields(dst, src protoreflect.Message, fields []protoreflect.FieldDescriptor) {
	for _, fd := range fields {
		if src.Has(fd) {
			dst.Set(fd, src.Get(fd))
		}
	}
}

// anchored compiles p to match whole names. p must compile on its own
// first: wrapped unchecked, a pattern such as "a)|(b" would close the
// group and escape the anchors (matching any name that starts with a).
func anchored(p string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(p); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + p + `)$`)
}
