package podresources

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
}

type giCI struct{ gi, ci int }

// NewResolver indexes a node inventory. The slice is not retained.
func NewResolver(gpus []GPU) Resolver {
	inv := &inventory{
		gpus:    make(map[string]bool, len(gpus)),
		migs:    make(map[string]bool),
		byMinor: make(map[int]string, len(gpus)),
		parts:   make(map[string][]MIGDevice, len(gpus)),
		exact:   make(map[string]map[giCI]string, len(gpus)),
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
		for _, m := range g.MIG {
			if m.UUID == "" {
				continue
			}
			inv.migs[m.UUID] = true
			exact[giCI{m.GI, m.CI}] = m.UUID
		}
		inv.exact[g.UUID] = exact
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
