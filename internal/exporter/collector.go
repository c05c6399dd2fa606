// Package exporter serves the latest attributed snapshot as Prometheus
// metrics, drop-in compatible with dcgm-exporter's names and labels, plus
// the agent's own metrics of what a snapshot holds (the sampler's health,
// the processes no pod explains). A scrape reads one view
// (attribution.View) for everything it writes from the snapshot, and
// gathers the other subsystems' own collectors from the registry it is
// given: it never calls NVML or the kubelet.
package exporter

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Namespace prefixes every metric the agent adds beyond dcgm-exporter's.
const Namespace = "gpu_agent"

// BuildInfo describes the running binary.
type BuildInfo struct {
	Version, Revision string
}

// Options configures a Collector.
type Options struct {
	Hostname string // the host label's value: the node's name; "" leaves it out (--no-hostname)
	// Generation is the dcgm-exporter generation imitated: the host and
	// driver labels' names, and the default field names.
	Generation Generation
	Interval   time.Duration
	Build      BuildInfo

	// Counters is a dcgm-exporter field list (its -f file): if not nil,
	// only the listed fields are served (the agent's own families always
	// are), and its label rows that the agent can fill become labels of
	// every device series. Nil serves every field.
	Counters      []dcgmcsv.Field
	DriverVersion string // NVML's; the DCGM_FI_DRIVER_VERSION (DCGM_FI_SYSTEM_DRIVER_VERSION) label
	// XIDWindow is the window of DCGM_EXP_XID_ERRORS_COUNT (-x); 0 is
	// DefaultXIDWindow.
	XIDWindow time.Duration
	// UseOldNamespace names labels as dcgm-exporter's -o does: pod_name,
	// pod_namespace, container_name, and uuid for UUID.
	UseOldNamespace bool
	// Profiling says DCGM's profiling fields are read (--dcgm): without
	// it, those the field list names are gpu_agent_field_supported 0
	// under their DCGM names, as the fields the agent cannot serve are.
	Profiling bool
}

// Collector writes the metrics of attributed snapshots. It is not a
// prometheus.Collector: a scrape pins one view and writes it (Handler).
type Collector struct {
	views *attribution.Attributor // the snapshot joined with the pods
	// descs caches each Desc's name and help (see descNames); health
	// each GPU's health label sets (see healthLabelsOf).
	descs, health sync.Map
	opts          Options

	layout layout
	// extra are the values of the label fields after layout.device's
	// dcgm-exporter labels, the same for every device.
	extra []string

	// The device families, emitted once per pod holding the device;
	// families lists them all, in the order the text writer writes them.
	// dcgm are the rows of dcgmMetrics served (the field list's or the
	// generation's), in the table's order, each with its family; xid[i] is
	// xidMetrics[i]'s family, nil if it is not served.
	dcgm                            []servedMetric
	xid                             []*family
	expXIDCount, expXIDTotal        *family // DCGM_EXP_XID_ERRORS_COUNT and _TOTAL, nil unless listed
	xidWindowPair                   *dto.LabelPair
	encSessions, encFPS, encLatency *family
	// The per-pod encoder families, by codec: only on pod series of a GPU
	// with per-pod values.
	podEncSessions, podEncFPS, podEncLatency *family
	samplingPeriod                           *family
	windowMax, windowMean, windowN           *family
	families                                 []*family
	// unproduced are field label pairs of the field list's fields the
	// agent cannot produce: gpu_agent_field_supported 0 for each GPU.
	unproduced []*dto.LabelPair

	deviceUp, fieldSupported, readErrors, xidTotal *prometheus.Desc
	deviceStalled, migReadErrors                   *prometheus.Desc
	window, interval, ticks, missed, lastSample    *prometheus.Desc
	sampleRate, nvmlUp, nvmlReinits                *prometheus.Desc
	buildInfo                                      *prometheus.Desc
	unattributed, unattributedLoad                 *prometheus.Desc
}

