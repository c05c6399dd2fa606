// Package sim is a simulated NVML: a node of T4-like GPUs whose load
// follows deterministic, seedable curves. It implements the calls the
// agent's sampler makes (package calls) and nothing else, so the sampler
// runs over it unchanged, on a laptop or in CI, and the agent's binary
// carries no generated mocks.
package sim

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/nvml/calls"
)

// Options configures a simulated node.
type Options struct {
	Devices int   // number of GPUs
	Seed    int64 // same seed, same UUIDs and curves
	// Static holds every curve at its seeded mean, so a value read at any
	// moment is known in advance (for end-to-end assertions).
	Static bool
	// Now is the clock; nil means time.Now. Curves are functions of the
	// time since New.
	Now func() time.Time
	// CallLatency makes each NVML call take as long as it does on a real
	// GPU (see callCosts), so the tick costs what it would on a node.
	CallLatency bool
	// Hang, if set, makes one GPU's sampling calls stop returning, as
	// calls to a GPU that fell off the bus can: to see the agent report
	// it stalled.
	Hang *Hang
}

// Hang says which GPU hangs, and when.
type Hang struct {
	GPU   int           // index
	After time.Duration // since New
}

// Model and sizes of the simulated GPU: an NVIDIA T4.
const (
	ModelName       = "Tesla T4"
	memoryTotal     = 15360 << 20 // bytes
	memoryReserved  = 256 << 20
	samplePeriodUs  = 166667 // the driver samples utilization every 1/6 s
	driverBufferLen = 120    // samples the driver keeps per type
)

// Library is a simulated NVML.
type Library struct {
	devices []*Device
	now     func() time.Time
	epoch   time.Time
	latency bool
	hang    *Hang
}

var _ calls.Library = (*Library)(nil)

// New returns a simulated node.
func New(opts Options) *Library {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	l := &Library{now: now, epoch: now(), latency: opts.CallLatency, hang: opts.Hang}
	for i := 0; i < opts.Devices; i++ {
		l.devices = append(l.devices, newDevice(l, opts.Seed, i, opts.Static))
	}
	l.addProcesses(opts.Seed)
	return l
}

// Devices returns the simulated GPUs, in index order.
func (l *Library) Devices() []*Device { return l.devices }

// Init implements calls.Library.
func (l *Library) Init() nvml.Return { return nvml.SUCCESS }

// Shutdown implements calls.Library.
func (l *Library) Shutdown() nvml.Return { return nvml.SUCCESS }

// SystemGetDriverVersion implements calls.Library.
func (l *Library) SystemGetDriverVersion() (string, nvml.Return) {
	return "550.54.15-simulated", nvml.SUCCESS
}

// DeviceGetCount implements calls.Library.
func (l *Library) DeviceGetCount() (int, nvml.Return) { return len(l.devices), nvml.SUCCESS }

// DeviceGetHandleByIndex implements calls.Library.
func (l *Library) DeviceGetHandleByIndex(i int) (calls.Device, nvml.Return) {
	if i < 0 || i >= len(l.devices) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return l.devices[i], nvml.SUCCESS
}

