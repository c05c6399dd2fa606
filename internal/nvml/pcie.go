package nvml

import (
	"encoding/binary"
	"math"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// PCIe throughput has two sources with very different costs:
//
//   - FI_DEV_PCIE_COUNT_TX_BYTES / RX_BYTES (field ids 197/198) through
//     nvmlDeviceGetFieldValues: cumulative byte counters, read without
//     waiting, both in one call. The rate is the delta over the time
//     between two reads. nvml.h says the values "can be wrapped".
//   - nvmlDeviceGetPcieThroughput: "querying a byte counter over a 20ms
//     interval" (nvml.h), so every call blocks 20 ms: TX and RX on 8 GPUs
//     would be 320 ms per tick.
//
// The counters are used wherever the device answers them; only where it
// does not, GetPcieThroughput is called at a slow cadence on a goroutine of
// its own, and the tick reads its latest answer.
//
// The same GetFieldValues call also reads the energy counter
// (FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ, as GetTotalEnergyConsumption) where
// the device answers it there: one driver call for three fields, as DCGM
// batches its field reads.

// kilobyte is NVML's KB in GetPcieThroughput's KB/s (and dcgm-exporter's
// DCGM_FI_DEV_PCIE_*_THROUGHPUT): 1024 bytes.
const kilobyte = 1024

// MinPCIeFallbackPeriod is the shortest period of the GetPcieThroughput
// fallback; it is also at least 5 sampling intervals.
const MinPCIeFallbackPeriod = time.Second

type pcieState struct {
	counters bool               // the byte counters answer
	energy   bool               // the energy counter answers
	req      [3]nvml.FieldValue // reused: TX, RX, energy
	ret      nvml.Return        // of this reading's GetFieldValues call
	fresh    bool               // req and ret are this reading's
	prev     [2]uint64          // last counter values
	prevUs   int64              // their timestamp, µs
	havePrev bool
	fallback *atomic.Pointer[pcieReading] // latest GetPcieThroughput answer, when used
}

// pcieReading is one answer of the GetPcieThroughput fallback.
type pcieReading struct {
	tx, rx uint32 // KB/s
	ret    nvml.Return
}

var batchFieldIDs = [3]uint32{nvml.FI_DEV_PCIE_COUNT_TX_BYTES, nvml.FI_DEV_PCIE_COUNT_RX_BYTES, nvml.FI_DEV_TOTAL_ENERGY_CONSUMPTION}

// probePCIe picks the source of the PCIe fields and of energy, on the
// worker's goroutine during the probe.
func (d *device) probePCIe(s *Sampler) {
	p := &d.pcie
	if p.ret = d.getFieldValues(); p.ret == nvml.SUCCESS {
		p.energy = nvml.Return(p.req[2].NvmlReturn) == nvml.SUCCESS                                                       // #nosec G115 -- NVML's nvmlReturn_t, a C enum
		p.counters = nvml.Return(p.req[0].NvmlReturn) == nvml.SUCCESS && nvml.Return(p.req[1].NvmlReturn) == nvml.SUCCESS // #nosec G115 -- NVML's nvmlReturn_t, a C enum
	}
	if p.counters {
		return
	}
	ret := p.ret
	if ret == nvml.SUCCESS {
		ret = nvml.Return(p.req[0].NvmlReturn) // #nosec G115 -- NVML's nvmlReturn_t, a C enum
	}
	d.log.Debug("PCIe byte counters unavailable; falling back to GetPcieThroughput off the tick", "err", ret)
	// One blocking call (20 ms) at start tells whether the fallback
	// exists at all.
	tx, ret := d.handle.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
	if isNotSupported(ret) {
		d.supported &^= fields(telemetry.PCIeTX, telemetry.PCIeRX)
		return
	}
	d.pcie.fallback = new(atomic.Pointer[pcieReading])
	if ret == nvml.SUCCESS {
		rx, ret := d.handle.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
		d.pcie.fallback.Store(&pcieReading{tx: tx, rx: rx, ret: ret})
	}
	period := max(MinPCIeFallbackPeriod, 5*s.cfg.Interval)
	go d.pcieFallbackLoop(s, period)
}

// pcieFallbackLoop calls GetPcieThroughput every period until the sampler
// closes or the device is lost, never on the tick.
func (d *device) pcieFallbackLoop(s *Sampler, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		var r pcieReading
		if !d.call(func() {
			r.tx, r.ret = d.handle.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
			if r.ret == nvml.SUCCESS {
				r.rx, r.ret = d.handle.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
			}
		}) {
			return // NVML is being shut down, or the device is lost
		}
		d.pcie.fallback.Store(&r)
		if isNotSupported(r.ret) || gone(r.ret) {
			return
		}
	}
}

