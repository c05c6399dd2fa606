package nvml

import (
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// device is one GPU's handles, as opened in one NVML session, and the
// per-device state of the sampler. It is touched only by its worker's
// goroutine, except what its off-tick goroutines (slow fields, the PCIe
// fallback, slow per-process calls) read through atomics. A GPU found
// again after it was lost, or after NVML was initialised again, gets a new
// device: the old one is retired, and its goroutines end at their next
// call.
type device struct {
	telemetry.Device
	handle Device
	migs   []migInstance // aligned with Device.MIG
	log    *slog.Logger
	worker *worker
	// session is the NVML session handle was opened in (Sampler.session);
	// set before the device's goroutines start, read-only after.
	session uint64
	// retired is set once the device is lost: its goroutines stop
	// calling NVML (see call).
	retired atomic.Bool

	supported FieldSupport
	engines   [telemetry.NumEngines]engineState
	memV1     bool               // GetMemoryInfo_v2 unsupported: use v1
	failing   telemetry.FieldSet // fields whose last read failed, for once-per-change logs
	errors    [telemetry.NumFields]uint64
	lost      bool
	lostRet   nvml.Return // what said it was lost
	pcie      pcieState
	slow      slowState

	migErrors   uint64
	migFailing  bool      // a MIG read failed last time, for once-per-change logs
	migStale    bool      // a MIG handle answered that it is gone: list again
	lastMIGScan time.Time // when MIG instances were last listed
	clock       clockState
	clockStep   int64 // the wall clock's step at this reading, µs (see clockState)
	proc        processState
}

// migInstance is the handle a GPU instance's memory is read through.
type migInstance struct {
	handle Device
	v1     bool
}

// FieldSupport is the set of fields a device answers.
type FieldSupport = telemetry.FieldSet

func openDevice(lib Library, index int, log *slog.Logger) (*device, error) {
	h, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return nil, nvmlError("DeviceGetHandleByIndex", ret)
	}
	return newDevice(h, index, log)
}

// newDevice reads the identity of the GPU behind h, NVML's GPU index.
func newDevice(h Device, index int, log *slog.Logger) (*device, error) {
	d := &device{handle: h, supported: nvmlFields}
	d.Index = index
	var ret nvml.Return
	if d.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return nil, nvmlError("GetUUID", ret)
	}
	if d.Name, ret = h.GetName(); ret != nvml.SUCCESS {
		return nil, nvmlError("GetName", ret)
	}
	d.log = log.With("gpu", index, "uuid", d.UUID)
	if pci, ret := h.GetPciInfo(); ret == nvml.SUCCESS {
		d.PCIBusID = busID(pci.BusId)
	}
	d.Minor = index
	if minor, ret := h.GetMinorNumber(); ret == nvml.SUCCESS {
		d.Minor = minor
	}
	if mem, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryTotal = mem.Total
	}
	if current, _, ret := h.GetMigMode(); ret == nvml.SUCCESS && current == nvml.DEVICE_MIG_ENABLE {
		d.MIGEnabled = true
		d.MIG, d.migs = openMIGDevices(h)
	}
	return d, nil
}

// openMIGDevices lists the MIG devices of a MIG-enabled GPU, one entry per
// GPU instance: compute instances of one GPU instance share its memory,
// which is all NVML reports for them. Slots with no device answer
// NOT_FOUND and are skipped.
func openMIGDevices(h Device) ([]telemetry.MIGDevice, []migInstance) {
	n, ret := h.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, nil
	}
	var infos []telemetry.MIGDevice
	var handles []migInstance
	for i := 0; i < n; i++ {
		m, ret := h.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, ret := m.GetUUID()
		if ret != nvml.SUCCESS {
			continue
		}
		gi, ci := -1, -1
		if v, ret := m.GetGpuInstanceId(); ret == nvml.SUCCESS {
			gi = v
		}
		if v, ret := m.GetComputeInstanceId(); ret == nvml.SUCCESS {
			ci = v
		}
		k := slices.IndexFunc(infos, func(x telemetry.MIGDevice) bool { return x.GI == gi && gi >= 0 })
		if k < 0 {
			infos = append(infos, telemetry.MIGDevice{UUID: uuid, GI: gi, CI: ci, Profile: migProfile(m)})
			handles = append(handles, migInstance{handle: m})
			k = len(infos) - 1
		} else if ci < infos[k].CI {
			// The lowest compute instance names the GPU instance.
			infos[k].UUID, infos[k].CI = uuid, ci
			handles[k].handle = m
		}
		infos[k].ComputeInstances = append(infos[k].ComputeInstances, telemetry.MIGComputeInstance{UUID: uuid, CI: ci})
	}
	for i := range infos {
		slices.SortFunc(infos[i].ComputeInstances, func(a, b telemetry.MIGComputeInstance) int { return a.CI - b.CI })
	}
	return infos, handles
}

