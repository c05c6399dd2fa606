// Package attribution joins a telemetry snapshot with the node's pods:
// which pods hold each GPU and each MIG instance, and which pod each GPU
// process runs in. It is its own stage because two readers need the same
// join, the Prometheus exporter and the push stream, and they must never
// disagree about which pod a device belongs to. It owns the agent's one
// pod identity (Pod); the sources of pods (the kubelet's pod-resources
// API, the pod watch, the simulated node) implement its small interfaces
// (PodSource, Names), and the readers see only Views.
//
// The join knows the device plugins' conventions only through DevicePods
// (GPU or MIG UUID, replicas of a time-sliced or MPS-shared GPU collapsed
// to the device they replicate, pods sorted and deduplicated); it adds
// the device identity, the reading that belongs to each device, and the
// one rule of which devices have a current reading. Given a PID-to-pod
// map (ProcessStage builds it off the readers' path), it also sums a
// GPU's processes by pod into each pod's own share, and Device.PodValue
// is the one rule of which value a pod's series carries.
package attribution

import (
	"slices"
	"sync/atomic"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// View is one snapshot joined with one pod map. Like the snapshot it is
// immutable once built, so any number of readers may share it.
type View struct {
	Snapshot *telemetry.Snapshot
	// PodsStale says the pod map is the last good one of a source that is
	// failing now (PodSource.Stale).
	PodsStale bool
	// Devices are every GPU of the snapshot, each followed by its MIG
	// instances, in the snapshot's order.
	Devices []Device
}

// Device is a whole GPU or one MIG instance of a GPU, with its pods.
type Device struct {
	// GPU is the whole GPU, or the parent GPU of a MIG instance.
	GPU *telemetry.Device
	// MIG is the instance, nil for a whole GPU.
	MIG *telemetry.MIGDevice
	// State is the GPU's part of the snapshot (of the parent GPU for a MIG
	// instance): health, windows, the driver's new samples, XIDs.
	State *telemetry.DeviceState
	// Reading is the device's own values: the GPU's, or the MIG
	// instance's (framebuffer only, NVML reports nothing else for MIG).
	Reading *telemetry.Reading
	// Pods hold the device, sorted by namespace, pod and container; nil
	// when no pod does. A time-sliced or MPS-shared device lists every
	// pod sharing it.
	Pods []Pod
	// Shared is set when more than one pod holds the device (time-slicing,
	// MPS; containers of one pod count once). Only then do pods have
	// shares of their own: a device held by one pod is that pod's, and
	// the pod reads the device's values whatever process attribution says
	// (a process whose cgroup could not be read must not make a busy pod
	// look idle).
	Shared bool
	// PerPod is each pod's own share of a shared device's values, parallel
	// to Pods, where per-process attribution provides it (NVML's per-PID
	// figures mapped to pods; see PodValue). Nil for a device that is not
	// shared, and without per-process data: every pod then sees the
	// device-level Reading.
	PerPod []PodShare
	// ProcessesAttributed is set where the GPU's processes were mapped to
	// pods this tick (per-process data and a PID-to-pod map exist);
	// Unattributed then counts the processes that are in none of Pods, and
	// UnattributedLoad holds, for each utilization field with a
	// per-process source, the part of the device's value that the pods'
	// processes do not explain (the device's value less the sum of the
	// pods' shares, never below 0).
	ProcessesAttributed bool
	Unattributed        int
	UnattributedLoad    telemetry.Reading
}

// UUID is the device's UUID: "GPU-..." or, for a MIG instance, "MIG-...".
func (d *Device) UUID() string {
	if d.MIG != nil {
		return d.MIG.UUID
	}
	return d.GPU.UUID
}

// Lost reports whether NVML reported the GPU (or the MIG instance's GPU)
// lost.
func (d *Device) Lost() bool { return d.State.Lost }

// Stalled reports whether the GPU's NVML calls have not returned for two
// intervals (the sampler then publishes no reading for it).
func (d *Device) Stalled() bool { return d.State.Stalled }

// Current reports whether the device's reading is current. This is the
// one place that decides which devices have values to serve: a lost GPU
// keeps its last reading in the snapshot, and a stalled one has none
// this tick; neither may be served as a current value. Readers leave a device that is not current out (the
// exporter) or send it flagged, without values (the stream).
func (d *Device) Current() bool { return !d.State.Lost && !d.State.Stalled }

// Attribute joins snap with the pod map a (nil: no pod holds anything).
// Every GPU is listed, followed by the MIG instances the snapshot has a
// reading for. With pp (nil: none yet), each GPU's processes are summed
// by pod into PerPod.
func Attribute(snap *telemetry.Snapshot, a *DevicePods, pp *ProcessPods) *View {
	n := len(snap.Devices)
	for i := range snap.Devices {
		n += min(len(snap.Devices[i].MIG), len(snap.States[i].MIG))
	}
	v := &View{Snapshot: snap, Devices: make([]Device, 0, n)}
	for i := range snap.Devices {
		gpu, st := &snap.Devices[i], &snap.States[i]
		pods := a.Pods(gpu.UUID)
		v.Devices = append(v.Devices, Device{GPU: gpu, State: st, Reading: &st.Reading, Pods: pods, Shared: shared(pods)})
		for j := range gpu.MIG {
			if j >= len(st.MIG) {
				break
			}
			mig := &gpu.MIG[j]
			pods := migPods(a, mig)
			v.Devices = append(v.Devices, Device{GPU: gpu, MIG: mig, State: st, Reading: &st.MIG[j], Pods: pods, Shared: shared(pods)})
		}
	}
	if pp != nil {
		attributeProcesses(v, pp)
	}
	return v
}

// migPods returns the pods holding a GPU instance: the device plugin
// allocates compute instances, each with its own UUID, and the instance's
// one series stands for all of them.
func migPods(a *DevicePods, mig *telemetry.MIGDevice) []Pod {
	pods := a.Pods(mig.UUID)
	if len(mig.ComputeInstances) <= 1 {
		return pods
	}
	pods = slices.Clone(pods) // DevicePods' slices are shared
	for _, ci := range mig.ComputeInstances {
		if ci.UUID != mig.UUID {
			pods = append(pods, a.Pods(ci.UUID)...)
		}
	}
	slices.SortFunc(pods, ComparePods)
	return slices.Compact(pods)
}

// shared reports whether pods, sorted by namespace and pod, name more
// than one pod.
func shared(pods []Pod) bool {
	for i := 1; i < len(pods); i++ {
		if pods[i].Namespace != pods[0].Namespace || pods[i].Name != pods[0].Name {
			return true
		}
	}
	return false
}

// Snapshots gives the latest snapshot; the sampler and telemetry.Store
// implement it.
type Snapshots interface {
	Latest() *telemetry.Snapshot
}

// Attributor serves the view of the latest snapshot, pod map and
// PID-to-pod map, built once per triple and shared by every reader until
// one changes: a scrape every second of a node sampled ten times a second
// joins only the snapshots it serves. The join reads no file and calls
// nothing: /proc is read by the stage behind Processes.
type Attributor struct {
	src   Snapshots
	pods  PodSource // nil: no pod attribution
	procs Processes // nil: no per-process attribution
	metas PodMetas  // nil: pods without UIDs or labels
	last  atomic.Pointer[cached]
}

// Option configures an Attributor.
type Option func(*Attributor)

// WithPodMetas joins each view's pods with their UID and labels from m
// (Pod.Meta), by namespace and name. The join is made with each view, so
// a pod's new labels reach its series with the next snapshot.
func WithPodMetas(m PodMetas) Option {
	return func(at *Attributor) { at.metas = m }
}

type cached struct {
	view *View
	a    *DevicePods
	pp   *ProcessPods
}

// NewAttributor returns an Attributor over src, pods (nil when pod
// attribution is off) and procs (nil when per-process attribution is).
func NewAttributor(src Snapshots, pods PodSource, procs Processes, opts ...Option) *Attributor {
	at := &Attributor{src: src, pods: pods, procs: procs}
	for _, o := range opts {
		o(at)
	}
	return at
}

// Snapshots returns the snapshot source the views are built on.
func (at *Attributor) Snapshots() Snapshots { return at.src }

// Latest returns the view of the latest snapshot, or nil before the first.
// Concurrent callers may each build it once; they get equal views.
func (at *Attributor) Latest() *View {
	snap := at.src.Latest()
	if snap == nil {
		return nil
	}
	return at.View(snap)
}

// View returns the view of snap with the latest pod and PID-to-pod maps:
// the latest snapshot's, or one a reader that follows every snapshot (the
// stream) is at.
func (at *Attributor) View(snap *telemetry.Snapshot) *View {
	var a *DevicePods
	var stale bool
	if at.pods != nil {
		a, stale = at.pods.DevicePods(), at.pods.Stale()
	}
	var pp *ProcessPods
	if at.procs != nil {
		pp = at.procs.ProcessPods()
	}
	if c := at.last.Load(); c != nil && c.view.Snapshot == snap && c.a == a && c.pp == pp && c.view.PodsStale == stale {
		return c.view
	}
	v := Attribute(snap, a, pp)
	v.PodsStale = stale
	if at.metas != nil {
		joinMetas(v, at.metas)
	}
	at.last.Store(&cached{view: v, a: a, pp: pp})
	return v
}

// joinMetas gives every pod of v its metadata from m. The devices' pod
// slices are the pod map's, shared by every view: each device gets a copy.
func joinMetas(v *View, m PodMetas) {
	for i := range v.Devices {
		d := &v.Devices[i]
		if len(d.Pods) == 0 {
			continue
		}
		pods := slices.Clone(d.Pods)
		for k := range pods {
			pods[k].Meta = m.PodMeta(pods[k].Namespace, pods[k].Name)
		}
		d.Pods = pods
	}
}