// NewCollector returns a collector of the views views gives.
func NewCollector(views *attribution.Attributor, opts Options) *Collector {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	// Without a field list, the default one's label row: default-counters.csv
	// labels every series with the driver's version.
	labels := opts.Counters
	if labels == nil {
		labels = []dcgmcsv.Field{{Name: opts.Generation.driverLabel(), Type: dcgmcsv.TypeLabel}}
	}
	var names, extra []string
	for _, f := range labels {
		// An unknown value leaves the label out, as dcgm-exporter does
		// with a blank field.
		if fill, ok := labelFields[f.Name]; ok && f.Type == dcgmcsv.TypeLabel && fill(&opts) != "" {
			names = append(names, f.Name)
			extra = append(extra, fill(&opts))
		}
	}
	l := newLayout(&opts, names)
	id := l.id
	newFamily := l.newFamily
	c := &Collector{
		views:  views,
		opts:   opts,
		layout: l,
		extra:  extra,

		encSessions:    newFamily(name("encoder_sessions"), "Active NVENC encoder sessions.", prometheus.GaugeValue),
		encFPS:         newFamily(name("encoder_fps"), "Average frames per second over the active encoder sessions.", prometheus.GaugeValue),
		encLatency:     newFamily(name("encoder_latency_seconds"), "Average encode latency over the active encoder sessions.", prometheus.GaugeValue),
		podEncSessions: newFamily(name("pod_encoder_sessions"), "The pod's own active NVENC encoder sessions, by codec.", prometheus.GaugeValue, "codec"),
		podEncFPS: newFamily(name("pod_encoder_fps"),
			"Average frames per second over the pod's own encoder sessions of the codec.", prometheus.GaugeValue, "codec"),
		podEncLatency: newFamily(name("pod_encoder_latency_seconds"),
			"Encode latency of the pod's own sessions of the codec: the mean over sessions (stat=mean) or the worst session's (stat=max).",
			prometheus.GaugeValue, "codec", "stat"),
		samplingPeriod: newFamily(name("utilization_sampling_period_seconds"),
			"Period over which the driver computed the engine's utilization.", prometheus.GaugeValue, "engine"),
		windowMax: newFamily(name("utilization_window_max_ratio"),
			"Highest hardware utilization sample of the engine within the window (gpu_agent_utilization_window_seconds).", prometheus.GaugeValue, "engine"),
		windowMean: newFamily(name("utilization_window_mean_ratio"),
			"Mean of the engine's hardware utilization samples within the window.", prometheus.GaugeValue, "engine"),
		windowN: newFamily(name("utilization_window_samples"),
			"Hardware utilization samples of the engine within the window.", prometheus.GaugeValue, "engine"),

		deviceUp:       prometheus.NewDesc(name("device_up"), "1 while the GPU answers NVML, 0 while NVML reports it lost or the driver unavailable.", id, nil),
		fieldSupported: prometheus.NewDesc(name("field_supported"), "1 if the GPU answers the field; unsupported fields are probed once and left out.", append(id[:2:2], "field"), nil),
		readErrors:     prometheus.NewDesc(name("read_errors_total"), "Failed NVML reads of the field (unsupported fields excluded).", append(id[:2:2], "field"), nil),
		xidTotal:       prometheus.NewDesc(name("xid_errors_total"), "XID critical errors seen since the agent started, by XID.", append(id[:2:2], "xid"), nil),
		deviceStalled: prometheus.NewDesc(name("device_stalled"),
			"1 while a read of the GPU has not returned for more than 2 sampling intervals; its device series are absent meanwhile.", id, nil),
		migReadErrors: prometheus.NewDesc(name("mig_read_errors_total"), "Failed NVML reads of the GPU's MIG instances.", id, nil),
		sampleRate:    prometheus.NewDesc(name("sample_rate_hertz"), "Achieved sampling rate over the latest ticks; below 1/gpu_agent_sampling_interval_seconds when ticks are missed.", nil, nil),
		window:        prometheus.NewDesc(name("utilization_window_seconds"), "Span of the utilization window metrics.", nil, nil),
		interval:      prometheus.NewDesc(name("sampling_interval_seconds"), "Configured time between two samples.", nil, nil),
		ticks:         prometheus.NewDesc(name("samples_total"), "Sampling ticks taken.", nil, nil),
		missed:        prometheus.NewDesc(name("missed_samples_total"), "Sampling intervals since the first tick that produced no snapshot.", nil, nil),
		lastSample:    prometheus.NewDesc(name("last_sample_timestamp_seconds"), "When the latest sample started, as a Unix time.", nil, nil),
		nvmlUp: prometheus.NewDesc(name("nvml_up"),
			"1 while NVML answers; 0 while it answers that the driver is unavailable and the agent initialises it again (every GPU is then lost).", nil, nil),
		nvmlReinits: prometheus.NewDesc(name("nvml_reinits_total"),
			"Times NVML was shut down and initialised again after the driver went away and came back.", nil, nil),

		unattributed: prometheus.NewDesc(name("unattributed_processes"),
			"Processes on the GPU that are in none of the pods holding it (host processes, other pods, PIDs gone before their pod was read); left out of the per-pod shares.", id, nil),
		unattributedLoad: prometheus.NewDesc(name("unattributed_utilization_ratio"),
			"The part of the engine's utilization that the processes of the pods holding the GPU do not explain (host processes, other pods, PIDs whose pod is not known); never below 0.",
			append(id[:2:2], "engine"), nil),
		buildInfo: prometheus.NewDesc(name("build_info"), "Build of the running agent; always 1.",
			[]string{"version", "revision", "goversion"}, nil),
	}
	// A name is served if the field list names it or, without one, if
	// the generation's default list has it.
	listed := func(name string, def genSet) bool {
		if opts.Counters == nil {
			return def.has(opts.Generation)
		}
		return slices.ContainsFunc(opts.Counters, func(f dcgmcsv.Field) bool {
			return f.Name == name && f.Type != dcgmcsv.TypeLabel
		})
	}
	for i := range dcgmMetrics {
		if m := &dcgmMetrics[i]; listed(m.Name, m.Default) {
			f := newFamily(m.Name, m.Help, m.Type)
			c.families = append(c.families, f)
			c.dcgm = append(c.dcgm, servedMetric{m, f})
		}
	}
	unproduced := Unsupported(opts.Counters)
	if !opts.Profiling {
		unproduced = append(unproduced, ProfilingNames(opts.Counters)...)
	}
	for _, n := range unproduced {
		c.unproduced = append(c.unproduced, &dto.LabelPair{Name: new("field"), Value: new(n)})
	}
	for _, m := range xidMetrics {
		var f *family
		if listed(m.Name, m.Default) {
			f = newFamily(m.Name, xidHelp, prometheus.GaugeValue, "err_code", "err_msg")
			c.families = append(c.families, f)
		}
		c.xid = append(c.xid, f)
	}
	if listed(xidCountName, 0) {
		c.expXIDCount = newFamily(xidCountName, xidCountHelp, prometheus.GaugeValue, "window_size_in_ms")
		c.families = append(c.families, c.expXIDCount)
	}
	if listed(xidTotalName, 0) {
		c.expXIDTotal = newFamily(xidTotalName, xidTotalHelp, prometheus.CounterValue, "xid")
		c.families = append(c.families, c.expXIDTotal)
	}
	if c.opts.XIDWindow <= 0 {
		c.opts.XIDWindow = DefaultXIDWindow
	}
	c.xidWindowPair = &dto.LabelPair{Name: new("window_size_in_ms"), Value: new(strconv.FormatInt(c.opts.XIDWindow.Milliseconds(), 10))}
	c.families = append(c.families, c.encSessions, c.encFPS, c.encLatency, c.podEncSessions, c.podEncFPS, c.podEncLatency, c.samplingPeriod, c.windowMax, c.windowMean, c.windowN)
	for i, f := range c.families {
		f.idx = i
		if f.typ == prometheus.CounterValue && strings.HasSuffix(f.name, "_total") {
			// The text writer writes OpenMetrics' counter suffix handling
			// for names without _total only (appendHeader).
			panic("exporter: device counter family named _total: " + f.name)
		}
	}
	return c
}

