// Package telemetry is the agent's data model: the immutable snapshot the
// sampler publishes once per tick and every reader (the Prometheus exporter,
// stream subscribers) consumes. It knows nothing of NVML or Prometheus, so
// readers depend on the data, not on how it was gathered.
package telemetry

import (
	"context"
	"sync/atomic"
	"time"
)

// Field identifies one per-device measurement. Values are kept in the unit
// NVML reports, converted once here so that readers never guess:
// percentages for utilization, bytes for memory, watts, millijoules, MHz,
// KB/s for PCIe, bytes per second for NVLink and seconds for periods,
// latencies and throttled time; DCGM's profiling fields as ratios (0-1)
// and bytes per second.
type Field uint8

// The fields a device reading can carry.
const (
	GPUUtil           Field = iota // percent, 0-100
	MemCopyUtil                    // percent, 0-100
	EncUtil                        // percent, 0-100
	DecUtil                        // percent, 0-100
	EncSamplingPeriod              // seconds
	DecSamplingPeriod              // seconds
	FBUsed                         // bytes
	FBFree                         // bytes
	FBReserved                     // bytes
	FBTotal                        // bytes
	Temperature                    // degrees Celsius
	Power                          // watts
	Energy                         // millijoules since driver load
	SMClock                        // MHz
	MemClock                       // MHz
	PCIeTX                         // KB/s
	PCIeRX                         // KB/s
	EncSessions                    // count
	EncFPS                         // frames per second, average over sessions
	EncLatency                     // seconds, average over sessions

	// The slow fields: read off the tick every SlowPeriod (see
	// internal/nvml/slow.go), because they change over seconds or only on a
	// hardware event.
	MemoryTemp       // degrees Celsius (HBM)
	PCIeReplay       // count since driver load (a counter)
	RemappedRowsCorr // rows remapped for correctable errors (a counter)
	RemappedRowsUnc  // rows remapped for uncorrectable errors (a counter)
	RowRemapFailure  // 1 if a row remapping failed, else 0
	VGPULicense      // 1 if the vGPU software license is held, else 0
	NVLinkBandwidth  // bytes per second of NVLink data sent and received, over all links (a rate)

	// The health fields, slow too.
	ECCSBEVolatile       // corrected (single-bit) ECC errors since driver load (a counter)
	ECCDBEVolatile       // uncorrected (double-bit) ECC errors since driver load (a counter)
	ECCSBEAggregate      // corrected ECC errors over the GPU's life (a counter)
	ECCDBEAggregate      // uncorrected ECC errors over the GPU's life (a counter)
	RetiredPagesSBE      // pages retired for multiple single-bit errors
	RetiredPagesDBE      // pages retired for a double-bit error
	RetiredPagesPending  // 1 if a page retirement waits for the next driver load, else 0
	ClocksEventReasons   // bitmask of NVML's nvmlClocksEventReason* (clock throttle reasons)
	PowerViolation       // seconds held below application clocks by the power limit (a counter)
	ThermalViolation     // seconds held below application clocks by temperature (a counter)
	SyncBoostViolation   // seconds held below application clocks by sync boost (a counter)
	BoardLimitViolation  // seconds held below application clocks by the board limit (a counter)
	LowUtilViolation     // seconds held below application clocks by low utilization (a counter)
	ReliabilityViolation // seconds held below application clocks by the reliability limit (a counter)
	PowerMgmtLimit       // watts: the power management limit asked for
	EnforcedPowerLimit   // watts: the power limit the GPU enforces (the lowest of every limiter)
	PState               // performance state, 0 (fastest) to 15
	FanSpeed             // percent of the fan's maximum (may exceed 100)

	// The profiling fields: DCGM's, not NVML's (DCGM's profiling module
	// reads the GPU's performance counters). The sampler takes them from
	// an extra source on the tick (nvml.Config.Extra); absent while DCGM
	// is off or down.
	ProfGrEngineActive // ratio 0-1 of time the graphics or compute engine is active
	ProfSMActive       // ratio 0-1 of cycles an SM has at least one warp assigned
	ProfSMOccupancy    // ratio 0-1 of warps resident on an SM to the maximum
	ProfTensorActive   // ratio 0-1 of cycles a tensor pipe is active
	ProfDRAMActive     // ratio 0-1 of cycles the memory interface is sending or receiving
	ProfPCIeTX         // bytes per second sent over PCIe, headers included
	ProfPCIeRX         // bytes per second received over PCIe, headers included

	NumFields
)

