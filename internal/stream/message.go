package stream

import (
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// message builds the NodeSnapshot of it for a subscriber whose previous
// message was last (nil for the first): the devices its filter passes,
// with the samples of every snapshot since last that the history still
// holds. scratch is reused across calls and returned.
func (s *Server) message(it *item, last *telemetry.Snapshot, f *filter, scratch []*telemetry.Snapshot) (*telemetryv1.NodeSnapshot, []*telemetry.Snapshot) {
	snap := it.view.Snapshot
	msg := &telemetryv1.NodeSnapshot{
		Node:       s.opts.Node,
		Sequence:   snap.Seq,
		SampleTime: timestamppb.New(snap.Time),
		Interval:   durationpb.New(s.opts.Interval),
		AgentStart: timestamppb.New(s.opts.Start),
		PodsStale:  it.view.PodsStale,
	}
	// Skipped snapshots: their samples come from the history. The first
	// message has only its own: "since the previous message" has no
	// start yet.
	var devices []*telemetryv1.Device
	if last != nil && snap.Seq > last.Seq+1 {
		msg.Skipped = snap.Seq - last.Seq - 1
		scratch, _ = s.store.Since(scratch, last.Seq, snap)
	} else {
		devices = it.ownDevices()
	}
	for i := range it.view.Devices {
		d := &it.view.Devices[i]
		if !f.match(d) {
			continue
		}
		var m *telemetryv1.Device
		if devices != nil {
			m = devices[i]
		} else {
			m = deviceMessage(d, scratch)
		}
		if f.Mask != nil {
			m = f.Mask.Project(m)
		}
		msg.Devices = append(msg.Devices, m)
	}
	return msg, scratch
}

// deviceMessage is d's message with the samples of snaps (oldest first,
// the last being d's own snapshot). Values keep the snapshot's units,
// which are the proto's: percent, bytes, seconds. A field the reading
// lacks stays absent.
func deviceMessage(d *attribution.Device, snaps []*telemetry.Snapshot) *telemetryv1.Device {
	g := d.GPU
	m := &telemetryv1.Device{
		Uuid:      d.UUID(),
		GpuIndex:  uint32(g.Index), // #nosec G115 -- NVML's index, 0 to the GPU count
		ModelName: g.Name,
		PciBusId:  g.PCIBusID,
		Lost:      d.Lost(),
		Stalled:   d.Stalled(),
	}
	if d.MIG != nil {
		m.ParentUuid = g.UUID
		m.MigProfile = d.MIG.Profile
		m.GpuInstanceId = uint32(d.MIG.GI) // #nosec G115 -- NVML's GPU instance ID, 0-14
	}
	if len(d.Pods) > 0 {
		m.Pods = make([]*telemetryv1.Pod, len(d.Pods))
		for i, p := range d.Pods {
			m.Pods[i] = &telemetryv1.Pod{Namespace: p.Namespace, Name: p.Name, Container: p.Container}
			if d.PerPod != nil && d.Current() {
				podShare(m.Pods[i], d, i)
			}
		}
	}
	if !d.Current() {
		return m // flagged, without values that are not current
	}
	r := d.Reading
	m.GpuUtil = value(r, telemetry.GPUUtil)
	m.MemCopyUtil = value(r, telemetry.MemCopyUtil)
	m.EncUtil = value(r, telemetry.EncUtil)
	m.DecUtil = value(r, telemetry.DecUtil)
	m.FbUsedBytes = integer[uint64](r, telemetry.FBUsed)
	m.FbFreeBytes = integer[uint64](r, telemetry.FBFree)
	m.FbTotalBytes = integer[uint64](r, telemetry.FBTotal)
	m.EncoderSessions = integer[uint32](r, telemetry.EncSessions)
	m.EncoderFps = value(r, telemetry.EncFPS)
	m.EncoderLatencySeconds = value(r, telemetry.EncLatency)
	if d.ProcessesAttributed {
		u := &d.UnattributedLoad
		m.UnattributedGpuUtil = value(u, telemetry.GPUUtil)
		m.UnattributedMemCopyUtil = value(u, telemetry.MemCopyUtil)
		m.UnattributedEncUtil = value(u, telemetry.EncUtil)
		m.UnattributedDecUtil = value(u, telemetry.DecUtil)
	}
	if d.MIG == nil {
		deviceWide(m, r)
		m.Samples = samples(d, snaps)
	}
	// DCGM's profiling fields: ratios and bytes per second already; a MIG
	// instance's are its own (DCGM's GPU instance entity's).
	m.GrEngineActiveRatio = value(r, telemetry.ProfGrEngineActive)
	m.SmActiveRatio = value(r, telemetry.ProfSMActive)
	m.SmOccupancyRatio = value(r, telemetry.ProfSMOccupancy)
	m.TensorActiveRatio = value(r, telemetry.ProfTensorActive)
	m.DramActiveRatio = value(r, telemetry.ProfDRAMActive)
	m.ProfPcieTxBytesPerSecond = value(r, telemetry.ProfPCIeTX)
	m.ProfPcieRxBytesPerSecond = value(r, telemetry.ProfPCIeRX)
	return m
}

// The snapshot's units converted to the proto's base units.
const (
	megahertzToHertz  = 1e6
	millijouleToJoule = 1e-3
	bytesPerKB        = 1024 // NVML's KB/s of PCIe throughput (dcgm-exporter's too)
)

// deviceWide fills the figures of the whole GPU: a MIG instance has
// none (they are its GPU's).
func deviceWide(m *telemetryv1.Device, r *telemetry.Reading) {
	scaled := func(f telemetry.Field, k float64) *float64 {
		if v, ok := r.Get(f); ok {
			v *= k
			return &v
		}
		return nil
	}
	flag := func(f telemetry.Field) *bool {
		if v, ok := r.Get(f); ok {
			return new(v != 0)
		}
		return nil
	}
	m.TemperatureCelsius = value(r, telemetry.Temperature)
	m.MemoryTemperatureCelsius = value(r, telemetry.MemoryTemp)
	m.PowerWatts = value(r, telemetry.Power)
	m.SmClockHertz = scaled(telemetry.SMClock, megahertzToHertz)
	m.MemClockHertz = scaled(telemetry.MemClock, megahertzToHertz)
	m.EnergyJoules = scaled(telemetry.Energy, millijouleToJoule)
	m.PcieReplays = integer[uint64](r, telemetry.PCIeReplay)
	m.RemappedRowsCorrectable = integer[uint64](r, telemetry.RemappedRowsCorr)
	m.RemappedRowsUncorrectable = integer[uint64](r, telemetry.RemappedRowsUnc)
	m.RowRemapFailure = flag(telemetry.RowRemapFailure)
	m.NvlinkBytesPerSecond = value(r, telemetry.NVLinkBandwidth)
	m.PcieTxBytesPerSecond = scaled(telemetry.PCIeTX, bytesPerKB)
	m.PcieRxBytesPerSecond = scaled(telemetry.PCIeRX, bytesPerKB)

	m.EccSbeVolatile = integer[uint64](r, telemetry.ECCSBEVolatile)
	m.EccDbeVolatile = integer[uint64](r, telemetry.ECCDBEVolatile)
	m.EccSbeAggregate = integer[uint64](r, telemetry.ECCSBEAggregate)
	m.EccDbeAggregate = integer[uint64](r, telemetry.ECCDBEAggregate)
	m.RetiredPagesSbe = integer[uint32](r, telemetry.RetiredPagesSBE)
	m.RetiredPagesDbe = integer[uint32](r, telemetry.RetiredPagesDBE)
	m.RetiredPagesPending = flag(telemetry.RetiredPagesPending)
	m.ClocksEventReasons = integer[uint64](r, telemetry.ClocksEventReasons)
	m.PowerViolationSeconds = value(r, telemetry.PowerViolation)
	m.ThermalViolationSeconds = value(r, telemetry.ThermalViolation)
	m.SyncBoostViolationSeconds = value(r, telemetry.SyncBoostViolation)
	m.BoardLimitViolationSeconds = value(r, telemetry.BoardLimitViolation)
	m.LowUtilViolationSeconds = value(r, telemetry.LowUtilViolation)
	m.ReliabilityViolationSeconds = value(r, telemetry.ReliabilityViolation)
	m.PowerManagementLimitWatts = value(r, telemetry.PowerMgmtLimit)
	m.EnforcedPowerLimitWatts = value(r, telemetry.EnforcedPowerLimit)
	m.Pstate = integer[uint32](r, telemetry.PState)
	m.FanSpeedPercent = value(r, telemetry.FanSpeed)

}

// podShare fills the pod's own values, as the exporter's pod series carry
// them (attribution.Device.PodValue): only the fields a pod has a share
// of, never the device's value in their place.
func podShare(m *telemetryv1.Pod, d *attribution.Device, i int) {
	s := &d.PerPod[i]
	share := func(f telemetry.Field) (float64, bool) {
		if v, ok := d.PodValue(i, f); ok && s.Has.Has(f) {
			return v, true
		}
		return 0, false
	}
	opt := func(f telemetry.Field) *float64 {
		if v, ok := share(f); ok {
			return &v
		}
		return nil
	}
	m.GpuUtil = opt(telemetry.GPUUtil)
	m.MemCopyUtil = opt(telemetry.MemCopyUtil)
	m.EncUtil = opt(telemetry.EncUtil)
	m.DecUtil = opt(telemetry.DecUtil)
	if v, ok := share(telemetry.FBUsed); ok {
		m.FbUsedBytes = new(uint64(v))
	}
	if v, ok := share(telemetry.EncSessions); ok {
		m.EncoderSessions = new(uint32(v))
		m.EncoderFps = opt(telemetry.EncFPS)
		m.EncoderLatencySeconds = opt(telemetry.EncLatency)
		var worst float64
		for _, e := range s.Encoder {
			worst = max(worst, e.LatencyMax)
		}
		m.EncoderLatencyMaxSeconds = &worst
	}
}

func value(r *telemetry.Reading, f telemetry.Field) *float64 {
	if v, ok := r.Get(f); ok {
		return &v
	}
	return nil
}

func integer[T uint32 | uint64](r *telemetry.Reading, f telemetry.Field) *T {
	if v, ok := r.Get(f); ok && v >= 0 {
		n := T(v)
		return &n
	}
	return nil
}

// engines maps the snapshot's engines to the proto's.
var engines = [telemetry.NumEngines]telemetryv1.Engine{
	telemetry.EngineGPU:     telemetryv1.Engine_ENGINE_GPU,
	telemetry.EngineMemory:  telemetryv1.Engine_ENGINE_MEMORY,
	telemetry.EngineEncoder: telemetryv1.Engine_ENGINE_ENCODER,
	telemetry.EngineDecoder: telemetryv1.Engine_ENGINE_DECODER,
}

// samples gathers the GPU's new samples of each snapshot, per engine,
// oldest first. A snapshot's States are in its Devices' order; the GPU is
// found there by UUID, so an inventory that changed between snapshots
// cannot lend one GPU's samples to another.
func samples(d *attribution.Device, snaps []*telemetry.Snapshot) []*telemetryv1.EngineSamples {
	var out []*telemetryv1.EngineSamples
	for e := range telemetry.NumEngines {
		var es *telemetryv1.EngineSamples
		for _, snap := range snaps {
			st := stateOf(snap, d.GPU)
			if st == nil || len(st.NewSamples[e]) == 0 {
				continue
			}
			if es == nil {
				es = &telemetryv1.EngineSamples{Engine: engines[e]}
			}
			for _, smp := range st.NewSamples[e] {
				es.Samples = append(es.Samples, &telemetryv1.Sample{TimeUnixMicro: smp.At.UnixMicro(), Value: smp.Value})
			}
		}
		if es != nil {
			out = append(out, es)
		}
	}
	return out
}

func stateOf(snap *telemetry.Snapshot, gpu *telemetry.Device) *telemetry.DeviceState {
	if i := gpu.Index; i < len(snap.Devices) && i < len(snap.States) && snap.Devices[i].UUID == gpu.UUID {
		return &snap.States[i]
	}
	for i := range snap.Devices {
		if snap.Devices[i].UUID == gpu.UUID && i < len(snap.States) {
			return &snap.States[i]
		}
	}
	return nil
}
