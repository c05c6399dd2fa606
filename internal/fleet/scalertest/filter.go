package scalertest

import (
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// What an agent that honours its WatchRequest does with it, copied from
// the real agent's internal/stream (filter.go, message.go, stream.go's
// Watch), which exports none of it: that package serves snapshots of the
// sampler's types, not the proto's a test publishes here. The semantics
// are the same; TestFilter* in this package hold the copy to the
// documented contract (docs/stream-and-scaler.md, "The agent's stream").
// Two differences, both of the fake's plumbing: the fake keeps no
// history, so the samples of a snapshot lost from a slow subscriber's
// buffer are lost (the real agent reads them back from its history); and
// app scrapes come with the snapshots only (no apps_only messages).

// Request bounds, as the agent's.
const (
	maxSelectors   = 256
	maxMaskPaths   = 256
	maxAppFamilies = 256
	maxHeartbeat   = time.Minute
	maxSinceWindow = 1024 // snapshots whose samples a message may gather
)

var familyName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// filter is a WatchRequest, validated.
type filter struct {
	pods         *podMatcher // nil: every pod
	unattributed bool
	minPeriod    time.Duration
	heartbeat    time.Duration
	families     map[string]bool // nil: no app scrapes
	mask         *fieldMask      // nil: every field
}

func newFilter(req *telemetryv1.WatchRequest) (*filter, error) {
	f := &filter{unattributed: req.GetIncludeUnattributed()}
	var err error
	if pf := req.GetPodFilter(); pf != nil {
		f.pods, err = selectorMatcher(pf.GetSelectors())
	} else {
		f.pods, err = legacyMatcher(req.GetNamespace(), req.GetPodPattern())
	}
	if err != nil {
		return nil, err
	}
	if f.minPeriod, err = duration("min_period", req.GetMinPeriod()); err != nil {
		return nil, err
	}
	if f.heartbeat, err = duration("heartbeat", req.GetHeartbeat()); err != nil {
		return nil, err
	}
	if f.pods != nil {
		f.unattributed = false
	}
	if names := req.GetAppFamilies(); len(names) > 0 {
		if len(names) > maxAppFamilies {
			return nil, status.Errorf(codes.InvalidArgument, "app_families: %d names, at most %d", len(names), maxAppFamilies)
		}
		f.families = make(map[string]bool, len(names))
		for _, n := range names {
			if !familyName.MatchString(n) {
				return nil, status.Errorf(codes.InvalidArgument, "app_families: %q is not a metric family name", n)
			}
			f.families[n] = true
		}
	}
	if m := req.GetDeviceFields(); m != nil {
		if f.mask, err = newFieldMask(m.GetPaths()); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func duration(name string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "%s: %v", name, err)
	}
	if v := d.AsDuration(); v >= 0 {
		return v, nil
	}
	return 0, status.Errorf(codes.InvalidArgument, "%s %s: must not be negative", name, d.AsDuration())
}

// settle fixes the periods against the sampling interval: a positive
// min_period is at least the interval, a heartbeat at least the
// effective min_period and at most a minute.
func (f *filter) settle(interval time.Duration) {
	if f.minPeriod > 0 && f.minPeriod < interval {
		f.minPeriod = interval
	}
	if f.heartbeat > 0 {
		f.heartbeat = min(max(f.heartbeat, f.minPeriod, interval), maxHeartbeat)
	}
}

// period is the longest until the subscriber's next message.
func (f *filter) period(interval time.Duration, empty bool) time.Duration {
	if empty && f.heartbeat > 0 {
		return f.heartbeat
	}
	return max(f.minPeriod, interval)
}

func (f *filter) match(d *telemetryv1.Device) bool {
	if len(d.GetPods()) == 0 {
		return f.unattributed
	}
	if f.pods == nil {
		return true
	}
	for _, p := range d.GetPods() {
		if f.pods.match(p.GetNamespace(), p.GetName()) {
			return true
		}
	}
	return false
}

// due reports whether snap comes at least period after last on the
// sampler's clock, give or take half an interval of tick jitter.
func due(last, snap *telemetryv1.NodeSnapshot, period, interval time.Duration) bool {
	return period <= 0 || snap.GetSampleTime().AsTime().Sub(last.GetSampleTime().AsTime()) >= period-interval/2
}

// message is what the subscriber gets of snap, its previous message
// having been of last (nil: none yet), since holding the snapshots it
// was offered in between (their samples come along).
func (f *filter) message(snap, last *telemetryv1.NodeSnapshot, since []*telemetryv1.NodeSnapshot, interval time.Duration) *telemetryv1.NodeSnapshot {
	msg := &telemetryv1.NodeSnapshot{
		Node: snap.Node, Sequence: snap.Sequence, SampleTime: snap.SampleTime, Interval: snap.Interval,
		AgentStart: snap.AgentStart, PodsStale: snap.PodsStale,
	}
	if last != nil && snap.Sequence > last.Sequence+1 {
		msg.Skipped = snap.Sequence - last.Sequence - 1
	}
	for _, d := range snap.Devices {
		if !f.match(d) {
			continue
		}
		if len(since) > 0 && len(d.Samples) > 0 {
			d = withSamplesSince(d, since)
		}
		if f.mask != nil {
			d = f.mask.project(d)
		}
		msg.Devices = append(msg.Devices, d)
	}
	if f.families != nil {
		for _, a := range snap.Apps {
			if f.pods == nil || f.pods.match(a.GetNamespace(), a.GetPod()) {
				msg.Apps = append(msg.Apps, appScrape(a, f.families))
			}
		}
	}
	msg.Period = durationpb.New(f.period(interval, len(msg.Devices) == 0 && len(msg.Apps) == 0))
	return msg
}

// withSamplesSince is d with the samples of the same device in since
// (oldest first) before its own, engine by engine.
func withSamplesSince(d *telemetryv1.Device, since []*telemetryv1.NodeSnapshot) *telemetryv1.Device {
	byEngine := map[telemetryv1.Engine][]*telemetryv1.Sample{}
	for _, s := range since {
		for _, o := range s.Devices {
			if o.GetUuid() != d.GetUuid() {
				continue
			}
			for _, es := range o.Samples {
				byEngine[es.GetEngine()] = append(byEngine[es.GetEngine()], es.Samples...)
			}
		}
	}
	c := shallow(d)
	c.Samples = make([]*telemetryv1.EngineSamples, len(d.Samples))
	for i, es := range d.Samples {
		c.Samples[i] = &telemetryv1.EngineSamples{Engine: es.Engine,
			Samples: append(byEngine[es.GetEngine()], es.Samples...)}
	}
	return c
}

// shallow copies d's fields, sharing their values.
func shallow(d *telemetryv1.Device) *telemetryv1.Device {
	c := &telemetryv1.Device{}
	src, dst := d.ProtoReflect(), c.ProtoReflect()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	return c
}

func appScrape(a *telemetryv1.AppScrape, families map[string]bool) *telemetryv1.AppScrape {
	m := &telemetryv1.AppScrape{Namespace: a.Namespace, Pod: a.Pod, ScrapeTime: a.ScrapeTime, Error: a.Error}
	for _, fm := range a.Families {
		if families[fm.GetName()] {
			m.Families = append(m.Families, fm)
		}
	}
	return m
}

// podMatcher is a set of selectors OR-ed, one expression per namespace
// ("": any namespace; a nil expression: any pod).
type podMatcher struct {
	byNamespace map[string]*regexp.Regexp
}

func (m *podMatcher) match(namespace, name string) bool {
	for _, ns := range [2]string{namespace, ""} {
		if re, ok := m.byNamespace[ns]; ok && (re == nil || re.MatchString(name)) {
			return true
		}
		if namespace == "" {
			break
		}
	}
	return false
}

func legacyMatcher(namespace, pattern string) (*podMatcher, error) {
	if namespace == "" && pattern == "" {
		return nil, nil
	}
	m := &podMatcher{byNamespace: map[string]*regexp.Regexp{namespace: nil}}
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
func selectorMatcher(sels []*telemetryv1.PodSelector) (*podMatcher, error) {
	if len(sels) > maxSelectors {
		return nil, status.Errorf(codes.InvalidArgument, "pod_filter: %d selectors, at most %d", len(sels), maxSelectors)
	}
	patterns := map[string][]string{} // a nil slice: any pod
	for i, s := range sels {
		p := s.GetPodPattern()
		if p != "" {
			if _, err := anchored(p); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "pod_filter.selectors[%d].pod_pattern %q: %v", i, p, err)
			}
		}
		ps, seen := patterns[s.GetNamespace()]
		switch {
		case seen && ps == nil:
		case p == "":
			patterns[s.GetNamespace()] = nil
		default:
			patterns[s.GetNamespace()] = append(ps, p)
		}
	}
	m := &podMatcher{byNamespace: make(map[string]*regexp.Regexp, len(patterns))}
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

func anchored(p string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(p); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + p + `)$`)
}