// A FieldSet holds every field as one bit.
const _ = uint(64 - NumFields) // a compile error once there are more than 64 fields

var fieldNames = [NumFields]string{
	GPUUtil:           "gpu_util",
	MemCopyUtil:       "mem_copy_util",
	EncUtil:           "enc_util",
	DecUtil:           "dec_util",
	EncSamplingPeriod: "enc_sampling_period",
	DecSamplingPeriod: "dec_sampling_period",
	FBUsed:            "fb_used",
	FBFree:            "fb_free",
	FBReserved:        "fb_reserved",
	FBTotal:           "fb_total",
	Temperature:       "temperature",
	Power:             "power",
	Energy:            "energy",
	SMClock:           "sm_clock",
	MemClock:          "mem_clock",
	PCIeTX:            "pcie_tx",
	PCIeRX:            "pcie_rx",
	EncSessions:       "enc_sessions",
	EncFPS:            "enc_fps",
	EncLatency:        "enc_latency",
	MemoryTemp:        "memory_temperature",
	PCIeReplay:        "pcie_replay",
	RemappedRowsCorr:  "remapped_rows_correctable",
	RemappedRowsUnc:   "remapped_rows_uncorrectable",
	RowRemapFailure:   "row_remap_failure",
	VGPULicense:       "vgpu_license",
	NVLinkBandwidth:   "nvlink_bandwidth",

	ECCSBEVolatile:       "ecc_sbe_volatile",
	ECCDBEVolatile:       "ecc_dbe_volatile",
	ECCSBEAggregate:      "ecc_sbe_aggregate",
	ECCDBEAggregate:      "ecc_dbe_aggregate",
	RetiredPagesSBE:      "retired_pages_sbe",
	RetiredPagesDBE:      "retired_pages_dbe",
	RetiredPagesPending:  "retired_pages_pending",
	ClocksEventReasons:   "clocks_event_reasons",
	PowerViolation:       "power_violation",
	ThermalViolation:     "thermal_violation",
	SyncBoostViolation:   "sync_boost_violation",
	BoardLimitViolation:  "board_limit_violation",
	LowUtilViolation:     "low_util_violation",
	ReliabilityViolation: "reliability_violation",
	PowerMgmtLimit:       "power_mgmt_limit",
	EnforcedPowerLimit:   "enforced_power_limit",
	PState:               "pstate",
	FanSpeed:             "fan_speed",

	ProfGrEngineActive: "prof_gr_engine_active",
	ProfSMActive:       "prof_sm_active",
	ProfSMOccupancy:    "prof_sm_occupancy",
	ProfTensorActive:   "prof_tensor_active",
	ProfDRAMActive:     "prof_dram_active",
	ProfPCIeTX:         "prof_pcie_tx",
	ProfPCIeRX:         "prof_pcie_rx",
}

// SlowFields are the fields read off the tick, every few seconds.
const SlowFields = FieldSet(1<<MemoryTemp | 1<<PCIeReplay | 1<<RemappedRowsCorr |
	1<<RemappedRowsUnc | 1<<RowRemapFailure | 1<<VGPULicense | 1<<NVLinkBandwidth |
	HealthFields)

// HealthFields are the slow fields that tell a GPU's health: ECC errors,
// retired pages, why its clocks are held back and for how long, its power
// limits, performance state and fan.
const HealthFields = FieldSet(1<<ECCSBEVolatile | 1<<ECCDBEVolatile | 1<<ECCSBEAggregate |
	1<<ECCDBEAggregate | 1<<RetiredPagesSBE | 1<<RetiredPagesDBE | 1<<RetiredPagesPending |
	1<<ClocksEventReasons | 1<<PowerViolation | 1<<ThermalViolation | 1<<SyncBoostViolation |
	1<<BoardLimitViolation | 1<<LowUtilViolation | 1<<ReliabilityViolation |
	1<<PowerMgmtLimit | 1<<EnforcedPowerLimit | 1<<PState | 1<<FanSpeed)

