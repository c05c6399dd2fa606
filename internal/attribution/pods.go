package attribution

import (
	"cmp"
	"slices"
	"strings"
)

// Pod names a container of a pod: the agent's one pod identity, owned by
// the stage that joins pods to devices and processes. Every source of pod
// names (the kubelet's pod-resources API, the pod watch, the simulated
// node) speaks it; readers (the exporter, the stream) see it only through
// a View. The pod-resources API carries no pod UID, so namespace and name
// are the identity. Container is empty where only the pod is known.
type Pod struct {
	Namespace, Name, Container string
	// Meta is the pod's UID and labels from the pod watch, joined by
	// namespace and name into a View's pods where they were asked for
	// (WithPodMetas); nil otherwise, and in every pod map. It is not part
	// of the identity: ComparePods and the joins ignore it.
	Meta *PodMeta
}

// ComparePods orders pods by namespace, name and container.
func ComparePods(a, b Pod) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(a.Container, b.Container),
	)
}

// DevicePods says which pods hold each device, by the device's UUID
// ("GPU-..." or "MIG-..."). It is immutable once made, so one can be
// shared by any number of readers without locks.
type DevicePods struct {
	byDevice map[string][]Pod
}

// NewDevicePods takes byDevice (the caller must not keep it) and sorts
// and deduplicates each device's pods.
func NewDevicePods(byDevice map[string][]Pod) *DevicePods {
	for uuid, pods := range byDevice {
		slices.SortFunc(pods, ComparePods)
		byDevice[uuid] = slices.Compact(pods)
	}
	return &DevicePods{byDevice: byDevice}
}

// Pods returns the pods holding the device, sorted by namespace, name and
// container, without duplicates; a device shared by time-slicing or MPS
// lists every pod sharing it. The slice is shared: callers must not
// modify it. A nil receiver returns nil, so readers need not check for
// "no data yet".
func (d *DevicePods) Pods(uuid string) []Pod {
	if d == nil {
		return nil
	}
	return d.byDevice[uuid]
}

// Len returns the number of devices with at least one pod.
func (d *DevicePods) Len() int {
	if d == nil {
		return 0
	}
	return len(d.byDevice)
}

// PodSource gives the latest device-to-pod map: the kubelet's
// pod-resources client, or the simulated node.
type PodSource interface {
	// DevicePods returns the latest map; nil while none exists.
	DevicePods() *DevicePods
	// Stale reports that the map is the last good one of a source that
	// is failing now (the kubelet is down or restarting).
	Stale() bool
}