// target is one set of labels a device's metrics are emitted with: once
// per pod holding the device, or once without pod labels.
type target struct {
	labels   labelSet
	mig, pod bool
	meta     bool // pod labels beyond the layout's: pod_uid, the pod's labels (podlabels.go)
}

func (f *family) desc(t target) *prometheus.Desc {
	switch {
	case t.meta:
		return f.metaDesc(t)
	case t.mig && t.pod:
		return f.migPod
	case t.mig:
		return f.mig
	case t.pod:
		return f.gpuPod
	}
	return f.gpu
}

// with returns t with one more (static) label pair.
func (t target) with(p *dto.LabelPair) target {
	t.labels = t.labels.with(p)
	return t
}

// targets expands a device's labels into one target per pod that holds
// it. A GPU shared by several pods (time-slicing, MPS) is attributed to
// every one of them.
func targets(names, values []string, mig bool, pods []attribution.Pod, podNames []string) []target {
	if len(pods) == 0 {
		return []target{{labels: newLabelSet(names, values), mig: mig}}
	}
	names = append(names[:len(names):len(names)], podNames...)
	ts := make([]target, len(pods))
	for i, p := range pods {
		v := make([]string, len(values), len(names))
		copy(v, values)
		if p.Meta != nil {
			ts[i] = podMetaTarget(names, append(v, p.Namespace, p.Name, p.Container), p.Meta, mig)
			continue
		}
		ts[i] = target{labels: newLabelSet(names, append(v, p.Namespace, p.Name, p.Container)), mig: mig, pod: true}
	}
	return ts
}