// ProfilingFields are DCGM's profiling fields: never read from NVML.
const ProfilingFields = FieldSet(1<<ProfGrEngineActive | 1<<ProfSMActive | 1<<ProfSMOccupancy |
	1<<ProfTensorActive | 1<<ProfDRAMActive | 1<<ProfPCIeTX | 1<<ProfPCIeRX)

// String returns the field's stable snake_case name, used in labels and logs.
func (f Field) String() string {
	if f < NumFields {
		return fieldNames[f]
	}
	return "unknown"
}

// FieldSet is a bit set of fields, one bit per Field: at most 64 fields
// (the check beside NumFields).
type FieldSet uint64

// Has reports whether f is in the set.
func (s FieldSet) Has(f Field) bool { return s&(1<<f) != 0 }

// With returns the set with f added.
func (s FieldSet) With(f Field) FieldSet { return s | 1<<f }

// Without returns the set with f removed.
func (s FieldSet) Without(f Field) FieldSet { return s &^ (1 << f) }

// AllFields is the set of every field.
const AllFields = FieldSet(1<<NumFields - 1)

// Reading is one tick's values of one device. Values[f] is meaningful only
// when Has.Has(f): a field that is unsupported, or failed this tick, is
// absent rather than zero.
type Reading struct {
	Values [NumFields]float64
	Has    FieldSet
}

// Set stores v for f and marks it present.
func (r *Reading) Set(f Field, v float64) {
	r.Values[f] = v
	r.Has = r.Has.With(f)
}

// Get returns the value of f and whether it is present.
func (r *Reading) Get(f Field) (float64, bool) {
	return r.Values[f], r.Has.Has(f)
}

// Engine names a utilization counter that the driver samples on its own
// clock and buffers (NVML's GetSamples).
type Engine uint8

// The engines whose buffered samples are kept.
const (
	EngineGPU Engine = iota
	EngineMemory
	EngineEncoder
	EngineDecoder

	NumEngines
)

var engineNames = [NumEngines]string{"gpu", "memory", "encoder", "decoder"}

// engineFields are the fields that hold each engine's utilization.
var engineFields = [NumEngines]Field{GPUUtil, MemCopyUtil, EncUtil, DecUtil}

// Field is the reading's field of the engine's utilization.
func (e Engine) Field() Field { return engineFields[e] }

func (e Engine) String() string {
	if e < NumEngines {
		return engineNames[e]
	}
	return "unknown"
}

// UtilSample is one hardware utilization sample with the driver's own
// timestamp.
type UtilSample struct {
	At    time.Time
	Value float64 // percent, 0-100
}

// Window summarises the buffered utilization samples of one engine over the
// sampler's window, so a spike between two scrapes is not lost.
type Window struct {
	Count int     // samples in the window; 0 means no data
	Max   float64 // percent
	Mean  float64 // percent
}

// MIGDevice describes a MIG GPU instance of a GPU: one entry per GPU
// instance, because memory (the only thing NVML reports for MIG) belongs to
// the GPU instance, and dcgm-exporter's labels (GPU_I_PROFILE, GPU_I_ID)
// name only it. Two compute instances under one GPU instance are therefore
// one entry, which keeps their series unique.
type MIGDevice struct {
	UUID    string // "MIG-...": the compute instance with the lowest CI id
	GI, CI  int    // GPU instance and (lowest) compute instance ids
	Profile string // e.g. "1g.5gb"
	// ComputeInstances lists every compute instance of the GPU instance,
	// UUID included, so that a pod holding any of them can be resolved.
	ComputeInstances []MIGComputeInstance
}

// MIGComputeInstance is one compute instance (one MIG device handle, with
// its own UUID) of a GPU instance.
type MIGComputeInstance struct {
	UUID string
	CI   int
}

// Device is the static identity of a GPU, read at start, and again when
// the GPU is found again after it was lost or NVML was re-initialised.
type Device struct {
	Index       int
	UUID        string // "GPU-..."
	Name        string // model name, e.g. "Tesla T4"
	PCIBusID    string // "00000000:3B:00.0"
	Minor       int    // /dev/nvidiaN
	MemoryTotal uint64 // bytes
	MIGEnabled  bool
	MIG         []MIGDevice
}

