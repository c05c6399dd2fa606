package exporter

import (
	"fmt"
	"strings"
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
// name, or a release of it (4.8.3 is 4.8, 4.9.1 is 4.9).
func ParseGeneration(s string) (Generation, error) {
	for g, n := range generationNames {
		if s == n {
			return Generation(g), nil
		}
	}
	switch {
	case s == "4.8.0" || s == "4.8.1":
		return Gen482, nil
	case s == "4.8.3" || s == "4.8.4":
		return Gen48, nil
	case strings.HasPrefix(s, "4.9."):
		return Gen49, nil
	case strings.HasPrefix(s, "4.10."):
		return Gen410, nil
	}
	return 0, fmt.Errorf("unknown dcgm-exporter generation %q: want one of %s (a release of one: 4.8.3, 4.9.1, ...)",
		s, strings.Join(generationNames[:], ", "))
}

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
