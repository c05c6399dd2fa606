package nvml

import (
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// The slow fields (telemetry.SlowFields) change over seconds (memory
// temperature) or only on a hardware event (PCIe replays, remapped rows,
// the vGPU license), or are counters a scrape takes a rate of (NVLink):
// dcgm-exporter reads them every 30 s. They are read on a goroutine of
// each GPU's own, every SlowPeriod, never on the tick, so that however
// long their calls take, the fast fields keep their cadence; the tick
// copies the latest answer. A slow call that never returns leaves those
// fields absent once their answer is older than slowStaleAfter periods,
// and holds up nothing else.
//
// Where the values come from, as DCGM reads them:
//   - DCGM_FI_DEV_MEMORY_TEMP: field NVML_FI_DEV_MEMORY_TEMP (82), °C;
//   - DCGM_FI_DEV_PCIE_REPLAY_COUNTER: nvmlDeviceGetPcieReplayCounter;
//   - DCGM_FI_DEV_{CORRECTABLE,UNCORRECTABLE}_REMAPPED_ROWS and
//     DCGM_FI_DEV_ROW_REMAP_FAILURE: nvmlDeviceGetRemappedRows (rows, rows,
//     failureOccurred as 0/1);
//   - DCGM_FI_DEV_VGPU_LICENSE_STATUS: nvmlDeviceGetGridLicensableFeatures
//     (the vGPU guest driver's view): 1 if a licensable feature is
//     licensed; a GPU without vGPU licensing (bare metal) answers
//     NOT_SUPPORTED or isGridLicenseSupported 0, and the field is left out;
//   - DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
//     plus _RX (138/139, KiB, cumulative) summed over the GPU's links
//     (NVML_FI_DEV_NVLINK_LINK_COUNT, 91, probed once), in one
//     GetFieldValues call with the memory temperature. NVML deprecates the
//     older NVML_FI_DEV_NVLINK_BANDWIDTH_* counters for these.

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

var slowReaders = []slowReader{
	{"GetFieldValues(memory temperature, NVLink)", fields(telemetry.MemoryTemp, telemetry.NVLinkBandwidth), readSlowFieldValues},
	{"GetPcieReplayCounter", fields(telemetry.PCIeReplay), readPCIeReplay},
	{"GetRemappedRows", fields(telemetry.RemappedRowsCorr, telemetry.RemappedRowsUnc, telemetry.RowRemapFailure), readRemappedRows},
	{"GetGridLicensableFeatures", fields(telemetry.VGPULicense), readVGPULicense},
}

// slowReading is one pass over the slow readers, immutable once stored.
type slowReading struct {
	seq  uint64
	at   time.Time
	vals telemetry.Reading
	rets [4]nvml.Return // by slowReaders
	// unsup are fields a call that succeeded answered NOT_SUPPORTED for
	// (one entry of a GetFieldValues batch).
	unsup telemetry.FieldSet
}

// slowState is a device's slow path. p and the loop's scratch are the
// slow goroutine's; seen is the worker's.
type slowState struct {
	p      atomic.Pointer[slowReading]
	period time.Duration
	seen   uint64 // seq of the last answer the worker took errors from
	// The GetFieldValues batch: memory temperature, then TX and RX of each
	// link. Used by the probe, then by the slow goroutine only.
	req    []nvml.FieldValue
	links  int
	active telemetry.FieldSet // fields the loop still reads
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
	go d.slowLoop(s)
}

// getFieldValue reads one field value of scope 0 as an integer.
func (d *device) getFieldValue(id uint32, scope uint32) (uint64, nvml.Return) {
	v := []nvml.FieldValue{{FieldId: id, ScopeId: scope}}
	if ret := d.handle.GetFieldValues(v); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := nvml.Return(v[0].NvmlReturn); ret != nvml.SUCCESS {
		return 0, ret
	}
	return counterValue(v[0]), nvml.SUCCESS
}

// readSlow makes one pass of the slow calls the device still answers.
func (d *device) readSlow(seq uint64) *slowReading {
	r := &slowReading{seq: seq}
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

// slowLoop reads the slow fields every period until the sampler closes
// or the GPU is lost.
func (d *device) slowLoop(s *Sampler) {
	t := time.NewTicker(d.slow.period)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		var r *slowReading
		if !s.call(func() { r = d.readSlow(seq) }) {
			return // NVML is being shut down
		}
		d.slow.p.Store(r)
		for i, rd := range slowReaders {
			switch ret := r.rets[i]; {
			case ret == nvml.ERROR_GPU_IS_LOST:
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
	for f := telemetry.MemoryTemp; f < telemetry.NumFields; f++ {
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
		if e := nvml.Return(req[0].NvmlReturn); e == nvml.SUCCESS {
			r.vals.Set(telemetry.MemoryTemp, float64(counterValue(req[0])))
		} else {
			note(telemetry.MemoryTemp, e)
		}
	}
	if sl.active.Has(telemetry.NVLinkBandwidth) {
		var kib uint64
		e := nvml.SUCCESS
		for _, v := range req[1:] {
			if e = nvml.Return(v.NvmlReturn); e != nvml.SUCCESS {
				break
			}
			kib += counterValue(v)
		}
		if e == nvml.SUCCESS {
			r.vals.Set(telemetry.NVLinkBandwidth, float64(kib))
		} else {
			note(telemetry.NVLinkBandwidth, e)
		}
	}
	return ret
}

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
