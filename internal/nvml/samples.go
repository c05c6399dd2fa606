package nvml

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// samplingTypes maps engines to NVML's buffered sample types.
var samplingTypes = [telemetry.NumEngines]nvml.SamplingType{
	telemetry.EngineGPU:     nvml.GPU_UTILIZATION_SAMPLES,
	telemetry.EngineMemory:  nvml.MEMORY_UTILIZATION_SAMPLES,
	telemetry.EngineEncoder: nvml.ENC_UTILIZATION_SAMPLES,
	telemetry.EngineDecoder: nvml.DEC_UTILIZATION_SAMPLES,
}

// engineState follows one engine's buffered samples: lastSeen is the
// newest driver timestamp read, so each GetSamples returns only newer ones,
// and the ring keeps those within the window.
type engineState struct {
	unsupported bool
	failing     bool
	lastSeen    uint64 // µs, driver (CPU) clock
	ring        ring
}

// point is one sample in the ring.
type point struct {
	ts uint64 // µs since the Unix epoch
	v  float64
}

// ring is a fixed-size FIFO of samples. When full, the oldest sample is
// overwritten: the window then covers a little less than asked for, which
// only happens if the driver samples faster than the capacity assumed.
type ring struct {
	buf   []point
	start int
	n     int
}

func newRing(capacity int) ring { return ring{buf: make([]point, capacity)} }

func (r *ring) push(p point) {
	if len(r.buf) == 0 {
		return
	}
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = p
		r.n++
		return
	}
	r.buf[r.start] = p
	r.start = (r.start + 1) % len(r.buf)
}

// shift moves every sample's timestamp by delta µs, for a wall-clock step.
func (r *ring) shift(delta int64) {
	for i := 0; i < r.n; i++ {
		p := &r.buf[(r.start+i)%len(r.buf)]
		p.ts = shiftTs(p.ts, delta)
	}
}

func shiftTs(ts uint64, delta int64) uint64 {
	if delta < 0 && uint64(-delta) > ts {
		return 0
	}
	return uint64(int64(ts) + delta) // #nosec G115 -- NVML's microsecond timestamps, far below 2^63
}

// evictBefore drops samples older than ts.
func (r *ring) evictBefore(ts uint64) {
	for r.n > 0 && r.buf[r.start].ts < ts {
		r.start = (r.start + 1) % len(r.buf)
		r.n--
	}
}

func (r *ring) stats() telemetry.Window {
	if r.n == 0 {
		return telemetry.Window{}
	}
	w := telemetry.Window{Count: r.n, Max: math.Inf(-1)}
	var sum float64
	for i := 0; i < r.n; i++ {
		v := r.buf[(r.start+i)%len(r.buf)].v
		sum += v
		w.Max = max(w.Max, v)
	}
	w.Mean = sum / float64(r.n)
	return w
}

// ringCapacity sizes a ring for a window: NVML samples utilization every
// 1/6 s to 1 s; room for 10 samples a second leaves headroom.
func ringCapacity(window time.Duration) int {
	return int(window.Seconds()*10) + 16
}

// sampleValue decodes NVML's union of sample value types.
func sampleValue(t nvml.ValueType, raw [8]byte) float64 {
	switch t {
	case nvml.VALUE_TYPE_DOUBLE:
		return math.Float64frombits(binary.LittleEndian.Uint64(raw[:]))
	case nvml.VALUE_TYPE_UNSIGNED_INT:
		return float64(binary.LittleEndian.Uint32(raw[:]))
	case nvml.VALUE_TYPE_UNSIGNED_LONG, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG:
		return float64(binary.LittleEndian.Uint64(raw[:]))
	case nvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return float64(int64(binary.LittleEndian.Uint64(raw[:]))) // #nosec G115 -- the value's bits, read as the type NVML gave
	case nvml.VALUE_TYPE_SIGNED_INT:
		return float64(int32(binary.LittleEndian.Uint32(raw[:]))) // #nosec G115 -- the value's bits, read as the type NVML gave
	case nvml.VALUE_TYPE_UNSIGNED_SHORT:
		return float64(binary.LittleEndian.Uint16(raw[:]))
	}
	return math.NaN()
}

