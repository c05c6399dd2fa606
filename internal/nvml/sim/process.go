package sim

import (
	"bytes"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Process is a simulated GPU process and the pod it runs in: what the
// simulated node's /proc (ProcFS) and a pod watch would say about it. The
// pods are those internal/agent's SimulatedPods says hold the GPUs: GPU i
// runs default/inference-i (container "server"); with two GPUs or more the
// last one is time-sliced between media/webrtc-sfu-0 and -1 (container
// "sfu"), each with a process of its own. Everything is derived from the
// seed, so golden files stay stable.
type Process struct {
	PID       uint32
	GPU       int // index
	Namespace string
	Pod       string
	Container string
	PodUID    string // canonical, with dashes
	// ContainerID is 64 hex characters, as containerd names it.
	ContainerID string
	// Cgroup is the contents of /proc/<PID>/cgroup: one cgroup v2 line,
	// systemd driver, Burstable QoS, containerd.
	Cgroup string

	// The process's shares of its GPU's load. Those of one GPU add up to
	// 1, so the per-process figures add up to the GPU-wide ones.
	smShare, encShare float64
	// webrtc processes are listed as graphics processes too (NVENC with
	// CUDA, as a media server's is) and have the sessions' resolutions.
	webrtc bool
}

// Processes returns every simulated process, by GPU then PID.
func (l *Library) Processes() []Process {
	var out []Process
	for _, d := range l.devices {
		out = append(out, d.procs...)
	}
	return out
}

// addProcesses gives each GPU its processes; see Process.
func (l *Library) addProcesses(seed int64) {
	n := len(l.devices)
	for i, d := range l.devices {
		s := mix(uint64(seed)) ^ mix(uint64(i)+1) ^ 0x9c0de // #nosec G115 -- bits of a hash, truncated on purpose
		if n >= 2 && i == n-1 {
			// Seeded shares of a quarter to two fifths for the first
			// pod: two media servers with different loads.
			sm0, enc0 := 0.25+unit(s, 1)*0.15, 0.25+unit(s, 2)*0.15
			d.procs = []Process{
				newProcess(s, 0, i, "media", "webrtc-sfu-0", "sfu", sm0, enc0),
				newProcess(s, 1, i, "media", "webrtc-sfu-1", "sfu", 1-sm0, 1-enc0),
			}
			d.procs[0].webrtc, d.procs[1].webrtc = true, true
			continue
		}
		d.procs = []Process{newProcess(s, 0, i, "default", fmt.Sprintf("inference-%d", i), "server", 1, 1)}
	}
}

func newProcess(seed uint64, k, gpu int, ns, pod, container string, smShare, encShare float64) Process {
	s := mix(seed ^ uint64(k+1)*0x51ed) // #nosec G115 -- bits of a hash, truncated on purpose
	a, b := mix(s^1), mix(s^2)
	uid := fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", uint32(a>>32), uint16(a>>16), uint16(a)&0xfff, // #nosec G115 -- bits of a hash, truncated on purpose
		0x8000|uint16(b>>48)&0x3fff, b&0xffffffffffff)
	cid := fmt.Sprintf("%016x%016x%016x%016x", mix(s^3), mix(s^4), mix(s^5), mix(s^6))
	return Process{
		PID:         uint32(20000 + gpu*100 + k*7 + int(s%5)), // #nosec G115 -- a small simulated value
		GPU:         gpu,
		Namespace:   ns,
		Pod:         pod,
		Container:   container,
		PodUID:      uid,
		ContainerID: cid,
		Cgroup: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
			strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope\n",
		smShare:  smShare,
		encShare: encShare,
	}
}

// split divides total among the shares so the parts add up to total
// exactly: each part is the rounded cumulative share less the previous.
func split(total float64, i int, shares func(int) float64, n int) float64 {
	var before, upTo float64
	for j := 0; j <= i; j++ {
		upTo += shares(j)
		if j < i {
			before = upTo
		}
	}
	if i == n-1 {
		upTo = 1
	}
	return math.Round(total*upTo) - math.Round(total*before)
}

// load is one moment's GPU-wide utilization, percent, that the processes
// split: what GetSamples reports for the same slot.
type load struct{ sm, mem, enc, dec float64 }