// fieldMask is device_fields: what a masked subscriber gets of each
// device besides its identity, pods and state.
type fieldMask struct {
	device  []protoreflect.FieldDescriptor
	pod     []protoreflect.FieldDescriptor
	engines map[telemetryv1.Engine]bool // nil: no samples
	allPods bool
}

var (
	deviceDesc = (&telemetryv1.Device{}).ProtoReflect().Descriptor()
	podDesc    = (&telemetryv1.Pod{}).ProtoReflect().Descriptor()
)

var alwaysSent = map[protoreflect.Name]bool{
	"uuid": true, "gpu_index": true, "model_name": true, "pci_bus_id": true, "parent_uuid": true,
	"mig_profile": true, "gpu_instance_id": true, "pods": true, "stalled": true, "lost": true,
}

var alwaysSentPod = map[protoreflect.Name]bool{"namespace": true, "name": true, "container": true}

var utilEngines = map[protoreflect.Name]telemetryv1.Engine{
	"gpu_util": telemetryv1.Engine_ENGINE_GPU, "mem_copy_util": telemetryv1.Engine_ENGINE_MEMORY,
	"enc_util": telemetryv1.Engine_ENGINE_ENCODER, "dec_util": telemetryv1.Engine_ENGINE_DECODER,
}

func newFieldMask(paths []string) (*fieldMask, error) {
	if len(paths) > maxMaskPaths {
		return nil, status.Errorf(codes.InvalidArgument, "device_fields: %d paths, at most %d", len(paths), maxMaskPaths)
	}
	m := &fieldMask{}
	named := map[protoreflect.Name]bool{}
	for _, p := range paths {
		named[protoreflect.Name(p)] = true
	}
	for name := range named {
		fd := deviceDesc.Fields().ByName(name)
		if fd == nil || alwaysSent[name] || name == "samples" {
			continue
		}
		m.device = append(m.device, fd)
		if name == "encoder_latency_seconds" {
			m.pod = append(m.pod, podDesc.Fields().ByName("encoder_latency_max_seconds"))
		}
		if pd := podDesc.Fields().ByName(name); pd != nil && !alwaysSentPod[name] {
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

// project is src with the mask's fields only; src is left untouched.
func (m *fieldMask) project(src *telemetryv1.Device) *telemetryv1.Device {
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
