// Package podresources maps the kubelet's pod-resources device assignments
// to the GPUs and MIG devices of the node inventory, so that every GPU metric
// can carry the namespace, pod and container that were allocated it.
//
// The kubelet rate-limits its pod-resources API, so the Client polls it on a
// fixed period and publishes an immutable Assignments map that any number of
// readers (scrapes, stream subscribers) can use without calling the kubelet.
package podresources

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalidDeviceID is wrapped by every ParseDeviceID error, so callers can
// tell a malformed device ID from other failures.
var ErrInvalidDeviceID = errors.New("invalid device id")

// RefKind says which of the device ID spellings used by device plugins a
// DeviceRef came from; each needs a different lookup in the inventory.
type RefKind int

const (
	// RefGPU is a whole GPU named by its UUID: "GPU-<uuid>".
	RefGPU RefKind = iota + 1
	// RefMIG is a MIG device named by its own UUID: "MIG-<uuid>".
	RefMIG
	// RefLegacyMIG is a MIG device named by its parent and instance ids, the
	// spelling of drivers before R470: "MIG-GPU-<uuid>/<gi>/<ci>".
	RefLegacyMIG
	// RefIndex is GKE's spelling by minor number: "nvidia0", "nvidia0/vgpu1",
	// "nvidia0/gi7", "nvidia0/gi7/vgpu0". NVIDIA's DRA driver names whole
	// GPUs by minor number too ("gpu-0"), so ParseDRADeviceName gives it.
	RefIndex
	// RefDRAMIG is a MIG device of NVIDIA's DRA driver, named by its
	// parent's minor number, its profile and its placement
	// ("gpu-0-mig-1g5gb-3"): no instance ids, see ParseDRADeviceName.
	RefDRAMIG
)

// String returns the kind's name for logs and test failures.
func (k RefKind) String() string {
	switch k {
	case RefGPU:
		return "gpu"
	case RefMIG:
		return "mig"
	case RefLegacyMIG:
		return "legacy-mig"
	case RefIndex:
		return "index"
	case RefDRAMIG:
		return "dra-mig"
	default:
		return "RefKind(" + strconv.Itoa(int(k)) + ")"
	}
}

// DeviceRef is a parsed device ID. Fields that the spelling does not carry
// are -1 (or "" for UUID) so that zero values cannot be mistaken for GPU 0
// or instance 0.
type DeviceRef struct {
	Kind RefKind
	// UUID is "GPU-..." or "MIG-..." as given; for RefLegacyMIG the parent
	// "GPU-..." UUID; "" for RefIndex.
	UUID string
	// Index is the minor number (GKE's nvidiaN, the DRA driver's gpu-N and
	// a DRA MIG device's parent), -1 otherwise.
	Index int
	// GI and CI are the GPU and compute instance ids, -1 when absent.
	GI, CI int
	// Replica is the time-slicing or MPS replica ("<id>::<n>" or GKE
	// "vgpuN"), -1 when absent. Replicas share the underlying device.
	Replica int
	// Profile is a RefDRAMIG's MIG profile as the DRA driver spells it
	// ("1g5gb"), "" when the name has none.
	Profile string
}

// String renders the canonical spelling of the reference; ParseDeviceID of
// the result gives back an equal DeviceRef. GKE replicas are rendered as
// "/vgpuN" whichever way they were spelled. A RefDRAMIG renders without its
// placement, which it does not keep: for logs only.
func (r DeviceRef) String() string {
	var b strings.Builder
	switch r.Kind {
	case RefGPU, RefMIG:
		b.WriteString(r.UUID)
	case RefLegacyMIG:
		fmt.Fprintf(&b, "MIG-%s/%d/%d", r.UUID, r.GI, r.CI)
	case RefIndex:
		fmt.Fprintf(&b, "nvidia%d", r.Index)
		if r.GI >= 0 {
			fmt.Fprintf(&b, "/gi%d", r.GI)
		}
		if r.CI >= 0 {
			fmt.Fprintf(&b, "/ci%d", r.CI)
		}
		if r.Replica >= 0 {
			fmt.Fprintf(&b, "/vgpu%d", r.Replica)
		}
		return b.String()
	case RefDRAMIG:
		fmt.Fprintf(&b, "gpu-%d-mig", r.Index)
		if r.Profile != "" {
			b.WriteString("-" + r.Profile)
		}
		return b.String()
	default:
		return "invalid"
	}
	if r.Replica >= 0 {
		fmt.Fprintf(&b, "::%d", r.Replica)
	}
	return b.String()
}

