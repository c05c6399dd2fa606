package exporter

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// dcgmMetric maps a snapshot field to the dcgm-exporter metric that means
// the same thing, in the same unit, so dashboards and KEDA triggers written
// for dcgm-exporter work unchanged. This table is the one place those
// names live: the exporter, the docs/metrics.md check and the lint
// exemptions all read it.
type dcgmMetric struct {
	Name  string
	Help  string
	Field telemetry.Field
	Scale float64 // multiplies the snapshot value into the metric's unit
	Type  prometheus.ValueType
}

const bytesPerMiB = 1 << 20

// dcgmMetrics are dcgm-exporter's names, help texts, units and types (its
// default-counters.csv), in that file's order. One deliberate type
// difference: dcgm-exporter declares the PCIe throughputs counters, but
// they are rates that go up and down, so they are gauges here. The
// counters keep their names under OpenMetrics: expfmt (and the text
// writer, see appendHeader) types a counter whose name lacks _total
// "unknown" there rather than renaming its samples.
var dcgmMetrics = []dcgmMetric{
	{"DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", telemetry.SMClock, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", telemetry.MemClock, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", telemetry.MemoryTemp, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", telemetry.Temperature, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", telemetry.Power, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", telemetry.Energy, 1, prometheus.CounterValue},
	{"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", telemetry.PCIeReplay, 1, prometheus.CounterValue},
	{"DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "PCIe TX throughput (in KB/s) via NVML.", telemetry.PCIeTX, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "PCIe RX throughput (in KB/s) via NVML.", telemetry.PCIeRX, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", telemetry.GPUUtil, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", telemetry.MemCopyUtil, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %).", telemetry.EncUtil, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %).", telemetry.DecUtil, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", telemetry.FBFree, 1.0 / bytesPerMiB, prometheus.GaugeValue},
	{"DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", telemetry.FBUsed, 1.0 / bytesPerMiB, prometheus.GaugeValue},
	{"DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", telemetry.FBReserved, 1.0 / bytesPerMiB, prometheus.GaugeValue},
	{"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "Total number of NVLink bandwidth counters for all lanes.", telemetry.NVLinkBandwidth, 1.0 / 1024 / 1000, prometheus.GaugeValue},
	{"DCGM_FI_DEV_VGPU_LICENSE_STATUS", "vGPU License status", telemetry.VGPULicense, 1, prometheus.GaugeValue},
	{"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", telemetry.RemappedRowsUnc, 1, prometheus.CounterValue},
	{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", telemetry.RemappedRowsCorr, 1, prometheus.CounterValue},
	{"DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", telemetry.RowRemapFailure, 1, prometheus.GaugeValue},
}

// podFields are the dcgm-exporter fields a pod's series carries on a GPU
// shared by several pods, and the device-level series on a GPU held by
// one pod with per-pod shares: those with a per-pod value (the pod's own
// share, attribution.Device.PodValue). The others (power, temperature,
// clocks, energy, ...) are device-wide figures, served once per GPU (on
// the device-level series of a shared GPU, on the pod's series of a GPU
// one pod holds), so that a sum over a node's series (NVIDIA's "GPU
// Power Total" panel) counts each GPU once.
var podFields = fields(telemetry.GPUUtil, telemetry.MemCopyUtil, telemetry.EncUtil, telemetry.DecUtil, telemetry.FBUsed)

func fields(fs ...telemetry.Field) telemetry.FieldSet {
	var s telemetry.FieldSet
	for _, f := range fs {
		s = s.With(f)
	}
	return s
}

// dcgmXIDName is dcgm-exporter's last-XID gauge. It is not a field of the
// reading but of the device's XID history.
const (
	dcgmXIDName = "DCGM_FI_DEV_XID_ERRORS"
	dcgmXIDHelp = "Value of the last XID error encountered."
)

// DCGMNames lists every dcgm-exporter metric name the agent serves. They
// break Prometheus naming conventions on purpose (compatibility), so lint
// checks exempt exactly these.
func DCGMNames() []string {
	names := make([]string, 0, len(dcgmMetrics)+1)
	for _, m := range dcgmMetrics {
		names = append(names, m.Name)
	}
	return append(names, dcgmXIDName)
}

// The labels dcgm-exporter puts on every device metric, in its order.
var (
	idLabels     = []string{"gpu", "UUID"} // the agent's per-GPU health metrics
	deviceLabels = []string{"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"}
	migLabels    = []string{"GPU_I_PROFILE", "GPU_I_ID"}
	podLabels    = []string{"namespace", "pod", "container"}

	// With -o/--use-old-namespace dcgm-exporter names the pod labels as
	// its 1.x did, and writes uuid for UUID (its
	// internal/pkg/transformation/const.go and collector.toMetric). In
	// podLabels' order.
	oldPodLabels = []string{"pod_namespace", "pod_name", "container_name"}
)

// driverVersionLabel is the label field dcgm-exporter's default field list
// (default-counters.csv) puts on every series.
const driverVersionLabel = "DCGM_FI_DRIVER_VERSION"

// labelFields are the label-type fields of dcgm-exporter's field lists
// the agent can fill: each becomes a label of every device series.
var labelFields = map[string]func(o *Options) string{
	driverVersionLabel: func(o *Options) string { return o.DriverVersion },
}

// Unsupported returns the names of the fields in a dcgm-exporter field
// list that the agent cannot serve, in the list's order: fields it does
// not read, and label rows it cannot fill.
func Unsupported(fields []dcgmcsv.Field) []string {
	var out []string
	for _, f := range fields {
		if _, ok := labelFields[f.Name]; ok && f.Type == dcgmcsv.TypeLabel {
			continue
		}
		if f.Type != dcgmcsv.TypeLabel && slices.Contains(DCGMNames(), f.Name) {
			continue
		}
		out = append(out, f.Name)
	}
	return out
}

// layout is the label names of one collector's series: a GPU's health
// (id), a whole GPU's device series (dcgm-exporter's, with the field
// list's label fields) and the pod labels.
type layout struct {
	id, device, pod []string
}

// newLayout is dcgm-exporter's labels as the options ask: uuid and the old
// pod labels with -o, no Hostname without a host name (its template leaves
// an empty Hostname out), then the label fields.
func newLayout(opts *Options, labelFields []string) layout {
	l := layout{id: idLabels, pod: podLabels}
	if opts.UseOldNamespace {
		l.id = []string{"gpu", "uuid"}
		l.pod = oldPodLabels
	}
	l.device = append(l.device, l.id...)
	for _, n := range deviceLabels[len(idLabels):] {
		if n != "Hostname" || opts.Hostname != "" {
			l.device = append(l.device, n)
		}
	}
	l.device = append(l.device, labelFields...)
	return l
}

// family is one metric in the four label sets it can carry: a whole GPU or
// a MIG instance, attributed to a pod or not. dcgm-exporter leaves the pod
// and MIG labels off when they do not apply; so do we, which makes this an
// unchecked collector (one name, several label sets).
type family struct {
	name, help               string
	gpu, gpuPod, mig, migPod *prometheus.Desc
	typ                      prometheus.ValueType
	idx                      int // position in Collector.families, the text writer's order
}

func (l layout) newFamily(name, help string, typ prometheus.ValueType, extra ...string) *family {
	desc := func(sets ...[]string) *prometheus.Desc {
		var labels []string
		for _, s := range sets {
			labels = append(labels, s...)
		}
		return prometheus.NewDesc(name, help, append(labels, extra...), nil)
	}
	return &family{
		name:   name,
		help:   help,
		gpu:    desc(l.device),
		gpuPod: desc(l.device, l.pod),
		mig:    desc(l.device, migLabels),
		migPod: desc(l.device, migLabels, l.pod),
		typ:    typ,
	}
}

// LintExempt reports whether a Prometheus lint problem (promlint, or
// `promtool check metrics`) is one this compatibility layer causes on
// purpose: dcgm-exporter's metric names, and its camelCase label names
// (UUID, modelName, Hostname, GPU_I_*) that the agent's own device metrics
// carry too, so they join with dcgm-exporter's series.
func LintExempt(metric, problem string) bool {
	for _, n := range DCGMNames() {
		if metric == n {
			return true
		}
	}
	return strings.HasPrefix(metric, Namespace+"_") &&
		strings.Contains(problem, "label names should be written in 'snake_case' not 'camelCase'")
}