// rescanMIG lists the MIG instances again (mig-manager creates and
// destroys them while the agent runs) and reports whether they changed.
func (d *device) rescanMIG() bool {
	d.lastMIGScan = time.Now()
	d.migStale = false
	var infos []telemetry.MIGDevice
	var handles []migInstance
	if current, _, ret := d.handle.GetMigMode(); ret == nvml.SUCCESS && current == nvml.DEVICE_MIG_ENABLE {
		infos, handles = openMIGDevices(d.handle)
	}
	if sameMIG(infos, d.MIG) {
		return false
	}
	d.log.Info("MIG instances changed", "before", len(d.MIG), "after", len(infos))
	d.MIG, d.migs = infos, handles
	return true
}

func sameMIG(a, b []telemetry.MIGDevice) bool {
	return slices.EqualFunc(a, b, func(a, b telemetry.MIGDevice) bool {
		return a.UUID == b.UUID && a.GI == b.GI && a.CI == b.CI && a.Profile == b.Profile &&
			slices.Equal(a.ComputeInstances, b.ComputeInstances)
	})
}

// sameDevice reports whether two identities of a GPU are the same.
func sameDevice(a, b telemetry.Device) bool {
	return a.Index == b.Index && a.UUID == b.UUID && a.Name == b.Name && a.PCIBusID == b.PCIBusID &&
		a.Minor == b.Minor && a.MemoryTotal == b.MemoryTotal && a.MIGEnabled == b.MIGEnabled && sameMIG(a.MIG, b.MIG)
}

// probe asks each field once and records those the device does not
// support, so a tick never asks again (an H100 has no NVENC; a
// MIG-enabled GPU reports no utilization).
func (s *Sampler) probe(d *device) {
	if c, ret := d.handle.GetEncoderCapacity(nvml.ENCODER_QUERY_H264); isNotSupported(ret) || (ret == nvml.SUCCESS && c == 0) {
		d.supported &^= encoderFields
		d.engines[telemetry.EngineEncoder].unsupported = true
	}
	d.probePCIe(s)
	d.probeSlow(s)
	d.probeProcesses()
	var scratch telemetry.Reading
	d.pcie.fresh = false
	for _, r := range readers {
		if d.supported&r.fields == 0 {
			continue
		}
		switch ret := r.read(d, &scratch); {
		case isNotSupported(ret):
			d.supported &^= r.fields
		case gone(ret):
			// Lost while probed (at start, or found again too soon):
			// what it supports is asked again when it is back.
			d.retire(ret)
			return
		}
	}
	// Reserved memory exists only in v2; say so rather than report 0.
	if d.memV1 {
		d.supported = d.supported.Without(telemetry.FBReserved)
	}
	var missing []string
	for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
		if nvmlFields.Has(f) && !d.supported.Has(f) {
			missing = append(missing, f.String())
		}
	}
	if len(missing) > 0 {
		d.log.Info("fields not supported by this GPU; left out", "fields", missing)
	}
}

// sample reads one device into st. A lost GPU is reported as such and
// not asked again (its worker looks for it again, see reacquire); the
// other GPUs are unaffected.
func (d *device) sample(now time.Time, mono, window time.Duration, st *telemetry.DeviceState) {
	defer func() {
		st.Supported = d.supported
		st.Errors = d.errors
		st.Lost = d.lost
		st.MIGReadErrors = d.migErrors
	}()
	if d.lost {
		return
	}
	d.pcie.fresh = false
	for _, r := range readers {
		if d.supported&r.fields == 0 {
			continue
		}
		ret := r.read(d, &st.Reading)
		if !d.handleReturn(r, ret) {
			return
		}
	}
	if !d.applySlow(&st.Reading) {
		return
	}
	if len(d.migs) > 0 {
		st.MIG = make([]telemetry.Reading, len(d.migs))
		for i := range d.migs {
			m := &d.migs[i]
			ret := readMemoryOf(m.handle, &m.v1, &st.MIG[i])
			if !d.handleMIGReturn(ret) {
				return
			}
		}
	}
	if ret := d.drainSamples(now, mono, window, st); gone(ret) {
		d.retire(ret)
		return
	}
	if ret := d.sampleProcesses(now, d.clockStep, st); gone(ret) {
		d.retire(ret)
	}
}

