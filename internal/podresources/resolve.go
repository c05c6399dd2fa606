package podresources

import "slices"

// GPU is one physical GPU of the node inventory, as NVML reports it.
type GPU struct {
	UUID  string // "GPU-..."
	Minor int    // the N of /dev/nvidiaN, which GKE uses as the device ID
	MIG   []MIGDevice
}

// MIGDevice is one MIG device of a GPU.
type MIGDevice struct {
	UUID   string // "MIG-..."
	GI, CI int
	// Profile is the GPU instance's profile as NVML names it ("1g.5gb"),
	// which DRA device names carry; "" if unknown.
	Profile string
}

// Resolver maps a parsed device ID to the canonical UUID of a device in the
// inventory. It is an interface so that the exporter can resolve against
// whatever inventory it holds and tests can pass a fixed table.
type Resolver interface {
	Resolve(DeviceRef) (uuid string, ok bool)
}

var _ Resolver = (*inventory)(nil)

// inventory indexes the GPUs once so that resolving every device ID of every
// poll is a few map lookups.
type inventory struct {
	gpus    map[string]bool            // GPU UUID
	migs    map[string]bool            // MIG UUID
	byMinor map[int]string             // minor -> GPU UUID
	parts   map[string][]MIGDevice     // GPU UUID -> its MIG devices
	exact   map[string]map[giCI]string // GPU UUID -> (gi, ci) -> MIG UUID
	// GPU UUID -> DRA profile token -> GPU instance ids, each once
	profiles map[string]map[string][]int
}

type giCI struct{ gi, ci int }

// NewResolver indexes a node inventory. The slice is not retained.
func NewResolver(gpus []GPU) Resolver {
	inv := &inventory{
		gpus:     make(map[string]bool, len(gpus)),
		migs:     make(map[string]bool),
		byMinor:  make(map[int]string, len(gpus)),
		parts:    make(map[string][]MIGDevice, len(gpus)),
		exact:    make(map[string]map[giCI]string, len(gpus)),
		profiles: make(map[string]map[string][]int, len(gpus)),
	}
	for _, g := range gpus {
		if g.UUID == "" {
			continue
		}
		inv.gpus[g.UUID] = true
		inv.byMinor[g.Minor] = g.UUID
		if len(g.MIG) == 0 {
			continue
		}
		inv.parts[g.UUID] = append([]MIGDevice(nil), g.MIG...)
		exact := make(map[giCI]string, len(g.MIG))
		profiles := make(map[string][]int)
		for _, m := range g.MIG {
			if m.UUID == "" {
				continue
			}
			inv.migs[m.UUID] = true
			exact[giCI{m.GI, m.CI}] = m.UUID
			// "" collects every instance: a DRA name without a profile
			// still resolves on a GPU with a single instance.
			for _, tok := range []string{"", draProfileToken(m.Profile)} {
				if !slices.Contains(profiles[tok], m.GI) {
					profiles[tok] = append(profiles[tok], m.GI)
				}
			}
		}
		inv.exact[g.UUID] = exact
		inv.profiles[g.UUID] = profiles
	}
	return inv
}

// Resolve returns the UUID of the device the reference names. Replicas
// resolve to the device they share, so that every pod sharing a GPU is
// attributed to it.
func (inv *inventory) Resolve(ref DeviceRef) (string, bool) {
	switch ref.Kind {
	case RefGPU:
		if inv.gpus[ref.UUID] {
			return ref.UUID, true
		}
	case RefMIG:
		if inv.migs[ref.UUID] {
			return ref.UUID, true
		}
	case RefLegacyMIG:
		return inv.mig(ref.UUID, ref.GI, ref.CI)
	case RefIndex:
		gpu, ok := inv.byMinor[ref.Index]
		if !ok {
			return "", false
		}
		if ref.GI < 0 {
			return gpu, true
		}
		return inv.mig(gpu, ref.GI, ref.CI)
	case RefDRAMIG:
		gpu, ok := inv.byMinor[ref.Index]
		if !ok {
			return "", false
		}
		// The DRA name gives the instance's placement, not its GPU
		// instance id, and NVML's inventory here has no placements: only
		// a profile that one instance of the GPU has tells the instance.
		if gis := inv.profiles[gpu][ref.Profile]; len(gis) == 1 {
			if uuid, ok := inv.mig(gpu, gis[0], -1); ok {
				return uuid, true
			}
		}
		// Several instances of the profile (seven 1g.5gb on an A100),
		// or one the inventory does not have yet (MIG reconfigured):
		// the claim holds part of this GPU, so the GPU is attributed to
		// the pod rather than nothing. Its MIG instances' series then
		// carry no pod; the GPU's own series does.
		return gpu, true
	}
	return "", false
}

// mig finds a MIG device of a GPU by instance ids. With ci < 0 (GKE names
// only the GPU instance) it picks the compute instance with the lowest id,
// which is the only one under GKE's one-CI-per-GI partitioning.
func (inv *inventory) mig(gpu string, gi, ci int) (string, bool) {
	if ci >= 0 {
		uuid, ok := inv.exact[gpu][giCI{gi, ci}]
		return uuid, ok
	}
	var best MIGDevice
	found := false
	for _, m := range inv.parts[gpu] {
		if m.UUID != "" && m.GI == gi && (!found || m.CI < best.CI) {
			best, found = m, true
		}
	}
	return best.UUID, found
}
