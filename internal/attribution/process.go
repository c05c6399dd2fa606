package attribution

import (
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// ProcessPods maps the host PIDs of one snapshot's GPU processes to the
// pods they run in, by namespace, name and container. Reading /proc and
// naming pods is another stage's job (ProcessStage), done once per
// snapshot off every reader's path; the join here is map lookups.
type ProcessPods struct {
	// Seq is the snapshot the PIDs were resolved for. A reader may join
	// a newer snapshot with it: a PID keeps its pod, and one new since is
	// left unattributed for that tick rather than waited for.
	Seq uint64
	// Pods holds each PID that runs in a pod; host processes, PIDs that
	// are gone, and pods the name source does not know are absent. The
	// container is empty when only the pod is known.
	Pods map[uint32]Pod
}

// Processes gives the latest PID-to-pod map, nil while none exists (no
// name source, or one not synced yet: a pod then keeps the device-level
// values rather than show a 0 that only means "not known yet").
type Processes interface {
	ProcessPods() *ProcessPods
}

// PodShare is one pod's own part of a device's values: the sums over its
// processes. Reading holds GPUUtil (NVML's per-process SM utilization),
// MemCopyUtil, EncUtil, DecUtil, FBUsed, EncSessions, EncFPS and
// EncLatency, each where its per-process source answered (shareSource).
type PodShare struct {
	telemetry.Reading
	// Encoder is the pod's encoder sessions by codec: sessions summed,
	// fps and mean latency averaged over sessions, the worst latency.
	// Meaningful only where Reading has EncSessions.
	Encoder [telemetry.NumCodecs]telemetry.EncoderSessions
	// Processes is how many of the device's processes are the pod's.
	Processes int
}

// shareSource names the per-process source of each field a PodShare can
// hold. A field not in it has no per-pod value: a pod's series of it
// carries the device's (and summing those over pods double-counts).
var shareSource = map[telemetry.Field]telemetry.ProcessData{
	telemetry.GPUUtil:     telemetry.ProcUtil,
	telemetry.MemCopyUtil: telemetry.ProcUtil,
	telemetry.EncUtil:     telemetry.ProcUtil,
	telemetry.DecUtil:     telemetry.ProcUtil,
	telemetry.FBUsed:      telemetry.ProcFB,
	telemetry.EncSessions: telemetry.ProcEncSessions,
	telemetry.EncFPS:      telemetry.ProcEncSessions,
	telemetry.EncLatency:  telemetry.ProcEncSessions,
}

// perPodSources are the sources that make a device's per-pod values
// worth having; FBC sessions alone feed none of them.
const perPodSources = telemetry.ProcessDataSet(1<<telemetry.ProcUtil | 1<<telemetry.ProcFB | 1<<telemetry.ProcEncSessions)

// PodValue is the value of f for the device's i-th pod: the pod's own
// share where the device is shared, has per-pod values and f's
// per-process source is one the GPU answers (absent when that source
// failed this tick, rather than the device's value in its place), else
// the device's value: always so for a device held by one pod. The
// exporter and the stream both ask this, so they cannot disagree.
func (d *Device) PodValue(i int, f telemetry.Field) (float64, bool) {
	if d.PerPod != nil {
		if src, ok := shareSource[f]; ok && d.State.ProcessSupport.Has(src) {
			return d.PerPod[i].Get(f)
		}
	}
	return d.Reading.Get(f)
}

// attributeProcesses maps the processes of every current whole GPU with
// per-process data to its pods: what no pod explains, and each pod's own
// share where several pods share the GPU. A MIG instance gets none:
// NVML's per-process utilization is not reported per instance.
func attributeProcesses(v *View, pp *ProcessPods) {
	for i := range v.Devices {
		d := &v.Devices[i]
		if d.MIG != nil || !d.Current() || d.State.ProcessSupport&perPodSources == 0 {
			continue
		}
		d.ProcessesAttributed = true
		shares, unattributed := podShares(d.State, d.Pods, pp)
		d.Unattributed = unattributed
		has := processData(d.State)
		for e := range telemetry.NumEngines {
			f := e.Field()
			dev, ok := d.Reading.Get(f)
			if !ok || !has.Has(shareSource[f]) {
				continue
			}
			for k := range shares {
				dev -= shares[k].Values[f]
			}
			d.UnattributedLoad.Set(f, max(dev, 0))
		}
		if d.Shared {
			d.PerPod = shares
		}
	}
}

// podShares sums the processes of st by pod. Every pod gets a share, 0
// for a pod with no process on the GPU this tick (not the GPU's value); a
// process in no pod of pods (a host process, a pod that does not hold
// this GPU, a PID gone before it was resolved) is counted in unattributed
// and left out.
func podShares(st *telemetry.DeviceState, pods []Pod, pp *ProcessPods) (shares []PodShare, unattributed int) {
	has := processData(st)
	if len(pods) > 0 {
		shares = make([]PodShare, len(pods))
	}
	for _, p := range st.Processes {
		ref, ok := pp.Pods[p.PID]
		k := -1
		if ok {
			k = podIndex(pods, ref)
		}
		if k < 0 {
			unattributed++
			continue
		}
		s := &shares[k]
		s.Processes++
		s.Values[telemetry.GPUUtil] += p.SMUtil
		s.Values[telemetry.MemCopyUtil] += p.MemUtil
		s.Values[telemetry.EncUtil] += p.EncUtil
		s.Values[telemetry.DecUtil] += p.DecUtil
		s.Values[telemetry.FBUsed] += float64(p.FBUsed)
		for c, e := range p.Encoder {
			if e.Sessions == 0 {
				continue
			}
			// Weighted sums here, divided below: a mean over sessions.
			t := &s.Encoder[c]
			t.FPS += e.FPS * float64(e.Sessions)
			t.LatencyMean += e.LatencyMean * float64(e.Sessions)
			t.LatencyMax = max(t.LatencyMax, e.LatencyMax)
			t.Sessions += e.Sessions
		}
	}
	for k := range shares {
		s := &shares[k]
		for c := range s.Encoder {
			if e := &s.Encoder[c]; e.Sessions > 0 {
				e.FPS /= float64(e.Sessions)
				e.LatencyMean /= float64(e.Sessions)
			}
		}
		total := (&telemetry.ProcessSample{Encoder: s.Encoder}).EncoderTotal()
		s.Values[telemetry.EncSessions] = float64(total.Sessions)
		s.Values[telemetry.EncFPS] = total.FPS
		s.Values[telemetry.EncLatency] = total.LatencyMean
		for f, src := range shareSource {
			if has.Has(src) {
				s.Has = s.Has.With(f)
			} else {
				s.Values[f] = 0
			}
		}
	}
	return shares, unattributed
}

// processData is the per-process sources that answered for st this tick.
// Every process of a reading has the same Has; without processes the
// sources the GPU answers stand for it, so an idle pod reads 0.
func processData(st *telemetry.DeviceState) telemetry.ProcessDataSet {
	has := st.ProcessSupport
	if len(st.Processes) > 0 {
		has &= st.Processes[0].Has
	}
	return has
}

// podIndex finds the pod a process belongs to among a device's pods, by
// namespace and name: the pod-resources API allocates a device to one
// container, but any container of the pod may run the process. The
// allocated container with the process's name wins where a pod lists
// several.
func podIndex(pods []Pod, ref Pod) int {
	k := -1
	for i, p := range pods {
		if p.Namespace != ref.Namespace || p.Name != ref.Name {
			continue
		}
		if p.Container == ref.Container {
			return i
		}
		if k < 0 {
			k = i
		}
	}
	return k
}
