package nvml

import (
	"cmp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// Per-process data comes from five calls, each probed once per GPU:
//
//   - GetProcessUtilization(lastSeen): SM, memory, encoder and decoder
//     utilization per PID, each sample stamped by the driver (CPU clock,
//     µs). NVML lists only processes with non-zero utilization in the
//     driver's last sample period, answers NOT_FOUND when no sample is
//     newer than lastSeen, and some drivers (and NVIDIA's mock library)
//     answer samples already read: samples are kept by timestamp, once.
//   - GetComputeRunningProcesses, GetGraphicsRunningProcesses: framebuffer
//     used per PID. A process with CUDA and graphics contexts is in both
//     lists with its whole usage in each: merged by PID, not summed.
//   - GetEncoderSessions, GetFBCSessions: one entry per session, with the
//     PID, codec, and the session's average fps and latency; aggregated
//     per PID (and codec).
//
// None is known to block the way GetPcieThroughput does, but the driver
// walks its per-process tables for each, and go-nvml sizes the lists by
// retrying with doubled buffers (one ioctl per try). Each call is timed on
// the worker: one that takes more than a quarter of the interval on
// slowCallStrikes readings in a row moves off the tick to a goroutine of
// its own at a slower cadence, as the PCIe fallback does, with a log line.

type procCall uint8

const (
	callProcUtil procCall = iota
	callComputeProcs
	callGraphicsProcs
	callEncSessions
	callFBCSessions
	numProcCalls
)

var procCallNames = [numProcCalls]string{
	"GetProcessUtilization", "GetComputeRunningProcesses", "GetGraphicsRunningProcesses",
	"GetEncoderSessions", "GetFBCSessions",
}

var procCallData = [numProcCalls]telemetry.ProcessData{
	telemetry.ProcUtil, telemetry.ProcFB, telemetry.ProcFB, telemetry.ProcEncSessions, telemetry.ProcFBCSessions,
}

// slowCallStrikes is how many readings in a row a per-process call may
// take more than a quarter of the interval before it moves off the tick:
// more than one, so a single hiccup (a scheduler delay) does not move it.
const slowCallStrikes = 3

// minUtilHold is the least time a PID's latest utilization sample stands
// for its utilization: NVML samples every 1/6 s to 1 s, and a call made
// before the next sample answers NOT_FOUND, which must not read as idle.
// Past the hold (at least two cadences of the call) a PID with no newer
// sample is idle, as NVML omits idle processes.
const minUtilHold = 2 * time.Second

// procAnswer is one per-process call's answer; only the slice of its call
// is set.
type procAnswer struct {
	ret   nvml.Return
	util  []nvml.ProcessUtilizationSample
	infos []nvml.ProcessInfo
	enc   []nvml.EncoderSessionInfo
	fbc   []nvml.FBCSessionInfo
}

type procCallState struct {
	unsupported bool
	failing     bool
	slow        int // readings in a row the call took too long
	// off carries the latest answer once the call moved off the tick.
	off    *atomic.Pointer[procAnswer]
	period time.Duration // the off-tick cadence
}

// processState is a device's per-process state, touched only by its
// worker.
type processState struct {
	calls    [numProcCalls]procCallState
	lastSeen uint64              // newest utilization sample read, µs
	util     map[uint32]procUtil // latest utilization sample per PID
	// Scratch for one reading, reused: the list is copied once into the
	// snapshot.
	list  []telemetry.ProcessSample
	index map[uint32]int // PID -> position in list
	order []int32        // positions in list by ascending PID
	// published is the last list handed to a snapshot, read-only: a
	// reading that finds the same processes with the same figures (an
	// idle GPU, a tick between two driver samples) shares it.
	published []telemetry.ProcessSample
	// answered is the set of sources that answered this reading.
	answered telemetry.ProcessDataSet
	errors   uint64
}

type procUtil struct {
	ts                uint64
	sm, mem, enc, dec uint32
}

// callProc makes one per-process call. It touches no device state, so the
// off-tick goroutines use it too.
func (d *device) callProc(c procCall, lastSeen uint64) (a procAnswer) {
	switch c {
	case callProcUtil:
		a.util, a.ret = d.handle.GetProcessUtilization(lastSeen)
	case callComputeProcs:
		a.infos, a.ret = d.handle.GetComputeRunningProcesses()
	case callGraphicsProcs:
		a.infos, a.ret = d.handle.GetGraphicsRunningProcesses()
	case callEncSessions:
		a.enc, a.ret = d.handle.GetEncoderSessions()
	case callFBCSessions:
		a.fbc, a.ret = d.handle.GetFBCSessions()
	}
	return a
}

// nothingNewer reports whether a utilization answer means no sample newer
// than lastSeen: NOT_FOUND, or go-nvml's answer when the driver counts
// zero samples (an empty slice with INSUFFICIENT_SIZE).
func nothingNewer(a procAnswer) bool {
	return a.ret == nvml.ERROR_NOT_FOUND || (a.ret == nvml.ERROR_INSUFFICIENT_SIZE && len(a.util) == 0)
}

// probeProcesses asks each per-process call once. A MIG-enabled GPU
// reports no per-process data through NVML (DCGM's profiling fields cover
// MIG), so it is not asked.
func (d *device) probeProcesses() {
	p := &d.proc
	p.util = make(map[uint32]procUtil)
	p.index = make(map[uint32]int)
	if d.MIGEnabled {
		for c := range p.calls {
			p.calls[c].unsupported = true
		}
		d.log.Info("MIG-enabled GPU: no per-process data through NVML; left out")
		return
	}
	// A GPU without NVENC (an H100) has no encoder sessions to list; the
	// probe's line about encoder fields already says so.
	p.calls[callEncSessions].unsupported = d.engines[telemetry.EngineEncoder].unsupported
	var missing []string
	for c := range p.calls {
		if p.calls[c].unsupported {
			continue
		}
		if a := d.callProc(procCall(c), 0); isNotSupported(a.ret) {
			p.calls[c].unsupported = true
			missing = append(missing, procCallNames[c])
		}
	}
	if len(missing) > 0 {
		d.log.Info("per-process calls not supported by this GPU; left out", "calls", missing)
	}
}

// support is the set of sources the device answers.
func (p *processState) support() telemetry.ProcessDataSet {
	var s telemetry.ProcessDataSet
	for c := range p.calls {
		if !p.calls[c].unsupported {
			s = s.With(procCallData[c])
		}
	}
	return s
}

// sampleProcesses reads the per-process calls into st.Processes, copied
// once from the worker's scratch. It returns a call's answer that the
// device is gone (see gone), if one did.
// step is the wall clock's step since the last reading, in µs (see
// clockState), which the driver's timestamps follow.
func (d *device) sampleProcesses(now time.Time, step int64, st *telemetry.DeviceState) nvml.Return {
	p := &d.proc
	st.ProcessSupport = p.support()
	defer func() { st.ProcessErrors = p.errors }()
	if st.ProcessSupport == 0 {
		return nvml.SUCCESS
	}
	if step != 0 {
		p.lastSeen = shiftTs(p.lastSeen, step)
		for pid, u := range p.util {
			u.ts = shiftTs(u.ts, step)
			p.util[pid] = u
		}
	}
	p.list, p.answered = p.list[:0], 0
	clear(p.index)
	for c := range p.calls {
		cs := &p.calls[c]
		if cs.unsupported {
			continue
		}
		var a procAnswer
		if cs.off != nil {
			last := cs.off.Load()
			if last == nil {
				continue // no answer yet
			}
			a = *last
		} else {
			start := time.Now()
			a = d.callProc(procCall(c), p.lastSeen)
			d.timeProcCall(procCall(c), time.Since(start))
		}
		switch {
		case a.ret == nvml.SUCCESS || (c == int(callProcUtil) && nothingNewer(a)):
			if cs.failing {
				cs.failing = false
				d.log.Info("per-process call recovered", "call", procCallNames[c])
			}
		case isNotSupported(a.ret):
			cs.unsupported = true
			d.log.Info("per-process call no longer supported; left out", "call", procCallNames[c])
			continue
		case gone(a.ret):
			return a.ret
		default:
			p.errors++
			if !cs.failing {
				cs.failing = true
				d.log.Warn("per-process call failed", "call", procCallNames[c], "err", a.ret)
			}
			continue
		}
		p.answered = p.answered.With(procCallData[c])
		switch procCall(c) {
		case callProcUtil:
			notAfter := uint64(max(now.Add(clockStepThreshold).UnixMicro(), 0))
			p.absorbUtil(a.util, notAfter)
			hold := max(minUtilHold, 2*d.worker.s.cfg.Interval, 2*cs.period)
			p.listUtil(uint64(max(now.Add(-hold).UnixMicro(), 0)))
		case callComputeProcs, callGraphicsProcs:
			for _, info := range a.infos {
				e := p.entry(info.Pid)
				e.FBUsed = max(e.FBUsed, info.UsedGpuMemory)
			}
		case callEncSessions:
			for _, s := range a.enc {
				e := &p.entry(s.Pid).Encoder[codec(s.CodecType)]
				e.Sessions++
				e.FPS += float64(s.AverageFps) // a sum until finish
				e.LatencyMean += float64(s.AverageLatency) * microsecond
				e.LatencyMax = max(e.LatencyMax, float64(s.AverageLatency)*microsecond)
			}
		case callFBCSessions:
			for _, s := range a.fbc {
				e := &p.entry(s.Pid).FBC
				e.Sessions++
				e.FPS += float64(s.AverageFPS)
				e.LatencyMean += float64(s.AverageLatency) * microsecond
			}
		}
	}
	p.finish(st)
	return nvml.SUCCESS
}

// entry returns the reading's entry of pid, adding it. The pointer is
// valid until the next entry call.
func (p *processState) entry(pid uint32) *telemetry.ProcessSample {
	if i, ok := p.index[pid]; ok {
		return &p.list[i]
	}
	p.index[pid] = len(p.list)
	p.list = append(p.list, telemetry.ProcessSample{PID: pid})
	return &p.list[len(p.list)-1]
}

// absorbUtil keeps the samples newer than lastSeen, the newest per PID. A
// sample stamped after notAfter (µs) is from before a backward step of the
// wall clock, read then, and is dropped (as GetSamples' are).
func (p *processState) absorbUtil(samples []nvml.ProcessUtilizationSample, notAfter uint64) {
	newest := p.lastSeen
	for _, s := range samples {
		if s.TimeStamp <= p.lastSeen || s.TimeStamp > notAfter {
			continue // already read: drivers and the mock library repeat samples
		}
		if u, ok := p.util[s.Pid]; ok && u.ts >= s.TimeStamp {
			continue
		}
		p.util[s.Pid] = procUtil{ts: s.TimeStamp, sm: s.SmUtil, mem: s.MemUtil, enc: s.EncUtil, dec: s.DecUtil}
		newest = max(newest, s.TimeStamp)
	}
	p.lastSeen = newest
}

// listUtil enters every PID whose latest sample is not older than from
// (µs), and forgets the others.
func (p *processState) listUtil(from uint64) {
	for pid, u := range p.util {
		if u.ts < from {
			delete(p.util, pid)
			continue
		}
		e := p.entry(pid)
		e.SMUtil, e.MemUtil, e.EncUtil, e.DecUtil = float64(u.sm), float64(u.mem), float64(u.enc), float64(u.dec)
		e.UtilAt = time.UnixMicro(int64(u.ts)) // #nosec G115 -- NVML's microsecond timestamps, far below 2^63
	}
}

// finish turns the sums into means and copies the list into st by
// ascending PID (so consecutive snapshots and golden files agree): the one
// allocation of a reading with processes, saved when nothing changed
// since the last. It sorts positions, not the entries, which are large
// and would be moved many times.
func (p *processState) finish(st *telemetry.DeviceState) {
	if len(p.list) == 0 {
		p.published = nil
		return
	}
	for i := range p.list {
		e := &p.list[i]
		e.Has = p.answered
		for k := range e.Encoder {
			if n := float64(e.Encoder[k].Sessions); n > 0 {
				e.Encoder[k].FPS /= n
				e.Encoder[k].LatencyMean /= n
			}
		}
		if n := float64(e.FBC.Sessions); n > 0 {
			e.FBC.FPS /= n
			e.FBC.LatencyMean /= n
		}
	}
	p.order = p.order[:0]
	for i := range p.list {
		p.order = append(p.order, int32(i))
	}
	slices.SortFunc(p.order, func(a, b int32) int { return cmp.Compare(p.list[a].PID, p.list[b].PID) })
	if len(p.published) == len(p.order) {
		same := true
		for j, i := range p.order {
			if p.published[j] != p.list[i] {
				same = false
				break
			}
		}
		if same {
			st.Processes = p.published
			return
		}
	}
	out := make([]telemetry.ProcessSample, len(p.list))
	for j, i := range p.order {
		out[j] = p.list[i]
	}
	st.Processes, p.published = out, out
}

// codec maps NVML's encoder type to the telemetry codec.
func codec(t uint32) telemetry.Codec {
	switch nvml.EncoderType(t) { // #nosec G115 -- NVML's C enum
	case nvml.ENCODER_QUERY_H264:
		return telemetry.CodecH264
	case nvml.ENCODER_QUERY_HEVC:
		return telemetry.CodecHEVC
	case nvml.ENCODER_QUERY_AV1:
		return telemetry.CodecAV1
	}
	return telemetry.CodecOther
}

// timeProcCall counts a call that took more than a quarter of the
// interval, and moves it off the tick after slowCallStrikes in a row.
func (d *device) timeProcCall(c procCall, took time.Duration) {
	s := d.worker.s
	cs := &d.proc.calls[c]
	if took <= s.cfg.Interval/4 {
		cs.slow = 0
		return
	}
	if cs.slow++; cs.slow < slowCallStrikes {
		return
	}
	cs.period = max(MinPCIeFallbackPeriod, 5*s.cfg.Interval)
	cs.off = new(atomic.Pointer[procAnswer])
	d.log.Warn("per-process call slow; moved off the tick to its own cadence",
		"call", procCallNames[c], "took", took.Round(time.Microsecond), "limit", s.cfg.Interval/4, "period", cs.period)
	go d.procLoop(s, c, cs.off, cs.period)
}

// procLoop makes call c every period until the sampler closes or the
// device is lost, never on the tick; the worker reads its latest answer. It keeps its own lastSeen:
// the worker's de-duplication by timestamp makes an answer read twice
// harmless.
func (d *device) procLoop(s *Sampler, c procCall, out *atomic.Pointer[procAnswer], period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	var lastSeen uint64
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		var a procAnswer
		if !d.call(func() { a = d.callProc(c, lastSeen) }) {
			return // NVML is being shut down, or the device is lost
		}
		for _, u := range a.util {
			lastSeen = max(lastSeen, u.TimeStamp)
		}
		out.Store(&a)
		if isNotSupported(a.ret) || gone(a.ret) {
			return
		}
	}
}