// loadAt is the GPU-wide load of sample slot k, as GetSamples computes it.
func (d *Device) loadAt(k uint64) load {
	t := float64(k*samplePeriodUs) / 1e6
	sm := d.gpu.at(t)
	return load{sm: sm, mem: math.Round(sm * 0.6), enc: d.enc.at(t), dec: d.dec.at(t)}
}

// processUtil answers GetProcessUtilization: one sample per process with
// non-zero utilization, stamped with the driver's latest sample slot, or
// NOT_FOUND when that slot is not newer than lastSeen (a caller faster
// than the driver's 1/6 s). adjust, if set, changes the slot's load (a
// load step).
func (d *Device) processUtil(lastSeen uint64, adjust func(ts uint64, l *load)) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	d.cost(callGetProcessUtilization)
	if r := d.ret(); r != nvml.SUCCESS {
		return nil, r
	}
	epochUs := uint64(d.lib.epoch.UnixMicro())
	k := (uint64(d.lib.now().UnixMicro()) - epochUs) / samplePeriodUs
	ts := epochUs + k*samplePeriodUs
	if ts <= lastSeen {
		return nil, nvml.ERROR_NOT_FOUND
	}
	l := d.loadAt(k)
	if adjust != nil {
		adjust(ts, &l)
	}
	n := len(d.procs)
	sm := func(i int) float64 { return d.procs[i].smShare }
	enc := func(i int) float64 { return d.procs[i].encShare }
	out := make([]nvml.ProcessUtilizationSample, 0, n)
	for i, p := range d.procs {
		s := nvml.ProcessUtilizationSample{
			Pid:       p.PID,
			TimeStamp: ts,
			SmUtil:    uint32(split(l.sm, i, sm, n)),
			MemUtil:   uint32(split(l.mem, i, sm, n)),
			EncUtil:   uint32(split(l.enc, i, enc, n)),
			DecUtil:   uint32(split(l.dec, i, enc, n)),
		}
		if s.SmUtil|s.MemUtil|s.EncUtil|s.DecUtil != 0 { // NVML omits idle processes
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return out, nvml.SUCCESS
}

func (d *Device) GetProcessUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	return d.processUtil(lastSeen, nil)
}

// runningProcesses lists the processes with their framebuffer: the
// GPU's used memory split by SM share, to the MiB, adding up to
// GetMemoryInfo_v2's used.
func (d *Device) runningProcesses(c call, graphics bool) ([]nvml.ProcessInfo, nvml.Return) {
	d.cost(c)
	if r := d.ret(); r != nvml.SUCCESS {
		return nil, r
	}
	usedMiB := float64(d.used() >> 20)
	n := len(d.procs)
	sm := func(i int) float64 { return d.procs[i].smShare }
	out := make([]nvml.ProcessInfo, 0, n)
	for i, p := range d.procs {
		if graphics && !p.webrtc {
			continue
		}
		out = append(out, nvml.ProcessInfo{Pid: p.PID, UsedGpuMemory: uint64(split(usedMiB, i, sm, n)) << 20,
			GpuInstanceId: math.MaxUint32, ComputeInstanceId: math.MaxUint32})
	}
	return out, nvml.SUCCESS
}

func (d *Device) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return d.runningProcesses(callGetComputeRunningProcesses, false)
}

// GetGraphicsRunningProcesses lists the media servers again, with the
// same memory: NVML lists a process with both contexts in both lists.
func (d *Device) GetGraphicsRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return d.runningProcesses(callGetGraphicsRunningProcesses, true)
}

// encoderStats is the simulated encoder at utilization u: 16 sessions at
// full load, frame rate dropping and latency (µs) growing with load.
func encoderStats(u float64) (sessions int, fps, latencyUs uint32) {
	sessions = int(math.Round(u / 100 * 16))
	if sessions == 0 {
		return 0, 0, 0
	}
	return sessions, uint32(math.Round(60 - u*0.3)), uint32(math.Round(1500 + u*60))
}