// handleMIGReturn counts a failed MIG read; a handle that answers it is
// gone (the instance was destroyed) makes the next read list them again.
func (d *device) handleMIGReturn(ret nvml.Return) bool {
	switch ret {
	case nvml.SUCCESS:
		if d.migFailing {
			d.migFailing = false
			d.log.Info("MIG reads recovered")
		}
		return true
	case nvml.ERROR_GPU_IS_LOST, nvml.ERROR_DRIVER_NOT_LOADED:
		d.retire(ret)
		return false
	case nvml.ERROR_INVALID_ARGUMENT, nvml.ERROR_NOT_FOUND, nvml.ERROR_UNINITIALIZED:
		// UNINITIALIZED from a MIG handle whose GPU answers is a
		// destroyed instance's; a driver gone fails the GPU's own reads
		// first.
		d.migStale = true
	}
	d.migErrors++
	if !d.migFailing {
		d.migFailing = true
		d.log.Warn("MIG read failed", "err", ret)
	}
	return true
}

// handleReturn records what a read's result means for the device and
// reports whether sampling should go on.
func (d *device) handleReturn(r reader, ret nvml.Return) bool {
	switch {
	case ret == nvml.SUCCESS:
		if d.failing&r.fields != 0 {
			d.failing &^= r.fields
			d.log.Info("read recovered", "call", r.call)
		}
	case isNotSupported(ret):
		// Probing found it supported, but the device says otherwise now
		// (a MIG mode change, say): believe it and stop asking.
		d.supported &^= r.fields
		d.log.Info("field no longer supported; left out", "call", r.call)
	case gone(ret):
		d.retire(ret)
		return false
	default:
		for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
			if r.fields.Has(f) {
				d.errors[f]++
			}
		}
		if d.failing&r.fields == 0 {
			d.failing |= r.fields
			d.log.Warn("read failed", "call", r.call, "err", ret)
		}
	}
	return true
}

// gone reports whether ret means the device can no longer be read through
// its handle: the GPU lost (fell off the bus, unbound), or NVML answering
// that the driver is gone (unloaded, reloaded, so NVML is no longer
// initialised).
func gone(ret nvml.Return) bool {
	return ret == nvml.ERROR_GPU_IS_LOST || driverGone(ret)
}

// driverGone reports whether ret is NVML saying that the driver, not one
// GPU, is gone: every GPU answers so, until NVML is initialised again.
func driverGone(ret nvml.Return) bool {
	return ret == nvml.ERROR_UNINITIALIZED || ret == nvml.ERROR_DRIVER_NOT_LOADED
}

// retire marks the device lost, ret the answer that said so: it is not
// read again, and its goroutines stop calling NVML. Its worker logs the
// loss and looks for the GPU again (see worker.lost).
func (d *device) retire(ret nvml.Return) {
	d.lost, d.lostRet = true, ret
	d.retired.Store(true)
	// The slow goroutine waits for the worker's kicks, which a retired
	// device gets no more: wake it, so it finds the device retired and
	// ends rather than wait for the sampler's close.
	if k := d.slow.kick; k != nil {
		select {
		case k <- struct{}{}:
		default: // a kick is pending: it wakes anyway
		}
	}
}

// lostState is what a lost device reports: that it is lost, what it
// supports and the counts since start, and no reading.
func (d *device) lostState() telemetry.DeviceState {
	return telemetry.DeviceState{
		Supported: d.supported, Errors: d.errors, Lost: true, MIGReadErrors: d.migErrors,
		ProcessSupport: d.proc.support(), ProcessErrors: d.proc.errors,
	}
}

// call makes f, an NVML call on the device's handles off its worker (the
// slow fields, the PCIe fallback, a slow per-process call), unless NVML is
// being shut down or initialised again, or the device is retired or of an
// NVML session since shut down: it reports whether it did. The goroutine
// that asked ends when it did not. Either the re-initialisation sees the
// call in flight (and waits for it), or the call sees the session changed.
func (d *device) call(f func()) bool {
	s := d.worker.s
	if !s.enter() {
		return false
	}
	defer s.exit()
	if d.retired.Load() || d.session != s.session.Load() {
		return false
	}
	f()
	return true
}