// DeviceState is one device's part of a snapshot.
type DeviceState struct {
	Reading
	// MIG holds one reading per Device.MIG entry (framebuffer only: NVML
	// reports no utilization for MIG instances).
	MIG []Reading
	// Supported lists the fields this device answers at all. A field that
	// answered NOT_SUPPORTED once is left out and never asked again.
	Supported FieldSet
	// Windows summarises the driver's buffered samples per engine.
	Windows [NumEngines]Window
	// NewSamples holds the buffered samples read this tick, each with its
	// hardware timestamp; nil when the driver had none newer.
	NewSamples [NumEngines][]UtilSample
	// XID is the device's XID error history, shared between snapshots
	// until a new error arrives. Nil when none was seen.
	XID *XIDCounts
	// Errors counts failed reads per field since start (NOT_SUPPORTED
	// excluded).
	Errors [NumFields]uint64
	// Lost is set while NVML reports the GPU lost (ERROR_GPU_IS_LOST), or
	// the driver unavailable (see Snapshot.NVMLDown): the reading is then
	// empty, never stale; Supported, Errors and XID still hold. The
	// sampler looks for the GPU again with backoff and clears it once the
	// GPU answers again.
	Lost bool
	// Stalled is set while a read of this GPU has not returned for more
	// than StallIntervals intervals (a GPU falling off the bus can hang
	// calls rather than fail them). The reading is then empty, so nothing
	// stale is served; Supported, Errors and XID still hold.
	Stalled bool
	// MIGReadErrors counts failed reads of the GPU's MIG instances since
	// start (a stale handle after a reconfiguration, say).
	MIGReadErrors uint64
	// Processes lists the processes using the GPU, by ascending PID, one
	// entry per PID whichever calls reported it. Immutable like the rest
	// of the snapshot (it may be shared by consecutive snapshots); nil
	// when none runs, when the device answers no per-process call
	// (ProcessSupport is then 0, as on a MIG-enabled GPU), or while the
	// GPU is stalled.
	Processes []ProcessSample
	// ProcessSupport lists the per-process sources the device answers.
	ProcessSupport ProcessDataSet
	// ProcessErrors counts failed per-process calls since start
	// (NOT_SUPPORTED excluded).
	ProcessErrors uint64
}

// StallIntervals is how many sampling intervals a GPU's read may take
// before the GPU is reported stalled.
const StallIntervals = 2

// XIDCounts is an immutable record of the XID errors seen on one device.
type XIDCounts struct {
	Last   uint64            // the last XID seen
	Counts map[uint64]uint64 // XID -> occurrences since start
	// Recent are the latest XIDs, oldest first: those of the last
	// XIDRetention, at most MaxRecentXIDs of them, for counts over a
	// window (dcgm-exporter's DCGM_EXP_XID_ERRORS_COUNT).
	Recent []XIDEvent
}

// XIDEvent is one XID error and when the agent saw it.
type XIDEvent struct {
	XID uint64
	At  time.Time
}

// How long (at least; the sampler keeps them for the XID window when it
// is longer) and how many recent XIDs XIDCounts keeps: a count over a
// GPU raising more XIDs than that within its window is short.
const (
	XIDRetention  = time.Hour
	MaxRecentXIDs = 4096
)

// CountSince returns, by XID, how many of the recent XIDs were seen at
// or after since.
func (x *XIDCounts) CountSince(since time.Time) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for i := len(x.Recent) - 1; i >= 0 && !x.Recent[i].At.Before(since); i-- {
		out[x.Recent[i].XID]++
	}
	return out
}

// Snapshot is everything one tick measured. It is immutable once published.
type Snapshot struct {
	Seq      uint64        // 1 for the first tick
	Time     time.Time     // when the tick started
	Duration time.Duration // how long the tick took
	Devices  []Device      // static inventory, shared by all snapshots
	States   []DeviceState // States[i] belongs to Devices[i]
	// Window is the span the engine windows cover.
	Window time.Duration
	// Ticks and MissedTicks count since start: MissedTicks is every
	// interval since the first tick that produced no snapshot (a slow
	// tick, or a sampler starved of CPU).
	Ticks, MissedTicks uint64
	// Rate is the achieved sampling rate, in snapshots per second over the
	// latest ticks (at most the last 16); 0 until two ticks exist.
	Rate float64
	// NVMLDown is set while NVML answers that the driver is unavailable
	// (unloaded, or reloaded under the agent) and the sampler initialises
	// it again with backoff; every GPU is then Lost. NVMLReinits counts
	// the times it did so since start.
	NVMLDown    bool
	NVMLReinits uint64
}

