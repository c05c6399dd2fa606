package nvml

import (
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// The slow fields (telemetry.SlowFields) change over seconds (memory
// temperature, throttled time, the performance state) or only on a
// hardware event (PCIe replays, remapped rows, ECC errors, retired pages,
// the vGPU license, the power limits), or come from counters whose rate
// takes time to move (NVLink): dcgm-exporter reads them every 30 s. They
// are read on a goroutine of each GPU's own, every SlowPeriod, never on
// the tick, so that however long their calls take, the fast fields keep
// their cadence; the tick copies the latest answer. A slow call that never
// returns leaves those fields absent once their answer is older than
// slowStaleAfter periods, and holds up nothing else. Each call is probed
// once at start and left out where the GPU answers NOT_SUPPORTED.
//
// Where the values come from, as DCGM reads them (its
// dcgmlib/src/DcgmCacheManager.cpp, BufferOrCacheLatestGpuValue, and the
// NVML field ids it maps fields to in dcgmlib/src/dcgm_fields.cpp):
//   - DCGM_FI_DEV_MEMORY_TEMP: field NVML_FI_DEV_MEMORY_TEMP (82), °C;
//   - DCGM_FI_DEV_PCIE_REPLAY_COUNTER: nvmlDeviceGetPcieReplayCounter;
//   - DCGM_FI_DEV_{CORRECTABLE,UNCORRECTABLE}_REMAPPED_ROWS and
//     DCGM_FI_DEV_ROW_REMAP_FAILURE: nvmlDeviceGetRemappedRows (rows, rows,
//     failureOccurred as 0/1);
//   - DCGM_FI_DEV_VGPU_LICENSE_STATUS: nvmlDeviceGetGridLicensableFeatures
//     (the vGPU guest driver's view): 1 if a licensable feature is
//     licensed; a GPU without vGPU licensing (bare metal) answers
//     NOT_SUPPORTED or isGridLicenseSupported 0, and the field is left out;
//   - DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL (449, an alias of
//     DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL): a rate, not a counter. DCGM's
//     ReadAndCacheNvLinkBandwidth reads NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
//     and _RX (138/139, KiB, cumulative) and publishes the difference from
//     its previous read over the time between the two values' timestamps,
//     divided by 1000 ("KiB/sec -> MiB/sec", approximately). Here: the same
//     counters summed over the GPU's links (NVML_FI_DEV_NVLINK_LINK_COUNT,
//     91, probed once), in one GetFieldValues call with the memory
//     temperature, as bytes per second (delta KiB * 1024 / delta seconds,
//     the values' driver timestamps as DCGM takes them). The first read
//     only primes the rate, and so does a read whose sum went backwards (a
//     driver reload resets the counters), where DCGM would publish a
//     negative rate. NVML deprecates the older NVML_FI_DEV_NVLINK_BANDWIDTH_*
//     counters for these;
//   - DCGM_FI_DEV_ECC_{SBE,DBE}_{VOL,AGG}_TOTAL: the totals of corrected
//     (single-bit) and uncorrected (double-bit) ECC errors, volatile (since
//     the driver loaded) and aggregate (the GPU's life, kept in its
//     InfoROM). DCGM reads them as NVML fields NVML_FI_DEV_ECC_*_TOTAL
//     through nvmlDeviceGetFieldValues, the same counters
//     nvmlDeviceGetTotalEccErrors returns, which is what is called here.
//     A GPU without ECC, or with ECC off, answers NOT_SUPPORTED;
//   - DCGM_FI_DEV_RETIRED_SBE and _DBE: pages retired (Kepler to Turing;
//     Ampere and later remap rows instead and answer NOT_SUPPORTED), the
//     count of nvmlDeviceGetRetiredPages by cause (multiple single-bit
//     errors, a double-bit error); DCGM_FI_DEV_RETIRED_PENDING:
//     nvmlDeviceGetRetiredPagesPendingStatus, 1 if a retirement waits for
//     the next driver load;
//   - DCGM_FI_DEV_CLOCKS_EVENT_REASONS (112, DCGM_FI_DEV_CLOCK_THROTTLE_REASONS
//     before DCGM 3.3): nvmlDeviceGetCurrentClocksEventReasons, the bitmask
//     as it is (nvmlClocksEventReason*: 0x1 idle, 0x4 software power cap,
//     0x8 hardware slowdown, 0x20 software thermal slowdown, ...);
//   - DCGM_FI_DEV_{POWER,THERMAL,SYNC_BOOST,BOARD_LIMIT,LOW_UTIL,RELIABILITY}_VIOLATION:
//     nvmlDeviceGetViolationStatus with NVML_PERF_POLICY_POWER, _THERMAL,
//     _SYNC_BOOST, _BOARD_LIMIT, _LOW_UTILIZATION, _RELIABILITY: the time
//     the GPU was held below its application clocks, cumulative. NVML's
//     violationTime is in nanoseconds, and DCGM serves it as it is, in
//     nanoseconds: dcgm_fields.cpp maps these fields to NVML fields
//     NVML_FI_DEV_PERF_POLICY_* (74-79) with no unit and no conversion,
//     its dcgm_fields.h says "Power Violation time in ns", and
//     dcgm-exporter's etc/default-counters.csv says "(in ns)" (its older
//     lists said "(in us)", wrongly). Kept here in seconds, the base unit;
//   - DCGM_FI_DEV_POWER_MGMT_LIMIT and DCGM_FI_DEV_ENFORCED_POWER_LIMIT:
//     nvmlDeviceGetPowerManagementLimit and nvmlDeviceGetEnforcedPowerLimit,
//     mW, in watts (DCGM divides as integers, dropping the fraction of a
//     watt; kept here);
//   - DCGM_FI_DEV_PSTATE: nvmlDeviceGetPerformanceState, 0-15;
//     NVML_PSTATE_UNKNOWN (32) leaves it absent that read;
//   - DCGM_FI_DEV_FAN_SPEED: nvmlDeviceGetFanSpeed, percent of the fan's
//     maximum (it may exceed 100); a passively cooled GPU (a T4) answers
//     NOT_SUPPORTED.

// MinSlowPeriod is the shortest period of the slow fields; it is also at
// least SlowIntervals sampling intervals.
const (
	MinSlowPeriod = time.Second
	SlowIntervals = 5
)

// slowStaleAfter is how many periods a slow answer is served for when no
// newer one comes (a slow call that hangs).
const slowStaleAfter = 3

// SlowPeriod is the cadence of the slow fields at a sampling interval.
func SlowPeriod(interval time.Duration) time.Duration {
	return max(MinSlowPeriod, SlowIntervals*interval)
}

// slowReader is one NVML call of the slow path and the fields it fills.
type slowReader struct {
	call   string
	fields telemetry.FieldSet
	read   func(d *device, r *slowReading) nvml.Return
}

// slowReaders is the whole slow work for a device, one NVML call each, so
// that a call a GPU does not answer leaves out its own fields only.
var slowReaders = []slowReader{
	{"GetFieldValues(memory temperature, NVLink)", fields(telemetry.MemoryTemp, telemetry.NVLinkBandwidth), readSlowFieldValues},
	{"GetPcieReplayCounter", fields(telemetry.PCIeReplay), readPCIeReplay},
	{"GetRemappedRows", fields(telemetry.RemappedRowsCorr, telemetry.RemappedRowsUnc, telemetry.RowRemapFailure), readRemappedRows},
	{"GetGridLicensableFeatures", fields(telemetry.VGPULicense), readVGPULicense},
	eccReader("corrected, volatile", telemetry.ECCSBEVolatile, nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC),
	eccReader("uncorrected, volatile", telemetry.ECCDBEVolatile, nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC),
	eccReader("corrected, aggregate", telemetry.ECCSBEAggregate, nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC),
	eccReader("uncorrected, aggregate", telemetry.ECCDBEAggregate, nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC),
	retiredReader("multiple single-bit", telemetry.RetiredPagesSBE, nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
	retiredReader("double-bit", telemetry.RetiredPagesDBE, nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
	{"GetRetiredPagesPendingStatus", fields(telemetry.RetiredPagesPending), readRetiredPending},
	{"GetCurrentClocksEventReasons", fields(telemetry.ClocksEventReasons), readClocksEventReasons},
	violationReader("power", telemetry.PowerViolation, nvml.PERF_POLICY_POWER),
	violationReader("thermal", telemetry.ThermalViolation, nvml.PERF_POLICY_THERMAL),
	violationReader("sync boost", telemetry.SyncBoostViolation, nvml.PERF_POLICY_SYNC_BOOST),
	violationReader("board limit", telemetry.BoardLimitViolation, nvml.PERF_POLICY_BOARD_LIMIT),
	violationReader("low utilization", telemetry.LowUtilViolation, nvml.PERF_POLICY_LOW_UTILIZATION),
	violationReader("reliability", telemetry.ReliabilityViolation, nvml.PERF_POLICY_RELIABILITY),
	{"GetPowerManagementLimit", fields(telemetry.PowerMgmtLimit), readPowerMgmtLimit},
	{"GetEnforcedPowerLimit", fields(telemetry.EnforcedPowerLimit), readEnforcedPowerLimit},
	{"GetPerformanceState", fields(telemetry.PState), readPState},
	{"GetFanSpeed", fields(telemetry.FanSpeed), readFanSpeed},
}

// slowReading is one pass over the slow readers, immutable once stored.
type slowReading struct {
	seq  uint64
	at   time.Time
	vals telemetry.Reading
	rets []nvml.Return // by slowReaders
	// unsup are fields a call that succeeded answered NOT_SUPPORTED for
	// (one entry of a GetFieldValues batch).
	unsup telemetry.FieldSet
}

// slowState is a device's slow path. p and the loop's scratch are the
// slow goroutine's; seen is the worker's.
type slowState struct {
	p      atomic.Pointer[slowReading]
	period time.Duration
	// kick is the worker's signal to make a pass (see kickSlow); next is
	// when the worker signals next (Config.Monotonic), the worker's.
	kick chan struct{}
	next time.Duration
	seen uint64 // seq of the last answer the worker took errors from
	// The GetFieldValues batch: memory temperature, then TX and RX of each
	// link. Used by the probe, then by the slow goroutine only.
	req    []nvml.FieldValue
	links  int
	active telemetry.FieldSet // fields the loop still reads
	nvlink rateCounter        // the NVLink data counters' previous sum
}

// rateCounter turns successive reads of a cumulative counter into a rate.
type rateCounter struct {
	prev   uint64 // the previous read's value
	prevUs int64  // its timestamp, µs
	primed bool
}

// next takes a read of the counter (its value and timestamp, µs) and
// returns the rate per second since the previous read. The first read
// only primes it, as does a value below the previous one (a driver
// reload resets the counters): no rate that read. A read no later than
// the previous one gives none either and is dropped.
func (c *rateCounter) next(v uint64, us int64) (float64, bool) {
	if !c.primed || v < c.prev {
		c.prev, c.prevUs, c.primed = v, us, true
		return 0, false
	}
	if us <= c.prevUs {
		return 0, false
	}
	rate := float64(v-c.prev) / (float64(us-c.prevUs) * microsecond)
	c.prev, c.prevUs = v, us
	return rate, true
}

// probeSlow reads the slow fields once, on the worker during the probe,
// leaves out those the GPU does not answer, and starts the slow goroutine
// when any is left.
func (d *device) probeSlow(s *Sampler) {
	sl := &d.slow
	sl.period = SlowPeriod(s.cfg.Interval)
	if v, ret := d.getFieldValue(nvml.FI_DEV_NVLINK_LINK_COUNT, 0); ret == nvml.SUCCESS {
		sl.links = int(min(v, nvml.NVLINK_MAX_LINKS))
	}
	sl.req = make([]nvml.FieldValue, 1+2*sl.links)
	sl.active = telemetry.SlowFields
	if sl.links == 0 {
		sl.active = sl.active.Without(telemetry.NVLinkBandwidth)
	}
	r := d.readSlow(0)
	for i, rd := range slowReaders {
		if ret := r.rets[i]; isNotSupported(ret) {
			sl.active &^= rd.fields
		}
	}
	sl.active &^= r.unsup
	d.supported = d.supported&^telemetry.SlowFields | sl.active
	if sl.active == 0 {
		return
	}
	sl.p.Store(r)
	sl.kick = make(chan struct{}, 1)
	go d.slowLoop(s)
}

// kickSlow asks the slow goroutine for a pass once a period has passed
// since the last, on the worker as it starts a reading: the slow calls
// then overlap the reading's, one burst of NVML calls per interval rather
// than a wake-up of their own. A pass still running is not asked again.
func (d *device) kickSlow(mono time.Duration) {
	sl := &d.slow
	if sl.kick == nil {
		return
	}
	if sl.next == 0 {
		sl.next = mono + sl.period // the probe's pass was the first
		return
	}
	if mono < sl.next {
		return
	}
	// Keep to the period's grid, not to when the kick happened to land.
	for sl.next <= mono {
		sl.next += sl.period
	}
	select {
	case sl.kick <- struct{}{}:
	default:
	}
}

// getFieldValue reads one field value of scope 0 as an integer.
func (d *device) getFieldValue(id uint32, scope uint32) (uint64, nvml.Return) {
	v := []nvml.FieldValue{{FieldId: id, ScopeId: scope}}
	if ret := d.handle.GetFieldValues(v); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := nvml.Return(v[0].NvmlReturn); ret != nvml.SUCCESS { // #nosec G115 -- NVML's nvmlReturn_t, a C enum
		return 0, ret
	}
	return counterValue(v[0]), nvml.SUCCESS
}

// readSlow makes one pass of the slow calls the device still answers.
func (d *device) readSlow(seq uint64) *slowReading {
	r := &slowReading{seq: seq, rets: make([]nvml.Return, len(slowReaders))}
	for i, rd := range slowReaders {
		if d.slow.active&rd.fields == 0 {
			r.rets[i] = nvml.ERROR_NOT_SUPPORTED
			continue
		}
		r.rets[i] = rd.read(d, r)
	}
	r.at = time.Now()
	return r
}

// slowLoop reads the slow fields when the worker asks (every period, see
// kickSlow) until the sampler closes or the GPU is lost.
func (d *device) slowLoop(s *Sampler) {
	for seq := uint64(1); ; seq++ {
		select {
		case <-s.quit:
			return
		case <-d.slow.kick:
		}
		var r *slowReading
		if !d.call(func() { r = d.readSlow(seq) }) {
			return // NVML is being shut down, or the device is lost
		}
		d.slow.p.Store(r)
		for i, rd := range slowReaders {
			switch ret := r.rets[i]; {
			case gone(ret):
				return
			case isNotSupported(ret):
				d.slow.active &^= rd.fields
			}
		}
		d.slow.active &^= r.unsup
		if d.slow.active == 0 {
			return
		}
	}
}

// applySlow copies the latest slow answer into the reading, on the
// worker: its errors are counted once per answer, and an answer older
// than slowStaleAfter periods is not served.
func (d *device) applySlow(r *telemetry.Reading) bool {
	sl := &d.slow
	last := sl.p.Load()
	if last == nil {
		return true
	}
	if last.seq != sl.seen {
		sl.seen = last.seq
		if u := d.supported & last.unsup; u != 0 {
			d.supported &^= u
			d.log.Info("field no longer supported; left out", "fields", fieldNames(u))
		}
		for i, rd := range slowReaders {
			if d.supported&rd.fields == 0 {
				continue
			}
			if !d.handleReturn(reader{call: rd.call, fields: rd.fields & d.supported}, last.rets[i]) {
				return false
			}
		}
	}
	if time.Since(last.at) > slowStaleAfter*sl.period {
		return true
	}
	for f := range telemetry.NumFields {
		if !telemetry.SlowFields.Has(f) {
			continue
		}
		if v, ok := last.vals.Get(f); ok && d.supported.Has(f) {
			r.Set(f, v)
		}
	}
	return true
}

func readSlowFieldValues(d *device, r *slowReading) nvml.Return {
	sl := &d.slow
	req := sl.req
	req[0] = nvml.FieldValue{FieldId: nvml.FI_DEV_MEMORY_TEMP}
	for l := 0; l < sl.links; l++ {
		req[1+2*l] = nvml.FieldValue{FieldId: nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ScopeId: uint32(l)}
		req[2+2*l] = nvml.FieldValue{FieldId: nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ScopeId: uint32(l)}
	}
	if ret := d.handle.GetFieldValues(req); ret != nvml.SUCCESS {
		return ret
	}
	// Each entry has its own answer: a GPU may report its links but not
	// its memory temperature (GDDR), or the reverse.
	ret := nvml.SUCCESS
	note := func(f telemetry.Field, e nvml.Return) {
		if isNotSupported(e) {
			r.unsup = r.unsup.With(f)
		} else if ret == nvml.SUCCESS {
			ret = e
		}
	}
	if sl.active.Has(telemetry.MemoryTemp) {
		if e := nvml.Return(req[0].NvmlReturn); e == nvml.SUCCESS { // #nosec G115 -- NVML's nvmlReturn_t, a C enum
			r.vals.Set(telemetry.MemoryTemp, float64(counterValue(req[0])))
		} else {
			note(telemetry.MemoryTemp, e)
		}
	}
	if sl.active.Has(telemetry.NVLinkBandwidth) {
		var kib uint64
		var us int64
		e := nvml.SUCCESS
		for _, v := range req[1:] {
			if e = nvml.Return(v.NvmlReturn); e != nvml.SUCCESS { // #nosec G115 -- NVML's nvmlReturn_t, a C enum
				break
			}
			kib += counterValue(v)
			us = max(us, v.Timestamp)
		}
		switch {
		case e != nvml.SUCCESS:
			note(telemetry.NVLinkBandwidth, e)
		case us == 0:
			// No driver timestamp: the time of the read, as DCGM does.
			us = time.Now().UnixMicro()
			fallthrough
		default:
			if perSec, ok := sl.nvlink.next(kib, us); ok {
				r.vals.Set(telemetry.NVLinkBandwidth, perSec*kibibyte)
			}
		}
	}
	return ret
}

// kibibyte is the unit of NVML's NVLink data counters.
const kibibyte = 1024

func readPCIeReplay(d *device, r *slowReading) nvml.Return {
	n, ret := d.handle.GetPcieReplayCounter()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.PCIeReplay, float64(n))
	}
	return ret
}

func readRemappedRows(d *device, r *slowReading) nvml.Return {
	corr, unc, _, failed, ret := d.handle.GetRemappedRows()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.RemappedRowsCorr, float64(corr))
		r.vals.Set(telemetry.RemappedRowsUnc, float64(unc))
		r.vals.Set(telemetry.RowRemapFailure, boolFloat(failed))
	}
	return ret
}