// ParseDeviceID parses the device ID spellings of NVIDIA's device plugin and
// of GKE. It is strict (no signs, no empty numbers, no stray separators)
// because a lenient parse would attribute a GPU to the wrong pod, which is
// worse than not attributing it.
func ParseDeviceID(id string) (DeviceRef, error) {
	ref := DeviceRef{Index: -1, GI: -1, CI: -1, Replica: -1}
	base := id
	if i := strings.Index(id, "::"); i >= 0 {
		n, err := parseNumber(id[i+2:])
		if err != nil {
			return DeviceRef{}, invalid(id, "replica suffix: %v", err)
		}
		base, ref.Replica = id[:i], n
	}
	var err error
	switch {
	case strings.HasPrefix(base, "MIG-GPU-"):
		err = parseLegacyMIG(base, &ref)
	case strings.HasPrefix(base, "MIG-"):
		ref.Kind, ref.UUID = RefMIG, base
		err = checkUUID(base[len("MIG-"):])
	case strings.HasPrefix(base, "GPU-"):
		ref.Kind, ref.UUID = RefGPU, base
		err = checkUUID(base[len("GPU-"):])
	case strings.HasPrefix(base, "nvidia"):
		err = parseIndex(base, &ref)
	case base == "":
		err = errors.New("empty")
	default:
		err = errors.New("unknown format, want GPU-, MIG-, MIG-GPU- or nvidiaN")
	}
	if err != nil {
		return DeviceRef{}, invalid(id, "%v", err)
	}
	return ref, nil
}

// parseLegacyMIG parses "MIG-GPU-<uuid>/<gi>/<ci>" (replica already cut).
func parseLegacyMIG(base string, ref *DeviceRef) error {
	parts := strings.Split(base[len("MIG-"):], "/")
	if len(parts) != 3 {
		return errors.New("legacy mig id needs MIG-GPU-<uuid>/<gi>/<ci>")
	}
	if err := checkUUID(parts[0][len("GPU-"):]); err != nil {
		return err
	}
	gi, err := parseNumber(parts[1])
	if err != nil {
		return fmt.Errorf("gpu instance: %w", err)
	}
	ci, err := parseNumber(parts[2])
	if err != nil {
		return fmt.Errorf("compute instance: %w", err)
	}
	ref.Kind, ref.UUID, ref.GI, ref.CI = RefLegacyMIG, parts[0], gi, ci
	return nil
}

// parseIndex parses GKE's "nvidia<N>[/gi<G>[/ci<C>]][/vgpu<R>]".
func parseIndex(base string, ref *DeviceRef) error {
	parts := strings.Split(base, "/")
	n, err := parseNumber(parts[0][len("nvidia"):])
	if err != nil {
		return fmt.Errorf("minor number: %w", err)
	}
	ref.Kind, ref.Index = RefIndex, n
	rest := parts[1:]
	if len(rest) > 0 && strings.HasPrefix(rest[0], "gi") {
		if ref.GI, err = parseNumber(rest[0][len("gi"):]); err != nil {
			return fmt.Errorf("gpu instance: %w", err)
		}
		rest = rest[1:]
		if len(rest) > 0 && strings.HasPrefix(rest[0], "ci") {
			if ref.CI, err = parseNumber(rest[0][len("ci"):]); err != nil {
				return fmt.Errorf("compute instance: %w", err)
			}
			rest = rest[1:]
		}
	}
	if len(rest) > 0 && strings.HasPrefix(rest[0], "vgpu") {
		if ref.Replica >= 0 {
			return errors.New("both vgpu and :: replica")
		}
		if ref.Replica, err = parseNumber(rest[0][len("vgpu"):]); err != nil {
			return fmt.Errorf("vgpu replica: %w", err)
		}
		rest = rest[1:]
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected component %q", rest[0])
	}
	return nil
}

// checkUUID accepts the characters NVML puts in UUIDs (hex and dashes, in
// either case) and rejects separators that would make the ID ambiguous.
func checkUUID(s string) error {
	if s == "" {
		return errors.New("empty uuid")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
			return fmt.Errorf("unexpected character %q in uuid", c)
		}
	}
	return nil
}

// parseNumber accepts only non-empty unsigned decimal numbers that fit an
// int: strconv.Atoi alone would let "+1" and "-1" through.
func parseNumber(s string) (int, error) {
	if s == "" {
		return 0, errors.New("missing number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not an unsigned number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return n, nil
}

func invalid(id, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrInvalidDeviceID, id, fmt.Sprintf(format, args...))
}