// DeviceGetHandleByUUID implements calls.Library.
func (l *Library) DeviceGetHandleByUUID(uuid string) (calls.Device, nvml.Return) {
	for _, d := range l.devices {
		if d.uuid == uuid {
			return d, nvml.SUCCESS
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

// EventSetCreate implements calls.Library. The simulated GPUs never raise
// XID errors: Wait sleeps for its timeout and says so.
func (l *Library) EventSetCreate() (calls.EventSet, nvml.Return) { return eventSet{}, nvml.SUCCESS }

type eventSet struct{}

func (eventSet) Wait(ms uint32) (nvml.EventData, nvml.Return) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return nvml.EventData{}, nvml.ERROR_TIMEOUT
}

func (eventSet) Free() nvml.Return { return nvml.SUCCESS }

// Register accepts a simulated GPU's registration (a lost one answers
// GPU_IS_LOST).
func (eventSet) Register(d calls.Device, _ uint64) nvml.Return {
	if sd, ok := d.(interface{ ret() nvml.Return }); ok {
		return sd.ret()
	}
	return nvml.ERROR_INVALID_ARGUMENT
}

// elapsed is the curves' time axis in seconds.
func (l *Library) elapsed(t time.Time) float64 { return t.Sub(l.epoch).Seconds() }

// curve is a seeded load: a mean, a slow sine around it and fast noise.
type curve struct {
	mean, amp, period, phase float64
	noise                    float64
	seed                     uint64
}

func newCurve(seed uint64, lo, hi, ampMax, noise float64, static bool) curve {
	c := curve{
		mean:   lo + unit(seed, 1)*(hi-lo),
		amp:    unit(seed, 2) * ampMax,
		period: 30 + unit(seed, 3)*90,
		phase:  unit(seed, 4) * 2 * math.Pi,
		noise:  noise,
		seed:   seed,
	}
	if static {
		c.amp, c.noise = 0, 0
	}
	return c
}

// smooth is the curve without noise.
func (c curve) smooth(t float64) float64 {
	return c.mean + c.amp*math.Sin(2*math.Pi*t/c.period+c.phase)
}

// at is the curve's value at t seconds, clamped to a percentage. The noise
// is a hash of the sample slot, so a value is the same however often and
// whenever it is read.
func (c curve) at(t float64) float64 {
	slot := uint64(math.Floor(t * 1e6 / samplePeriodUs))
	v := c.smooth(t) + c.noise*(2*unit(c.seed, 100+slot)-1)
	return math.Round(math.Max(0, math.Min(100, v)))
}

// integral is ∫₀ᵗ smooth, for the energy counter.
func (c curve) integral(t float64) float64 {
	w := 2 * math.Pi / c.period
	return c.mean*t - c.amp/w*(math.Cos(w*t+c.phase)-math.Cos(c.phase))
}

// integralSq is ∫₀ᵗ smooth², for counters that grow faster the higher
// the load (the time throttled).
func (c curve) integralSq(t float64) float64 {
	w := 2 * math.Pi / c.period
	m, a, p := c.mean, c.amp, c.phase
	return m*m*t - 2*m*a/w*(math.Cos(w*t+p)-math.Cos(p)) +
		a*a*(t/2-(math.Sin(2*(w*t+p))-math.Sin(2*p))/(4*w))
}

// splitmix64: a tiny, stable hash, so UUIDs and curves depend on the seed
// alone, not on the Go version's math/rand.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// unit is a deterministic number in [0, 1).
func unit(seed, k uint64) float64 {
	return float64(mix(seed^mix(k))>>11) / (1 << 53)
}

func uuidFor(seed uint64) string {
	a, b := mix(seed^0xa5a5), mix(seed^0x5a5a)
	return fmt.Sprintf("GPU-%08x-%04x-%04x-%04x-%012x",
		uint32(a>>32), uint16(a>>16), uint16(a), uint16(b>>48), b&0xffffffffffff) // #nosec G115 -- bits of a hash, truncated on purpose
}

// Device is a simulated GPU.
type Device struct {
	lib   *Library
	index int
	uuid  string
	seed  uint64 // the GPU's own, from the node's seed and its index
	lost  atomic.Bool

	gpu, enc, dec curve
	mem           float64 // framebuffer used at zero load, bytes
	procs         []Process

	debtMu sync.Mutex
	debt   time.Duration // call latency owed, see cost
}

var _ calls.Device = (*Device)(nil)

func newDevice(l *Library, seed int64, index int, static bool) *Device {
	s := mix(uint64(seed)) ^ mix(uint64(index)+1) // #nosec G115 -- bits of a hash, truncated on purpose
	return &Device{
		lib:   l,
		index: index,
		uuid:  uuidFor(s),
		seed:  s,
		gpu:   newCurve(mix(s^1), 25, 75, 20, 6, static),
		enc:   newCurve(mix(s^2), 15, 60, 15, 4, static),
		dec:   newCurve(mix(s^3), 10, 45, 10, 4, static),
		mem:   float64(2<<30) + unit(s, 5)*float64(6<<30),
	}
}

// Lose makes the GPU answer ERROR_GPU_IS_LOST from now on, as a GPU that
// fell off the bus does.
func (d *Device) Lose() { d.lost.Store(true) }

// Restore brings a lost GPU back, as unbinding and binding it again does:
// it answers from now on, under the same UUID.
func (d *Device) Restore() { d.lost.Store(false) }

// UUID returns the GPU's UUID.
func (d *Device) UUID() string { return d.uuid }

// GPUUtil returns the utilization the simulation produces at t, in
// percent: what the agent reports for this GPU.
func (d *Device) GPUUtil(t time.Time) float64 { return d.gpu.at(d.lib.elapsed(t)) }

func (d *Device) t() float64 { return d.lib.elapsed(d.lib.now()) }

// ret is SUCCESS, or GPU_IS_LOST once the device is lost.
func (d *Device) ret() nvml.Return {
	if d.lost.Load() {
		return nvml.ERROR_GPU_IS_LOST
	}
	return nvml.SUCCESS
}
