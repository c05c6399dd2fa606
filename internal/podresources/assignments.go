package podresources

import (
	"fmt"
	"slices"
	"strings"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/attribution"
)

// The resource names NVIDIA's device plugin gives GPUs: whole GPUs, the
// renamed shared ones of time-slicing and MPS, and MIG profiles
// (nvidia.com/mig-1g.5gb, nvidia.com/mig-1g.5gb.shared). Other nvidia.com/
// resources are not GPUs (nvidia.com/hostdev is a NIC of the Network
// Operator): their IDs would never match the inventory and would be
// reported unresolved forever.
const (
	resourceGPU       = "nvidia.com/gpu"
	resourceGPUShared = "nvidia.com/gpu.shared"
	resourceMIGPrefix = "nvidia.com/mig-"
)

// ValidResourceName checks an extra GPU resource name (Options.ResourceNames)
// is an extended resource name, "<domain>/<name>": a name that can never
// appear in the kubelet's answer is a typo to report, not to ignore.
func ValidResourceName(name string) error {
	domain, rest, ok := strings.Cut(name, "/")
	if !ok || domain == "" || rest == "" || strings.Contains(rest, "/") || strings.ContainsAny(name, " \t\n,") {
		return fmt.Errorf("resource name %q: want <domain>/<name>, e.g. nvidia.com/gpu", name)
	}
	return nil
}

// gpuResources tells GPU resource names from the others: the default set
// plus the extra names given, matched exactly.
type gpuResources map[string]bool

func newGPUResources(extra []string) gpuResources {
	g := gpuResources{resourceGPU: true, resourceGPUShared: true}
	for _, n := range extra {
		g[n] = true
	}
	return g
}

func (g gpuResources) has(name string) bool {
	return g[name] || strings.HasPrefix(name, resourceMIGPrefix)
}

// maxUnresolvedSamples bounds the device IDs kept for the log line that says
// which IDs matched nothing; the count itself is exact.
const maxUnresolvedSamples = 5

// Assignments maps device UUIDs to the containers allocated them. It is
// immutable after BuildAssignments, so one can be shared by any number of
// readers without locks.
type Assignments struct {
	pods          *attribution.DevicePods
	unresolved    int
	unresolvedIDs []string // up to maxUnresolvedSamples, for logs
}

// DevicePods returns the containers allocated each device; nil for a nil
// receiver.
func (a *Assignments) DevicePods() *attribution.DevicePods {
	if a == nil {
		return nil
	}
	return a.pods
}

// Pods returns a copy of the containers allocated the device
// (DevicePods.Pods), which the caller may keep and modify.
func (a *Assignments) Pods(uuid string) []attribution.Pod {
	return slices.Clone(a.DevicePods().Pods(uuid))
}

// Len returns the number of devices with at least one pod.
func (a *Assignments) Len() int { return a.DevicePods().Len() }

// Unresolved returns the number of GPU device IDs (of GPU resource names
// and of gpu.nvidia.com DRA claims) that failed to parse or matched no
// device of the inventory (each occurrence counts). A
// non-zero value means attribution is incomplete: a stale inventory after a
// MIG reconfiguration, or a device plugin spelling IDs in a new way.
func (a *Assignments) Unresolved() int {
	if a == nil {
		return 0
	}
	return a.unresolved
}

// BuildAssignments attributes every GPU device of the answer to its
// containers through the resolver: devices of the GPU resource names
// (nvidia.com/gpu, nvidia.com/gpu.shared, nvidia.com/mig-*, and the extra
// names given, matched exactly) and of DRA claims allocated by NVIDIA's DRA
// driver. Other resources and drivers are ignored. Nil entries of a
// malformed answer are skipped: a bad answer must cost attribution, never
// the agent.
func BuildAssignments(resp *podresourcesv1.ListPodResourcesResponse, r Resolver, extraResourceNames ...string) *Assignments {
	return buildAssignments(resp, r, newGPUResources(extraResourceNames))
}

func buildAssignments(resp *podresourcesv1.ListPodResourcesResponse, r Resolver, gpus gpuResources) *Assignments {
	byDevice := make(map[string][]attribution.Pod)
	a := &Assignments{}
	add := func(ref attribution.Pod, id string, uuid string, ok bool) {
		if !ok {
			a.unresolved++
			if len(a.unresolvedIDs) < maxUnresolvedSamples {
				a.unresolvedIDs = append(a.unresolvedIDs, id)
			}
			return
		}
		byDevice[uuid] = append(byDevice[uuid], ref)
	}
	for _, pod := range resp.GetPodResources() {
		for _, ctr := range pod.GetContainers() {
			ref := attribution.Pod{Namespace: pod.GetNamespace(), Name: pod.GetName(), Container: ctr.GetName()}
			for _, dev := range ctr.GetDevices() {
				if !gpus.has(dev.GetResourceName()) {
					continue
				}
				for _, id := range dev.GetDeviceIds() {
					uuid, ok := resolve(r, id)
					add(ref, id, uuid, ok)
				}
			}
			for _, claim := range ctr.GetDynamicResources() {
				for _, res := range claim.GetClaimResources() {
					if res.GetDriverName() != DRADriverName || isDRAIgnored(res.GetDeviceName()) {
						continue
					}
					uuid, ok := resolveDRA(r, res.GetDeviceName())
					add(ref, DRADriverName+"/"+res.GetDeviceName(), uuid, ok)
				}
			}
		}
	}
	a.pods = attribution.NewDevicePods(byDevice)
	return a
}

func resolve(r Resolver, id string) (string, bool) {
	ref, err := ParseDeviceID(id)
	if err != nil || r == nil {
		return "", false
	}
	return r.Resolve(ref)
}