// viewCollector is a prometheus.Collector of one view: what a scrape
// gathers through a registry.
type viewCollector struct {
	c       *Collector
	view    *attribution.View // nil before the first snapshot
	devices bool              // the device families too, not only the agent's own
}

// Describe sends nothing: the device families carry several label sets
// under one name (as dcgm-exporter's output does), which only an
// unchecked collector may do. Every metric still carries its own Desc, so
// a pedantic registry checks each of them.
func (vc viewCollector) Describe(chan<- *prometheus.Desc) {}

func (vc viewCollector) Collect(ch chan<- prometheus.Metric) {
	e := &emitter{ch: ch}
	vc.c.collectAgent(e, vc.view)
	if vc.devices && vc.view != nil {
		vc.c.collectTargets(e, vc.view)
	}
}

// gatherAgent gathers the agent's own families of view, for a scrape that
// writes the device families of the same view. It builds them as a
// registry would (families by name, each one's series by label values)
// but without one: a registry checks every series of every scrape for
// consistency, and the per-GPU health series (a gpu_agent_field_supported
// per field) made that most of a scrape's allocations. Every series is
// the Collector's own, and TestGatherAsRegistry holds the result to a
// registry's.
func (c *Collector) gatherAgent(view *attribution.View) ([]*dto.MetricFamily, error) {
	var fams []*dto.MetricFamily
	var slab []dto.Metric
	byDesc := map[*prometheus.Desc]*dto.MetricFamily{}
	var err error
	put := func(m prometheus.Metric) {
		desc := m.Desc()
		mf := byDesc[desc]
		if mf == nil {
			name, help, derr := c.descNames(desc)
			if derr != nil {
				err = derr
				return
			}
			mf = &dto.MetricFamily{Name: &name, Help: &help}
			byDesc[desc] = mf
			fams = append(fams, mf)
		}
		if len(slab) == cap(slab) {
			slab = make([]dto.Metric, 0, slabSize)
		}
		slab = append(slab, dto.Metric{})
		dm := &slab[len(slab)-1]
		if werr := m.Write(dm); werr != nil {
			err = werr
			return
		}
		if mf.Type == nil {
			switch {
			case dm.Counter != nil:
				mf.Type = &counterType
			case dm.Gauge != nil:
				mf.Type = &gaugeType
			default:
				mf.Type = &untypedType
			}
		}
		mf.Metric = append(mf.Metric, dm)
	}
	c.collectAgent(&emitter{fn: put}, view)
	// Descs of one name (one family under several label sets) merge.
	slices.SortStableFunc(fams, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	out := fams[:0]
	for _, mf := range fams {
		if n := len(out); n > 0 && out[n-1].GetName() == mf.GetName() {
			out[n-1].Metric = append(out[n-1].Metric, mf.Metric...)
			continue
		}
		out = append(out, mf)
	}
	for _, mf := range out {
		slices.SortStableFunc(mf.Metric, compareLabelValues)
	}
	return out, err
}

// The families' types, shared: never modified.
var (
	counterType = dto.MetricType_COUNTER
	gaugeType   = dto.MetricType_GAUGE
	untypedType = dto.MetricType_UNTYPED
)

// compareLabelValues orders series as a registry does: fewer labels
// first, then by each label's value in turn.
func compareLabelValues(a, b *dto.Metric) int {
	if len(a.Label) != len(b.Label) {
		return len(a.Label) - len(b.Label)
	}
	for i := range a.Label {
		if c := strings.Compare(a.Label[i].GetValue(), b.Label[i].GetValue()); c != 0 {
			return c
		}
	}
	return 0
}

// descNames reads a Desc's name and help, which client_golang keeps to
// itself but for its String form; each Desc is read once.
func (c *Collector) descNames(d *prometheus.Desc) (name, help string, err error) {
	if v, ok := c.descs.Load(d); ok {
		n := v.([2]string)
		return n[0], n[1], nil
	}
	s := d.String()
	rest, ok := strings.CutPrefix(s, "Desc{fqName: ")
	if ok {
		var q string
		if q, err = strconv.QuotedPrefix(rest); err == nil {
			name, _ = strconv.Unquote(q)
			rest, ok = strings.CutPrefix(rest[len(q):], ", help: ")
			if ok {
				if q, err = strconv.QuotedPrefix(rest); err == nil {
					help, _ = strconv.Unquote(q)
				}
			}
		}
	}
	if !ok || err != nil || name == "" {
		return "", "", fmt.Errorf("reading the name and help of %s", s)
	}
	c.descs.Store(d, [2]string{name, help})
	return name, help, nil
}

// Latest is a prometheus.Collector of the latest view, every family
// included: for tests and tools that want the registry's rendering of
// what a scrape writes (the text writer is held to it).
func (c *Collector) Latest() prometheus.Collector {
	return viewCollector{c: c, view: c.views.Latest(), devices: true}
}

// collectAgent emits the agent's own metrics and, from view, the
// sampler's health and what per-process attribution found.
func (c *Collector) collectAgent(e *emitter, view *attribution.View) {
	e.put(prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1,
		c.opts.Build.Version, c.opts.Build.Revision, runtime.Version()))
	e.put(prometheus.MustNewConstMetric(c.interval, prometheus.GaugeValue, c.opts.Interval.Seconds()))
	if view == nil {
		return
	}
	snap := view.Snapshot
	e.put(prometheus.MustNewConstMetric(c.window, prometheus.GaugeValue, snap.Window.Seconds()))
	e.put(prometheus.MustNewConstMetric(c.ticks, prometheus.CounterValue, float64(snap.Ticks)))
	e.put(prometheus.MustNewConstMetric(c.missed, prometheus.CounterValue, float64(snap.MissedTicks)))
	e.put(prometheus.MustNewConstMetric(c.sampleRate, prometheus.GaugeValue, snap.Rate))
	e.put(prometheus.MustNewConstMetric(c.lastSample, prometheus.GaugeValue, float64(snap.Time.UnixNano())/1e9))
	e.put(prometheus.MustNewConstMetric(c.nvmlUp, prometheus.GaugeValue, boolValue(!snap.NVMLDown)))
	e.put(prometheus.MustNewConstMetric(c.nvmlReinits, prometheus.CounterValue, float64(snap.NVMLReinits)))
	for i := range snap.Devices {
		c.collectHealth(e, &snap.Devices[i], &snap.States[i])
	}
	for i := range view.Devices {
		if d := &view.Devices[i]; d.ProcessesAttributed {
			id := newLabelSet(c.layout.id, []string{strconv.Itoa(d.GPU.Index), d.GPU.UUID})
			e.send(c.unattributed, prometheus.GaugeValue, id, float64(d.Unattributed))
			for eng := range telemetry.NumEngines {
				if v, ok := d.UnattributedLoad.Get(eng.Field()); ok {
					e.send(c.unattributedLoad, prometheus.GaugeValue, id.with(enginePairs[eng]), v/100)
				}
			}
		}
	}
}