// readFieldValues makes this reading's one GetFieldValues call, when the
// device answers any of its fields, and fills the PCIe fields from
// whichever source the probe chose. Energy is taken from the same answer
// by readEnergy, which runs after it.
func readFieldValues(d *device, r *telemetry.Reading) nvml.Return {
	p := &d.pcie
	if p.counters || p.energy {
		if p.ret = d.getFieldValues(); p.ret != nvml.SUCCESS {
			return p.ret
		}
	}
	if p.counters {
		return d.pcieRates(r)
	}
	if d.pcie.fallback == nil {
		return nvml.ERROR_NOT_SUPPORTED
	}
	last := d.pcie.fallback.Load()
	if last == nil {
		return nvml.SUCCESS // no answer yet: absent, not an error
	}
	if last.ret == nvml.SUCCESS {
		r.Set(telemetry.PCIeTX, float64(last.tx))
		r.Set(telemetry.PCIeRX, float64(last.rx))
	}
	return last.ret
}

// getFieldValues asks for the batch's fields in one call.
func (d *device) getFieldValues() nvml.Return {
	p := &d.pcie
	for i := range p.req {
		p.req[i] = nvml.FieldValue{FieldId: batchFieldIDs[i]}
	}
	p.fresh = true
	return d.handle.GetFieldValues(p.req[:])
}

// energyFromBatch reads the energy counter from this reading's
// GetFieldValues answer, making the call if readFieldValues did not (its
// PCIe fields are unsupported).
func (d *device) energyFromBatch(r *telemetry.Reading) nvml.Return {
	p := &d.pcie
	if !p.fresh {
		p.ret = d.getFieldValues()
	}
	if p.ret != nvml.SUCCESS {
		return p.ret
	}
	v := p.req[2]
	if ret := nvml.Return(v.NvmlReturn); ret != nvml.SUCCESS { // #nosec G115 -- NVML's nvmlReturn_t, a C enum
		return ret
	}
	r.Set(telemetry.Energy, float64(counterValue(v)))
	return nvml.SUCCESS
}

// pcieRates sets the PCIe rates from the byte counters of this reading's
// GetFieldValues answer, since the previous answer. The first answer only
// primes them.
func (d *device) pcieRates(r *telemetry.Reading) nvml.Return {
	p := &d.pcie
	var cur [2]uint64
	for i, v := range p.req[:2] {
		if ret := nvml.Return(v.NvmlReturn); ret != nvml.SUCCESS { // #nosec G115 -- NVML's nvmlReturn_t, a C enum
			return ret
		}
		cur[i] = counterValue(v)
	}
	ts := p.req[0].Timestamp
	if p.havePrev && ts > p.prevUs {
		dt := float64(ts-p.prevUs) * microsecond
		for i, f := range [2]telemetry.Field{telemetry.PCIeTX, telemetry.PCIeRX} {
			delta := counterDelta(p.prev[i], cur[i], p.req[i].ValueType)
			// Whole KB/s, as GetPcieThroughput reports them, so both
			// sources read alike.
			r.Set(f, math.Round(float64(delta)/kilobyte/dt))
		}
	}
	if !p.havePrev || ts > p.prevUs {
		p.prev, p.prevUs, p.havePrev = cur, ts, true
	}
	return nvml.SUCCESS
}

func counterValue(v nvml.FieldValue) uint64 {
	if nvml.ValueType(v.ValueType) == nvml.VALUE_TYPE_UNSIGNED_INT { // #nosec G115 -- NVML's C enum
		return uint64(binary.LittleEndian.Uint32(v.Value[:]))
	}
	return binary.LittleEndian.Uint64(v.Value[:])
}

// counterDelta is cur - prev across one wrap of a 32- or 64-bit counter.
func counterDelta(prev, cur uint64, vt uint32) uint64 {
	if nvml.ValueType(vt) == nvml.VALUE_TYPE_UNSIGNED_INT { // #nosec G115 -- NVML's C enum
		return uint64(uint32(cur) - uint32(prev)) // #nosec G115 -- a 32-bit counter's wraparound, on purpose
	}
	return cur - prev
}