// Store holds the latest snapshot and a bounded history of the recent
// ones. One writer publishes; any number of readers load the latest, wait
// for the next, or read the history; nobody waits for anybody: Publish
// takes no lock and allocates nothing, whatever the readers do.
//
// The zero Store keeps no history (only the latest); NewStore sizes one
// by the window, so that a reader that skipped ticks still finds their
// snapshots, and the sub-second samples in them, for that long.
type Store struct {
	p atomic.Pointer[Snapshot]
	// ring holds the recent snapshots at Seq % len(ring). A slot is
	// overwritten by a newer snapshot, which readers tell by its Seq.
	ring []atomic.Pointer[Snapshot]
	// next is closed by the Publish after it was made, waking its
	// waiters. Waiters make it, so a Publish nobody waits for costs one
	// atomic swap.
	next atomic.Pointer[chan struct{}]
}

// MaxHistory bounds NewStore's history, whatever the window: a window of
// an hour at 100 ms would otherwise hold 36,000 snapshots. A reader
// further behind loses the oldest samples, and says so.
const MaxHistory = 1024

// NewStore returns a store whose history spans window at one snapshot
// per interval (plus one, for a tick that comes early), at most
// MaxHistory snapshots.
func NewStore(interval, window time.Duration) *Store {
	n := 1
	if interval > 0 && window > 0 {
		n = int((window+interval-1)/interval) + 1
	}
	return &Store{ring: make([]atomic.Pointer[Snapshot], min(max(n, 1), MaxHistory))}
}

// Publish makes s the latest snapshot and wakes every waiter. s must not
// be modified afterwards, and its Seq must be greater than the previous
// one's.
func (st *Store) Publish(s *Snapshot) {
	if len(st.ring) > 0 {
		// Before the latest: a reader that sees s as the latest finds it
		// in the history too.
		st.ring[s.Seq%uint64(len(st.ring))].Store(s)
	}
	st.p.Store(s)
	if ch := st.next.Swap(nil); ch != nil {
		close(*ch)
	}
}

// Latest returns the latest snapshot, or nil before the first tick.
func (st *Store) Latest() *Snapshot { return st.p.Load() }

// Next returns a channel that the next Publish closes. To wait for a
// snapshot newer than one already seen, take the channel first, then
// check Latest, then wait: a Publish in between has closed the channel.
func (st *Store) Next() <-chan struct{} {
	for {
		if ch := st.next.Load(); ch != nil {
			return *ch
		}
		ch := make(chan struct{})
		if st.next.CompareAndSwap(nil, &ch) {
			return ch
		}
	}
}

// Wait returns the latest snapshot once its Seq is greater than seq:
// at once if it already is, else after the next Publish. It returns
// ctx's error if ctx ends first.
func (st *Store) Wait(ctx context.Context, seq uint64) (*Snapshot, error) {
	for {
		next := st.Next()
		if s := st.Latest(); s != nil && s.Seq > seq {
			return s, nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Since appends to dst the snapshots published after seq up to and
// including upTo's, oldest first, that the history still holds, and
// returns how many of them it no longer holds (overwritten by newer
// ones, or never kept by a store without history). upTo is usually the
// snapshot the reader is about to use, so that a Publish racing with the
// call cannot stretch the range.
func (st *Store) Since(dst []*Snapshot, seq uint64, upTo *Snapshot) (out []*Snapshot, lost uint64) {
	if upTo == nil || upTo.Seq <= seq {
		return dst, 0
	}
	n := uint64(len(st.ring))
	first := seq + 1
	if n == 0 {
		return append(dst, upTo), upTo.Seq - first
	}
	if upTo.Seq-first >= n {
		lost = upTo.Seq - first + 1 - n
		first = upTo.Seq - n + 1
	}
	for q := first; q < upTo.Seq; q++ {
		if s := st.ring[q%n].Load(); s != nil && s.Seq == q {
			dst = append(dst, s)
		} else {
			lost++ // overwritten since, or a Seq the writer skipped
		}
	}
	return append(dst, upTo), lost
}
