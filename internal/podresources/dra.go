package podresources

import (
	"errors"
	"fmt"
	"strings"
)

// DRADriverName is the driver of NVIDIA's DRA driver for GPUs
// (k8s-dra-driver-gpu). Claims of other drivers are ignored, its
// compute-domain.nvidia.com included: that one hands out IMEX channels,
// not GPUs.
const DRADriverName = "gpu.nvidia.com"

// draVFIOPrefix names GPUs the DRA driver binds to vfio-pci for passthrough
// to a VM. NVML cannot see such a GPU, so it is never in the inventory:
// counting it unresolved would report a problem nobody can fix.
const draVFIOPrefix = "gpu-vfio-"

func isDRAIgnored(device string) bool { return strings.HasPrefix(device, draVFIOPrefix) }

// ParseDRADeviceName parses the device names NVIDIA's DRA driver publishes
// in its ResourceSlices and the kubelet reports in a container's
// dynamic_resources:
//
//	gpu-<minor>                                  a whole GPU
//	gpu-<minor>-mig-<profile>-<start>[-<end>]    a MIG device; profile without dots, "1g5gb", "1g10gb-me"
//	gpu-<minor>-mig-<profileID>-<start>-<size>   a MIG device, in the driver's earlier releases
//
// A whole GPU gives a RefIndex reference (found by minor number, as GKE's
// nvidiaN); a MIG device gives RefDRAMIG with its parent's minor and, in the
// current form, its profile. The names carry the GPU's minor number, not its
// index or UUID (the UUID is an attribute of the ResourceSlice, which the
// pod-resources API does not carry). Parsing is as strict as ParseDeviceID's
// on the minor number, which decides the GPU.
func ParseDRADeviceName(name string) (DeviceRef, error) {
	ref := DeviceRef{Index: -1, GI: -1, CI: -1, Replica: -1}
	rest, ok := strings.CutPrefix(name, "gpu-")
	if !ok {
		return DeviceRef{}, invalid(name, "dra device name: want gpu-<minor>[-mig-...]")
	}
	minor, mig, isMIG := strings.Cut(rest, "-mig-")
	n, err := parseNumber(minor)
	if err == nil && len(minor) > 1 && minor[0] == '0' {
		// The driver prints the minor with %d: a leading zero is not its
		// name, and guessing which GPU it means is what strictness avoids.
		err = fmt.Errorf("%q has a leading zero", minor)
	}
	if err != nil {
		return DeviceRef{}, invalid(name, "dra device name: minor number: %v", err)
	}
	ref.Kind, ref.Index = RefIndex, n
	if !isMIG {
		return ref, nil
	}
	profile, err := parseDRAMIG(mig)
	if err != nil {
		return DeviceRef{}, invalid(name, "dra mig device name: %v", err)
	}
	ref.Kind, ref.Profile = RefDRAMIG, profile
	return ref, nil
}

// parseDRAMIG splits "<profile>-<placement numbers>" and returns the
// profile, "" for the earlier all-numeric form. Profile tokens are never
// all digits ("1g5gb", "me", "gfx"), which is what tells them from the
// placement that follows.
func parseDRAMIG(s string) (string, error) {
	tokens := strings.Split(s, "-")
	i := 0
	for i < len(tokens) && tokens[i] != "" && !isDigits(tokens[i]) {
		i++
	}
	if i == len(tokens) {
		return "", errors.New("no placement")
	}
	for _, t := range tokens[i:] {
		if _, err := parseNumber(t); err != nil {
			return "", fmt.Errorf("placement: %w", err)
		}
	}
	return strings.Join(tokens[:i], "-"), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// draProfileToken spells a MIG profile as NVIDIA's DRA driver does in device
// names: dots removed, then lowercased with anything but [a-z0-9-] turned
// into "-" ("1g.10gb+me" -> "1g10gb-me").
func draProfileToken(profile string) string {
	b := []byte(strings.ToLower(strings.ReplaceAll(profile, ".", "")))
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-")
}

func resolveDRA(r Resolver, device string) (string, bool) {
	ref, err := ParseDRADeviceName(device)
	if err != nil || r == nil {
		return "", false
	}
	return r.Resolve(ref)
}