// drainSamples reads every sample the driver buffered since the last call,
// for each engine, into the rings and into st.NewSamples. It returns the
// first answer that the device is gone (see gone), so the caller can stop
// sampling it.
func (d *device) drainSamples(now time.Time, mono, window time.Duration, st *telemetry.DeviceState) nvml.Return {
	step := d.clock.step(now, mono)
	d.clockStep = step
	if step != 0 {
		// The driver stamps samples with the same wall clock: follow it,
		// so the windows neither empty at once (a forward step would age
		// every sample out) nor stop taking samples (after a backward
		// step, new samples would all look older than lastSeen).
		d.log.Warn("wall clock stepped; shifting buffered-sample timestamps", "step", time.Duration(step)*time.Microsecond)
		for e := range d.engines {
			es := &d.engines[e]
			es.ring.shift(step)
			es.lastSeen = shiftTs(es.lastSeen, step)
		}
	}
	horizon := uint64(max(now.Add(-window).UnixMicro(), 0))
	for e := range d.engines {
		es := &d.engines[e]
		if es.unsupported {
			continue
		}
		vt, samples, ret := d.handle.GetSamples(samplingTypes[e], es.lastSeen)
		switch {
		case ret == nvml.SUCCESS:
			d.recoverEngine(telemetry.Engine(e))
			st.NewSamples[e] = es.absorb(vt, samples, uint64(max(now.Add(clockStepThreshold).UnixMicro(), 0)))
		case ret == nvml.ERROR_NOT_FOUND:
			// No sample newer than lastSeen: an idle driver buffer, not an error.
			d.recoverEngine(telemetry.Engine(e))
		case isNotSupported(ret):
			es.unsupported = true
			d.log.Debug("buffered samples not supported; not asking again", "engine", telemetry.Engine(e).String())
			continue
		case gone(ret):
			return ret
		default:
			if !es.failing {
				es.failing = true
				d.log.Warn("reading buffered samples failed", "engine", telemetry.Engine(e).String(), "err", ret)
			}
		}
		es.ring.evictBefore(horizon)
		st.Windows[e] = es.ring.stats()
	}
	return nvml.SUCCESS
}

func (d *device) recoverEngine(e telemetry.Engine) {
	es := &d.engines[e]
	if es.failing {
		es.failing = false
		d.log.Info("reading buffered samples recovered", "engine", e.String())
	}
}

// absorb keeps the samples newer than lastSeen and returns them with their
// own timestamps, oldest first. The driver returns them oldest first, but
// nothing here depends on that: they are sorted (go-nvml hands over a slice
// of its own per call), and a repeated timestamp is kept once, because the
// ring and its eviction need them in order. A sample stamped after
// notAfter (µs) is from before a backward step of the wall clock, still in
// the driver's buffer with its old stamp: it was read then, and is dropped.
func (es *engineState) absorb(vt nvml.ValueType, samples []nvml.Sample, notAfter uint64) []telemetry.UtilSample {
	var out []telemetry.UtilSample
	slices.SortStableFunc(samples, func(a, b nvml.Sample) int { return cmp.Compare(a.TimeStamp, b.TimeStamp) })
	newest := es.lastSeen
	for _, s := range samples {
		if s.TimeStamp <= newest || s.TimeStamp > notAfter {
			continue
		}
		v := sampleValue(vt, s.SampleValue)
		if math.IsNaN(v) {
			continue
		}
		es.ring.push(point{ts: s.TimeStamp, v: v})
		if out == nil {
			out = make([]telemetry.UtilSample, 0, len(samples))
		}
		out = append(out, telemetry.UtilSample{At: time.UnixMicro(int64(s.TimeStamp)), Value: v}) // #nosec G115 -- NVML's microsecond timestamps, far below 2^63
		newest = max(newest, s.TimeStamp)
	}
	es.lastSeen = newest
	return out
}

// clockState notices steps of the wall clock between two reads of a
// device, by comparing how far the wall clock and the monotonic clock
// moved.
type clockState struct {
	wall time.Time
	mono time.Duration
	seen bool
}

// clockStepThreshold is the disagreement between the two clocks taken for
// a step rather than NTP's slewing.
const clockStepThreshold = time.Second

// step returns by how many µs the wall clock stepped since the last call
// (negative: backwards), or 0.
func (c *clockState) step(wall time.Time, mono time.Duration) int64 {
	prevWall, prevMono, seen := c.wall, c.mono, c.seen
	c.wall, c.mono, c.seen = wall, mono, true
	if !seen {
		return 0
	}
	d := wall.Round(0).Sub(prevWall.Round(0)) - (mono - prevMono)
	if d > -clockStepThreshold && d < clockStepThreshold {
		return 0
	}
	return d.Microseconds()
}