func readVGPULicense(d *device, r *slowReading) nvml.Return {
	f, ret := d.handle.GetGridLicensableFeatures()
	if ret != nvml.SUCCESS {
		return ret
	}
	if f.IsGridLicenseSupported == 0 {
		return nvml.ERROR_NOT_SUPPORTED // no vGPU licensing here (bare metal)
	}
	licensed := false
	for i := range min(int(f.LicensableFeaturesCount), len(f.GridLicensableFeatures)) {
		licensed = licensed || f.GridLicensableFeatures[i].FeatureState != 0
	}
	r.vals.Set(telemetry.VGPULicense, boolFloat(licensed))
	return nvml.SUCCESS
}

func eccReader(what string, f telemetry.Field, t nvml.MemoryErrorType, c nvml.EccCounterType) slowReader {
	return slowReader{"GetTotalEccErrors(" + what + ")", fields(f), func(d *device, r *slowReading) nvml.Return {
		n, ret := d.handle.GetTotalEccErrors(t, c)
		if ret == nvml.SUCCESS {
			r.vals.Set(f, float64(n))
		}
		return ret
	}}
}

// retiredReader counts the pages retired for a cause. go-nvml asks for
// the addresses (growing its buffer until they fit); a GPU retires at
// most a few dozen pages before it is replaced, so the list stays small.
func retiredReader(cause string, f telemetry.Field, c nvml.PageRetirementCause) slowReader {
	return slowReader{"GetRetiredPages(" + cause + ")", fields(f), func(d *device, r *slowReading) nvml.Return {
		pages, ret := d.handle.GetRetiredPages(c)
		if ret == nvml.SUCCESS {
			r.vals.Set(f, float64(len(pages)))
		}
		return ret
	}}
}

