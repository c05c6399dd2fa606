package sim

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/nvml/calls"
)

// Load overrides the utilization of a simulated GPU, in percent (0-100).
// A nil field leaves that engine to its seeded curve.
type Load struct {
	GPU, Memory, Encoder, Decoder *float64
}

// Control is a simulated node whose load can be stepped at run time, for
// end-to-end and latency tests: a step set with SetLoad is what the next
// NVML read returns, and the driver's buffered samples from that moment
// on carry it too. Until a step is set it answers as its Library does.
//
// It wraps the Library rather than changing it, so a node without
// control pays nothing; framebuffer, power and clocks keep following the
// seeded curves.
type Control struct {
	*Library
	devices []*controlledDevice
}

var _ calls.Library = (*Control)(nil)

// NewControl returns a controllable view of l; use it in l's place.
func NewControl(l *Library) *Control {
	c := &Control{Library: l}
	for _, d := range l.devices {
		c.devices = append(c.devices, &controlledDevice{Device: d})
	}
	return c
}

// DeviceGetHandleByIndex implements calls.Library.
func (c *Control) DeviceGetHandleByIndex(i int) (calls.Device, nvml.Return) {
	if i < 0 || i >= len(c.devices) {
		return c.Library.DeviceGetHandleByIndex(i)
	}
	return c.devices[i], nvml.SUCCESS
}

// DeviceGetHandleByUUID implements calls.Library.
func (c *Control) DeviceGetHandleByUUID(uuid string) (calls.Device, nvml.Return) {
	for _, d := range c.devices {
		if d.uuid == uuid {
			return d, nvml.SUCCESS
		}
	}
	return c.Library.DeviceGetHandleByUUID(uuid)
}

// SetLoad steps GPU gpu's load to l from now on, replacing any earlier
// step; a zero Load returns the GPU to its curves.
func (c *Control) SetLoad(gpu int, l Load) error {
	if gpu < 0 || gpu >= len(c.devices) {
		return fmt.Errorf("no simulated GPU %d (the node has %d)", gpu, len(c.devices))
	}
	for _, v := range []*float64{l.GPU, l.Memory, l.Encoder, l.Decoder} {
		if v != nil && (*v < 0 || *v > 100 || math.IsNaN(*v)) {
			return fmt.Errorf("load %v on GPU %d: must be a percentage, 0-100", *v, gpu)
		}
	}
	d := c.devices[gpu]
	if l == (Load{}) {
		d.step.Store(nil)
		return nil
	}
	d.step.Store(&step{load: l, sinceUs: uint64(c.Library.now().UnixMicro())})
	return nil
}

// step is a load override and when it began, on the simulated driver's
// clock (µs), so that samples taken before it keep their curve values.
type step struct {
	load    Load
	sinceUs uint64
}

type controlledDevice struct {
	*Device
	step atomic.Pointer[step]
}

func (d *controlledDevice) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	u, ret := d.Device.GetUtilizationRates()
	if s := d.step.Load(); s != nil {
		if s.load.GPU != nil {
			u.Gpu = uint32(math.Round(*s.load.GPU))
		}
		if s.load.Memory != nil {
			u.Memory = uint32(math.Round(*s.load.Memory))
		}
	}
	return u, ret
}

func (d *controlledDevice) GetEncoderUtilization() (uint32, uint32, nvml.Return) {
	u, period, ret := d.Device.GetEncoderUtilization()
	if s := d.step.Load(); s != nil && s.load.Encoder != nil {
		u = uint32(math.Round(*s.load.Encoder))
	}
	return u, period, ret
}

func (d *controlledDevice) GetDecoderUtilization() (uint32, uint32, nvml.Return) {
	u, period, ret := d.Device.GetDecoderUtilization()
	if s := d.step.Load(); s != nil && s.load.Decoder != nil {
		u = uint32(math.Round(*s.load.Decoder))
	}
	return u, period, ret
}

// GetEncoderStats follows an encoder step the way Device.GetEncoderStats
// follows the encoder curve (same formulas: 16 sessions at full load,
// frame rate dropping and latency growing with load), so a step in
// encoder load shows in sessions, fps and latency too.
func (d *controlledDevice) GetEncoderStats() (int, uint32, uint32, nvml.Return) {
	s := d.step.Load()
	if s == nil || s.load.Encoder == nil {
		return d.Device.GetEncoderStats()
	}
	if r := d.ret(); r != nvml.SUCCESS {
		return 0, 0, 0, r
	}
	sessions, fps, latencyUs := encoderStats(*s.load.Encoder)
	return sessions, fps, latencyUs, nvml.SUCCESS
}

// GetEncoderSessions follows an encoder step as GetEncoderStats does,
// split between the GPU's processes by the same shares as without one.
func (d *controlledDevice) GetEncoderSessions() ([]nvml.EncoderSessionInfo, nvml.Return) {
	s := d.step.Load()
	if s == nil || s.load.Encoder == nil {
		return d.Device.GetEncoderSessions()
	}
	return d.encoderSessions(*s.load.Encoder)
}

// GetProcessUtilization splits a step's load between the GPU's processes
// in proportion to their shares, from the step's first sample on, so the
// processes still add up to the GPU-wide figures.
func (d *controlledDevice) GetProcessUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	s := d.step.Load()
	if s == nil {
		return d.Device.GetProcessUtilization(lastSeen)
	}
	return d.processUtil(lastSeen, func(ts uint64, l *load) {
		if ts < s.sinceUs {
			return
		}
		for _, o := range []struct {
			v   *float64
			dst *float64
		}{{s.load.GPU, &l.sm}, {s.load.Memory, &l.mem}, {s.load.Encoder, &l.enc}, {s.load.Decoder, &l.dec}} {
			if o.v != nil {
				*o.dst = math.Round(*o.v)
			}
		}
	})
}

func (d *controlledDevice) GetSamples(t nvml.SamplingType, lastSeen uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
	vt, samples, ret := d.Device.GetSamples(t, lastSeen)
	s := d.step.Load()
	if s == nil || ret != nvml.SUCCESS {
		return vt, samples, ret
	}
	var v *float64
	switch t {
	case nvml.GPU_UTILIZATION_SAMPLES:
		v = s.load.GPU
	case nvml.MEMORY_UTILIZATION_SAMPLES:
		v = s.load.Memory
	case nvml.ENC_UTILIZATION_SAMPLES:
		v = s.load.Encoder
	case nvml.DEC_UTILIZATION_SAMPLES:
		v = s.load.Decoder
	}
	if v == nil {
		return vt, samples, ret
	}
	for i := range samples {
		if samples[i].TimeStamp >= s.sinceUs {
			binary.LittleEndian.PutUint32(samples[i].SampleValue[:], uint32(math.Round(*v)))
		}
	}
	return vt, samples, ret
}