// encoderSessions lists the sessions of encoder utilization u, split
// between the processes by encoder share, so that their count, mean fps
// and mean latency are exactly GetEncoderStats'. With two processes the
// second runs its sessions at a higher latency than the first (a busier
// media server) and the first makes up the difference; every session runs
// at GetEncoderStats' frame rate (shifting it too would push the first
// process's above the encoder's 60 fps).
// The first process encodes H264; the second, HEVC on its first session
// when it has three or more, H264 on the rest.
func (d *Device) encoderSessions(u float64) ([]nvml.EncoderSessionInfo, nvml.Return) {
	d.cost(callGetEncoderSessions)
	if r := d.ret(); r != nvml.SUCCESS {
		return nil, r
	}
	total, fps, lat := encoderStats(u)
	if total == 0 || len(d.procs) == 0 {
		return []nvml.EncoderSessionInfo{}, nvml.SUCCESS
	}
	n := len(d.procs)
	enc := func(i int) float64 { return d.procs[i].encShare }
	counts := make([]int, n)
	for i := range counts {
		counts[i] = int(split(float64(total), i, enc, n))
	}
	// The last process's sessions run at lat+dLat; the others share what
	// keeps the sum at total×lat (positive: dLat is at most lat/2).
	var dLat uint32
	if n > 1 {
		dLat = lat * uint32(total-counts[n-1]) / uint32(2*total) // #nosec G115 -- a small simulated value
	}
	restLat := total*int(lat) - counts[n-1]*int(lat+dLat)
	restN := total - counts[n-1]
	out := make([]nvml.EncoderSessionInfo, 0, total)
	id := uint32(1)
	for i, p := range d.procs {
		w, h := uint32(1280), uint32(720)
		if p.webrtc && i == n-1 && n > 1 {
			w, h = 1920, 1080
		}
		for k := 0; k < counts[i]; k++ {
			s := nvml.EncoderSessionInfo{SessionId: id, Pid: p.PID, CodecType: uint32(nvml.ENCODER_QUERY_H264),
				HResolution: w, VResolution: h, AverageFps: fps, AverageLatency: lat}
			if i == n-1 && n > 1 {
				s.AverageLatency = lat + dLat
				if k == 0 && counts[i] >= 3 {
					s.CodecType = uint32(nvml.ENCODER_QUERY_HEVC)
				}
			} else if n > 1 {
				// Spread the remainder over the other sessions, whole
				// numbers that add up exactly.
				s.AverageLatency = uint32(restLat / restN) // #nosec G115 -- a small simulated value
				if k < restLat%restN {
					s.AverageLatency++
				}
			}
			out = append(out, s)
			id++
		}
	}
	return out, nvml.SUCCESS
}

func (d *Device) GetEncoderSessions() ([]nvml.EncoderSessionInfo, nvml.Return) {
	return d.encoderSessions(d.enc.smooth(d.t()))
}

// GetFBCSessions: nothing captures the frame buffer on the simulated node.
func (d *Device) GetFBCSessions() ([]nvml.FBCSessionInfo, nvml.Return) {
	d.cost(callGetFBCSessions)
	return []nvml.FBCSessionInfo{}, d.ret()
}

// ProcFS returns the simulated node's procfs: <pid>/cgroup of every
// simulated process, and nothing else (all that cgroup reads). Any other
// PID is gone (fs.ErrNotExist), as an exited process is. Pass it to
// cgroup.NewResolverFS in place of the host's /proc.
func (l *Library) ProcFS() fs.FS {
	files := make(procFS)
	for _, p := range l.Processes() {
		files[fmt.Sprintf("%d/cgroup", p.PID)] = []byte(p.Cgroup)
	}
	return files
}

// procFS is a read-only file system of whole files by path.
type procFS map[string][]byte

func (f procFS) Open(name string) (fs.File, error) {
	b, ok := f[name]
	if !ok || !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &procFile{Reader: bytes.NewReader(b), name: name, size: int64(len(b))}, nil
}

type procFile struct {
	*bytes.Reader
	name string
	size int64
}

func (f *procFile) Stat() (fs.FileInfo, error) { return procInfo{f}, nil }
func (f *procFile) Close() error               { return nil }

type procInfo struct{ f *procFile }

func (i procInfo) Name() string       { return i.f.name[strings.LastIndexByte(i.f.name, '/')+1:] }
func (i procInfo) Size() int64        { return i.f.size }
func (i procInfo) Mode() fs.FileMode  { return 0o444 }
func (i procInfo) ModTime() time.Time { return time.Time{} }
func (i procInfo) IsDir() bool        { return false }
func (i procInfo) Sys() any           { return nil }