// collectTargets emits the device families of every device whose reading
// is current (attribution.Device.Current decides which): a lost or stalled
// GPU's series are absent, not stale.
func (c *Collector) collectTargets(s sink, view *attribution.View) {
	for i := range view.Devices {
		if d := &view.Devices[i]; d.Current() {
			c.collectDevice(s, d)
		}
	}
}

// collectHealth emits whether the GPU answers and which fields it
// supports, by GPU only (never by pod).
func (c *Collector) collectHealth(e *emitter, d *telemetry.Device, st *telemetry.DeviceState) {
	hl := c.healthLabelsOf(d)
	id := hl.id
	e.send(c.deviceUp, prometheus.GaugeValue, id, boolValue(!st.Lost))
	e.send(c.deviceStalled, prometheus.GaugeValue, id, boolValue(st.Stalled))
	if len(d.MIG) > 0 || st.MIGReadErrors > 0 {
		e.send(c.migReadErrors, prometheus.CounterValue, id, float64(st.MIGReadErrors))
	}
	for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
		withField := hl.fields[f]
		e.send(c.fieldSupported, prometheus.GaugeValue, withField, boolValue(st.Supported.Has(f)))
		if st.Errors[f] > 0 {
			e.send(c.readErrors, prometheus.CounterValue, withField, float64(st.Errors[f]))
		}
	}
	for _, ls := range hl.unproduced {
		e.send(c.fieldSupported, prometheus.GaugeValue, ls, 0)
	}
	if st.XID != nil {
		for xid, n := range st.XID.Counts {
			e.send(c.xidTotal, prometheus.CounterValue, id.with(&dto.LabelPair{Name: new("xid"), Value: new(strconv.FormatUint(xid, 10))}), float64(n))
		}
	}
}