func readRetiredPending(d *device, r *slowReading) nvml.Return {
	pending, ret := d.handle.GetRetiredPagesPendingStatus()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.RetiredPagesPending, boolFloat(pending == nvml.FEATURE_ENABLED))
	}
	return ret
}

func readClocksEventReasons(d *device, r *slowReading) nvml.Return {
	mask, ret := d.handle.GetCurrentClocksEventReasons()
	if ret == nvml.SUCCESS {
		// Exact in a float64: NVML's reasons use the low 11 bits.
		r.vals.Set(telemetry.ClocksEventReasons, float64(mask))
	}
	return ret
}

// nanosecond is the unit of NVML's violation times.
const nanosecond = 1e-9

func violationReader(policy string, f telemetry.Field, p nvml.PerfPolicyType) slowReader {
	return slowReader{"GetViolationStatus(" + policy + ")", fields(f), func(d *device, r *slowReading) nvml.Return {
		v, ret := d.handle.GetViolationStatus(p)
		if ret == nvml.SUCCESS {
			r.vals.Set(f, float64(v.ViolationTime)*nanosecond)
		}
		return ret
	}}
}

func readPowerMgmtLimit(d *device, r *slowReading) nvml.Return {
	mw, ret := d.handle.GetPowerManagementLimit()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.PowerMgmtLimit, float64(mw)/1000)
	}
	return ret
}

func readEnforcedPowerLimit(d *device, r *slowReading) nvml.Return {
	mw, ret := d.handle.GetEnforcedPowerLimit()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.EnforcedPowerLimit, float64(mw)/1000)
	}
	return ret
}

// readPState leaves the state out of a read that answers
// NVML_PSTATE_UNKNOWN (or anything past P15): absent, not an error.
func readPState(d *device, r *slowReading) nvml.Return {
	p, ret := d.handle.GetPerformanceState()
	if ret == nvml.SUCCESS && p >= nvml.PSTATE_0 && p <= nvml.PSTATE_15 {
		r.vals.Set(telemetry.PState, float64(p))
	}
	return ret
}

func readFanSpeed(d *device, r *slowReading) nvml.Return {
	pct, ret := d.handle.GetFanSpeed()
	if ret == nvml.SUCCESS {
		r.vals.Set(telemetry.FanSpeed, float64(pct))
	}
	return ret
}

// fieldNames lists the names of the fields in s.
func fieldNames(s telemetry.FieldSet) []string {
	var out []string
	for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
		if s.Has(f) {
			out = append(out, f.String())
		}
	}
	return out
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
