package nvml

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-telemetry/agent/internal/telemetry"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
)

// BenchmarkTick8GPUs is one sampling tick over a simulated 8-GPU node,
// every field supported, that is: reading every field, draining the
// buffered samples, building the snapshot and publishing it. The two
// allocations per tick are the snapshot and its per-device states:
// readers may hold an old snapshot for as long as a scrape lasts, so
// neither can be reused without reference counting, which would cost more
// than it saves. (The simulated driver advances with the wall clock, so
// most ticks find no new buffered sample, as at 10 Hz on real hardware.)
func BenchmarkTick8GPUs(b *testing.B) {
	benchTicks(b, sim.New(sim.Options{Devices: 8, Seed: 1}))
}

// BenchmarkTick8MockGPUs is the same tick over go-nvml's moq mocks. Its
// extra allocations are the mocks', which record every call they get.
func BenchmarkTick8MockGPUs(b *testing.B) {
	devs := make([]*mock.Device, 8)
	for i := range devs {
		devs[i] = newFullGPU(i)
	}
	lib, _ := newLib(devs...)
	benchTicks(b, lib)
}

// benchTicks times Tick over lib at 10 Hz settings.
func benchTicks(b *testing.B, lib any) {
	s, err := Open(b.Context(), asLibrary(lib), Config{Interval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		s.Tick()
	}
}

// BenchmarkDrainSamples8GPUs drains the driver's buffered samples of four
// engines on 8 GPUs when each holds 1.5 new samples (a 250 ms tick over a
// 1/6 s driver period). Allocations: the driver's sample slice (go-nvml
// allocates it per call) and the slice of new samples the snapshot keeps.
func BenchmarkDrainSamples8GPUs(b *testing.B) {
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	s, err := Open(b.Context(), sim.New(sim.Options{Devices: 8, Seed: 1, Now: now}), Config{Interval: 250 * time.Millisecond, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var st [8]telemetry.DeviceState
	b.ReportAllocs()
	for b.Loop() {
		clock = clock.Add(250 * time.Millisecond)
		for i, w := range s.workers {
			st[i] = telemetry.DeviceState{}
			w.d.drainSamples(clock, clock.Sub(time.Unix(1_800_000_000, 0)), s.cfg.Window, &st[i])
		}
	}
}

// BenchmarkTick8GPUsCallLatency is the tick over a simulated 8-GPU node
// whose calls take as long as on real hardware (sim's callCosts): what a
// tick costs in wall time on a node. The GPUs are read in parallel, one
// worker each, so it is about one GPU's calls, not eight.
func BenchmarkTick8GPUsCallLatency(b *testing.B) {
	benchTicks(b, sim.New(sim.Options{Devices: 8, Seed: 1, CallLatency: true}))
}

// procBenchDevice is a GPU with n processes, each with two H264 encoder
// sessions, a framebuffer and a fresh utilization sample per call. Its
// per-process methods shadow the mock's, which record every call, and
// allocate their answers as go-nvml does (a new slice per call), so the
// benchmark counts what the real library would cost.
type procBenchDevice struct {
	*mock.Device
	clock *time.Time
	pids  []uint32
}

func (d *procBenchDevice) GetProcessUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	ts := uint64(d.clock.UnixMicro())
	if ts <= lastSeen {
		return nil, nvml.ERROR_NOT_FOUND
	}
	out := make([]nvml.ProcessUtilizationSample, len(d.pids))
	for i, pid := range d.pids {
		out[i] = nvml.ProcessUtilizationSample{Pid: pid, TimeStamp: ts, SmUtil: uint32(i % 100), EncUtil: uint32(i % 7)}
	}
	return out, nvml.SUCCESS
}

func (d *procBenchDevice) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	out := make([]nvml.ProcessInfo, len(d.pids))
	for i, pid := range d.pids {
		out[i] = nvml.ProcessInfo{Pid: pid, UsedGpuMemory: uint64(i+1) << 24}
	}
	return out, nvml.SUCCESS
}

func (d *procBenchDevice) GetGraphicsRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return []nvml.ProcessInfo{}, nvml.SUCCESS
}

func (d *procBenchDevice) GetEncoderSessions() ([]nvml.EncoderSessionInfo, nvml.Return) {
	out := make([]nvml.EncoderSessionInfo, 0, 2*len(d.pids))
	for _, pid := range d.pids {
		for k := range 2 {
			out = append(out, nvml.EncoderSessionInfo{Pid: pid, AverageFps: 30, AverageLatency: uint32(2000 + 500*k)})
		}
	}
	return out, nvml.SUCCESS
}

func (d *procBenchDevice) GetFBCSessions() ([]nvml.FBCSessionInfo, nvml.Return) {
	return []nvml.FBCSessionInfo{}, nvml.SUCCESS
}

// BenchmarkProcessSampling8GPUs is the per-process part of one tick on 8
// GPUs: the five calls and their merge on every GPU, one after the other
// (a tick runs them in parallel, one worker per GPU), with 100 processes
// on the node (13 or 12 per GPU), and with 100 on each GPU. Allocations
// per GPU: the four slices the library hands over, and the one copy of
// the process list the snapshot keeps.
func BenchmarkProcessSampling8GPUs(b *testing.B) {
	for _, perGPU := range []int{0, 100} {
		name := "100procs"
		if perGPU > 0 {
			name = "100procsPerGPU"
		}
		b.Run(name, func(b *testing.B) {
			clock := time.Unix(1_800_000_000, 0)
			now := func() time.Time { return clock }
			devs := make([]*mock.Device, 8)
			bench := make([]*procBenchDevice, 8)
			for i := range devs {
				devs[i] = newFullGPU(i)
				bench[i] = &procBenchDevice{Device: devs[i], clock: &clock}
				n := perGPU
				if n == 0 {
					n = 100/8 + min(1, max(0, 100%8-i)) // 13 on the first four, 12 on the rest
				}
				for k := range n {
					bench[i].pids = append(bench[i].pids, uint32(10000+100*i+k))
				}
			}
			lib, _ := newLib(devs...)
			lib.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) { return bench[i], nvml.SUCCESS }
			s, err := Open(b.Context(), asLibrary(lib), Config{Interval: 100 * time.Millisecond, Now: now})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var st [8]telemetry.DeviceState
			procs := 0
			b.ReportAllocs()
			for b.Loop() {
				clock = clock.Add(100 * time.Millisecond)
				procs = 0
				for i, w := range s.workers {
					st[i] = telemetry.DeviceState{}
					w.d.sampleProcesses(clock, 0, &st[i])
					procs += len(st[i].Processes)
				}
			}
			b.ReportMetric(float64(procs), "procs/tick")
		})
	}
}
