package exporter

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
)

// Generation is a release generation of dcgm-exporter whose default
// output the agent imitates (--compat.dcgm-exporter): the host label's
// name, the driver label's, and which name each field's default series
// has. A field list (-f) names its fields itself, in any generation's
// names.
type Generation uint8

// The generations, oldest first.
const (
	// Gen482 is 4.8.2 and the 4.x releases before it: the Hostname label
	// and DCGM 4.6's names.
	Gen482 Generation = iota
	// Gen48 is 4.8.3 and 4.8.4: hostname (dcgm-exporter PR 655, first
	// released in 4.8.3).
	Gen48
	// Gen49 is 4.9 (DCGM 4.7): the deprecated field names renamed, base
	// units, DCGM_FI_SYSTEM_DRIVER_VERSION.
	Gen49
	// Gen410 is 4.10 (DCGM 4.8): as 4.9, and the PROF PCIe and NVLink
	// byte fields renamed _PER_SECOND.
	Gen410

	numGenerations
)

// DefaultGeneration is the generation served without
// --compat.dcgm-exporter: the output of every dcgm-exporter release until
// July 2026 and of this agent until now, which the dashboards, alerts and
// KEDA queries in use were written against (DCGM_FI_DEV_GPU_UTIL,
// Hostname). A user of 4.8.3 or later sets the flag once.
const DefaultGeneration = Gen482

var generationNames = [numGenerations]string{"4.8.2", "4.8", "4.9", "4.10"}

// String is the flag value that selects g.
func (g Generation) String() string {
	if g < numGenerations {
		return generationNames[g]
	}
	return fmt.Sprintf("Generation(%d)", uint8(g))
}

// ParseGeneration reads a --compat.dcgm-exporter value: a generation's
// name, or a 4.x release (4.5.1 and 4.8.2 are 4.8.2, 4.8.3 is 4.8, 4.9.1
// is 4.9).
func ParseGeneration(s string) (Generation, error) {
	m := releasePattern.FindStringSubmatch(s)
	if m != nil {
		minor, _ := strconv.Atoi(m[1])
		patch := -1
		if m[2] != "" {
			patch, _ = strconv.Atoi(m[2])
		}
		switch {
		case minor < 8:
			return Gen482, nil
		case minor == 8 && patch < 0:
			return Gen48, nil // the generation's name
		case minor == 8 && patch <= 2:
			return Gen482, nil
		case minor == 8 && patch <= 4:
			return Gen48, nil
		case minor == 9:
			return Gen49, nil
		case minor == 10:
			return Gen410, nil
		}
	}
	if s == generationNames[Gen482] {
		return Gen482, nil
	}
	return 0, fmt.Errorf("unknown dcgm-exporter generation %q: want one of %s (or a 4.x release up to 4.10: 4.5.1, 4.8.3, 4.9.1, ...)",
		s, strings.Join(generationNames[:], ", "))
}

// releasePattern is a 4.x release: its minor and patch numbers.
var releasePattern = regexp.MustCompile(`^4\.(\d{1,2})(?:\.(\d{1,3}))?$`)

// HostLabel is the name of the label holding the node's name: Hostname
// until 4.8.2, hostname from 4.8.3 on.
func (g Generation) HostLabel() string {
	if g == Gen482 {
		return "Hostname"
	}
	return "hostname"
}

// driverLabel is the label field of the default field list that holds
// the driver's version.
func (g Generation) driverLabel() string {
	if g >= Gen49 {
		return systemDriverVersionLabel
	}
	return driverVersionLabel
}

// genSet is a set of generations.
type genSet uint8

func gens(gs ...Generation) genSet {
	var s genSet
	for _, g := range gs {
		s |= 1 << g
	}
	return s
}

func (s genSet) has(g Generation) bool { return s&(1<<g) != 0 }

// The generations of a name: before 4.9's renames, after, or all.
var (
	oldNames = gens(Gen482, Gen48)
	newNames = gens(Gen49, Gen410)
	allGens  = oldNames | newNames
)

// defaultList48 is dcgm-exporter 4.8's default field list: the uncommented
// rows of its etc/default-counters.csv and etc/dcp-metrics-included.csv,
// which hold the same fields (TestDefaultList48 reads the copies the
// agent's image ships in /etc/dcgm-exporter/).
var defaultList48 = []string{
	"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_GPU_TEMP",
	"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
	"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL",
	"DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
	"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
	"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
	driverVersionLabel,
	"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
	"DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES",
}

// GenerationList returns the field list as generation g serves it. The
// agent's image ships dcgm-exporter 4.8's lists where dcgm-exporter's
// image has its own (/etc/dcgm-exporter/, which its chart passes to -f by
// default), so a list naming exactly 4.8's default fields is, from 4.9
// on, taken for that generation's image's list: g's default fields under
// g's names, and ok is true. Any other list is served as written, each
// name in its own unit.
func GenerationList(fields []dcgmcsv.Field, g Generation) (_ []dcgmcsv.Field, ok bool) {
	if fields == nil || g < Gen49 || !isDefaultList48(fields) {
		return fields, false
	}
	var out []dcgmcsv.Field
	for _, m := range dcgmMetrics {
		// The default list's fields in g's names, the profiling fields
		// included: the agent's own additions to its default (the PCIe
		// throughputs) are not in it.
		if m.Default.has(g) && (slices.Contains(defaultList48, m.Name) || m.Source != "") {
			out = append(out, dcgmcsv.Field{Name: m.Name, Type: promType(m.Type), Help: m.Help})
		}
	}
	for _, m := range xidMetrics {
		if m.Default.has(g) {
			out = append(out, dcgmcsv.Field{Name: m.Name, Type: dcgmcsv.TypeGauge, Help: xidHelp})
		}
	}
	out = append(out, dcgmcsv.Field{Name: g.driverLabel(), Type: dcgmcsv.TypeLabel})
	return out, true
}

func isDefaultList48(fields []dcgmcsv.Field) bool {
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		names = append(names, f.Name)
	}
	slices.Sort(names)
	want := slices.Clone(defaultList48)
	slices.Sort(want)
	return slices.Equal(names, want)
}

// OldNames lists the names of a field list that generation g renamed
// (4.8 names, from 4.9 on): each is served under that name, in its 4.8
// unit, which a user who moved to g may not expect.
func OldNames(fields []dcgmcsv.Field, g Generation) []string {
	if g < Gen49 {
		return nil
	}
	var out []string
	for _, f := range fields {
		for _, m := range dcgmMetrics {
			if m.Name == f.Name && m.Default == oldNames {
				out = append(out, f.Name)
			}
		}
		if f.Name == xidMetrics[0].Name || f.Name == driverVersionLabel {
			out = append(out, f.Name)
		}
	}
	return out
}

func promType(t prometheus.ValueType) dcgmcsv.Type {
	if t == prometheus.CounterValue {
		return dcgmcsv.TypeCounter
	}
	return dcgmcsv.TypeGauge
}