// healthLabels are a GPU's label sets of its health series, built once
// (label sets are never modified): the GPU's own, and with each field.
type healthLabels struct {
	id         labelSet
	fields     [telemetry.NumFields]labelSet
	unproduced []labelSet // with c.unproduced's pairs
}

type healthKey struct {
	index int
	uuid  string
}

// healthLabelsOf returns d's health label sets, built on its first scrape.
// A node's GPUs are few and fixed; a GPU replaced adds one entry.
func (c *Collector) healthLabelsOf(d *telemetry.Device) *healthLabels {
	key := healthKey{d.Index, d.UUID}
	if v, ok := c.health.Load(key); ok {
		return v.(*healthLabels)
	}
	hl := &healthLabels{id: newLabelSet(c.layout.id, []string{strconv.Itoa(d.Index), d.UUID})}
	for f := range telemetry.NumFields {
		hl.fields[f] = hl.id.with(fieldPairs[f])
	}
	for _, p := range c.unproduced {
		hl.unproduced = append(hl.unproduced, hl.id.with(p))
	}
	v, _ := c.health.LoadOrStore(key, hl)
	return v.(*healthLabels)
}

// collectDevice emits the device families of one GPU or MIG instance,
// once per pod holding it.
func (c *Collector) collectDevice(e sink, d *attribution.Device) {
	g := d.GPU
	// device is nvidia<GPU index>, as dcgm-exporter writes it (DCGM's GPU
	// id), not the /dev/nvidia<minor> node, which may differ.
	base := []string{strconv.Itoa(g.Index), g.UUID, g.PCIBusID, "nvidia" + strconv.Itoa(g.Index), g.Name}
	if c.opts.Hostname != "" {
		base = append(base, c.opts.Hostname)
	}
	base = append(base, c.extra...)
	names, mig := c.layout.device, d.MIG != nil
	if mig {
		base = append(base, d.MIG.Profile, strconv.Itoa(d.MIG.GI))
		names = append(names[:len(names):len(names)], migLabels...)
	}
	ts := targets(names, base, mig, d.Pods, c.layout.pod)
	// A device held by one pod is that pod's: one series per field, the
	// pod's labels and the device's values, as dcgm-exporter writes it.
	// A device shared by several pods (time-slicing, MPS) gets a
	// device-level series (no pod labels) with every field, and one per
	// pod of the per-pod fields, its own share where per-process
	// attribution gives one: so a sum over series counts each device once.
	if d.Shared {
		ts = append([]target{{labels: newLabelSet(names, base), mig: mig}}, ts...)
	}
	st := d.State
	for k, t := range ts {
		pod := -1 // the device's values
		if t.pod && d.PerPod != nil {
			pod = k - 1
		}
		deviceWide := !t.pod || !d.Shared
		only := podFields
		if deviceWide {
			only = telemetry.AllFields
		}
		if mig {
			// NVML reports a MIG instance's memory only: no XID, encoder
			// or utilization windows of its own.
			c.collectReading(e, t, d, pod, only)
			continue
		}
		c.collectReading(e, t, d, pod, only)
		if deviceWide {
			c.collectXID(e, t, st)
		}
		c.collectAgentDevice(e, t, st)
		if pod >= 0 {
			c.collectPodEncoder(e, t, &d.PerPod[pod])
		}
	}
}

