package podresources

import (
	"cmp"
	"slices"
	"strings"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// resourcePrefix selects NVIDIA's extended resources: nvidia.com/gpu, the
// renamed shared ones (nvidia.com/gpu.shared), MIG profiles
// (nvidia.com/mig-1g.5gb) and custom names alike.
const resourcePrefix = "nvidia.com/"

// maxUnresolvedSamples bounds the device IDs kept for the log line that says
// which IDs matched nothing; the count itself is exact.
const maxUnresolvedSamples = 5

// PodRef names the container a device is allocated to. The pod-resources
// API carries no pod UID, so namespace and name are the identity.
type PodRef struct{ Namespace, Pod, Container string }

func comparePodRef(a, b PodRef) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Pod, b.Pod),
		strings.Compare(a.Container, b.Container),
	)
}

// Assignments maps device UUIDs to the containers allocated them. It is
// immutable after BuildAssignments, so one can be shared by any number of
// readers without locks.
type Assignments struct {
	pods          map[string][]PodRef // sorted, deduplicated
	unresolved    int
	unresolvedIDs []string // up to maxUnresolvedSamples, for logs
}

// Pods returns the containers allocated the device, sorted by namespace, pod
// and container, without duplicates. A device shared by time-slicing or MPS
// lists every pod sharing it. The slice is a copy the caller may keep. A nil
// receiver returns nil, so readers need not check for "no data yet".
func (a *Assignments) Pods(uuid string) []PodRef {
	if a == nil {
		return nil
	}
	return slices.Clone(a.pods[uuid])
}

// Len returns the number of devices with at least one pod.
func (a *Assignments) Len() int {
	if a == nil {
		return 0
	}
	return len(a.pods)
}

// Unresolved returns the number of nvidia.com/* device IDs that failed to
// parse or matched no device of the inventory (each occurrence counts). A
// non-zero value means attribution is incomplete: a stale inventory after a
// MIG reconfiguration, or a device plugin spelling IDs in a new way.
func (a *Assignments) Unresolved() int {
	if a == nil {
		return 0
	}
	return a.unresolved
}

// BuildAssignments attributes every nvidia.com/* device of the answer to its
// containers through the resolver. Nil entries of a malformed answer are
// skipped: a bad answer must cost attribution, never the agent.
func BuildAssignments(resp *podresourcesv1.ListPodResourcesResponse, r Resolver) *Assignments {
	sets := make(map[string]map[PodRef]struct{})
	a := &Assignments{}
	for _, pod := range resp.GetPodResources() {
		for _, ctr := range pod.GetContainers() {
			ref := PodRef{Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: ctr.GetName()}
			for _, dev := range ctr.GetDevices() {
				if !strings.HasPrefix(dev.GetResourceName(), resourcePrefix) {
					continue
				}
				for _, id := range dev.GetDeviceIds() {
					uuid, ok := resolve(r, id)
					if !ok {
						a.unresolved++
						if len(a.unresolvedIDs) < maxUnresolvedSamples {
							a.unresolvedIDs = append(a.unresolvedIDs, id)
						}
						continue
					}
					if sets[uuid] == nil {
						sets[uuid] = make(map[PodRef]struct{})
					}
					sets[uuid][ref] = struct{}{}
				}
			}
		}
	}
	a.pods = make(map[string][]PodRef, len(sets))
	for uuid, set := range sets {
		refs := make([]PodRef, 0, len(set))
		for ref := range set {
			refs = append(refs, ref)
		}
		slices.SortFunc(refs, comparePodRef)
		a.pods[uuid] = refs
	}
	return a
}

func resolve(r Resolver, id string) (string, bool) {
	ref, err := ParseDeviceID(id)
	if err != nil || r == nil {
		return "", false
	}
	return r.Resolve(ref)
}