// collectXID emits the last XID under each of its names served.
func (c *Collector) collectXID(e sink, t target, st *telemetry.DeviceState) {
	var last uint64
	if st.XID != nil {
		last = st.XID.Last
	}
	var tx target
	for _, f := range c.xid {
		if f == nil {
			continue
		}
		if tx.labels == nil {
			code, msg := xidLabels(last)
			tx = t.with(code).with(msg)
		}
		e.emit(f, tx, float64(last))
	}
	// The XIDs of the window by XID, labelled with the window as
	// dcgm-exporter's expCollector does (window_size_in_ms); a GPU with
	// none in the window has one series, 0, without xid.
	if c.expXIDCount != nil {
		tw := t.with(c.xidWindowPair)
		tw.meta = true // with or without xid: a Desc per series
		var counts map[uint64]uint64
		if st.XID != nil {
			counts = st.XID.CountSince(time.Now().Add(-c.opts.XIDWindow))
		}
		if len(counts) == 0 {
			e.emit(c.expXIDCount, tw, 0)
		}
		for _, xid := range slices.Sorted(maps.Keys(counts)) {
			e.emit(c.expXIDCount, tw.with(xidPair(xid)), float64(counts[xid]))
		}
	}
	if st.XID == nil {
		return
	}
	if c.expXIDTotal != nil {
		for _, xid := range slices.Sorted(maps.Keys(st.XID.Counts)) {
			e.emit(c.expXIDTotal, t.with(xidPair(xid)), float64(st.XID.Counts[xid]))
		}
	}
}

// xidPair is the xid label of an XID.
func xidPair(xid uint64) *dto.LabelPair {
	return &dto.LabelPair{Name: new("xid"), Value: new(strconv.FormatUint(xid, 10))}
}

// collectReading emits the dcgm-exporter families of the fields in only,
// of the device's values (pod < 0) or of its pod-th pod (attribution.Device.PodValue).
func (c *Collector) collectReading(e sink, t target, d *attribution.Device, pod int, only telemetry.FieldSet) {
	for _, s := range c.dcgm {
		m := s.metric
		if !only.Has(m.Field) {
			continue
		}
		v, ok := d.Reading.Get(m.Field)
		if pod >= 0 {
			v, ok = d.PodValue(pod, m.Field)
		}
		if ok {
			e.emit(s.family, t, m.value(v))
		}
	}
}

// servedMetric is a row of dcgmMetrics that the collector serves, and its
// family.
type servedMetric struct {
	metric *dcgmMetric
	family *family
}

// collectPodEncoder emits a pod's own encoder sessions, every codec
// included: a pod with no session of one reads 0, so a pod that stops
// encoding drops to 0 rather than vanishing. Frame rate and latency exist
// only for a codec the pod has sessions of: an average over no session is
// not 0 fps, and leaving it out keeps a node of many pods from serving a
// dozen zero series per pod.
func (c *Collector) collectPodEncoder(e sink, t target, s *attribution.PodShare) {
	if !s.Has.Has(telemetry.EncSessions) {
		return // the GPU has no encoder sessions to report, or they failed this tick
	}
	for codec, enc := range s.Encoder {
		tc := t.with(codecPairs[codec])
		e.emit(c.podEncSessions, tc, float64(enc.Sessions))
		if enc.Sessions == 0 {
			continue
		}
		e.emit(c.podEncFPS, tc, enc.FPS)
		e.emit(c.podEncLatency, tc.with(statMean), enc.LatencyMean)
		e.emit(c.podEncLatency, tc.with(statMax), enc.LatencyMax)
	}
}

// collectAgentDevice emits what dcgm-exporter lacks, in base units.
func (c *Collector) collectAgentDevice(e sink, t target, st *telemetry.DeviceState) {
	if v, ok := st.Get(telemetry.EncSessions); ok {
		e.emit(c.encSessions, t, v)
	}
	if v, ok := st.Get(telemetry.EncFPS); ok {
		e.emit(c.encFPS, t, v)
	}
	if v, ok := st.Get(telemetry.EncLatency); ok {
		e.emit(c.encLatency, t, v)
	}
	if v, ok := st.Get(telemetry.EncSamplingPeriod); ok {
		e.emit(c.samplingPeriod, t.with(enginePairs[telemetry.EngineEncoder]), v)
	}
	if v, ok := st.Get(telemetry.DecSamplingPeriod); ok {
		e.emit(c.samplingPeriod, t.with(enginePairs[telemetry.EngineDecoder]), v)
	}
	for eng := telemetry.Engine(0); eng < telemetry.NumEngines; eng++ {
		w := st.Windows[eng]
		if w.Count == 0 {
			continue
		}
		te := t.with(enginePairs[eng])
		e.emit(c.windowMax, te, w.Max/100)
		e.emit(c.windowMean, te, w.Mean/100)
		e.emit(c.windowN, te, float64(w.Count))
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
