package nvml

import (
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/telemetry"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// utilSample is one driver sample of one process at clock.
func utilSample(pid uint32, at time.Time, sm, enc uint32) nvml.ProcessUtilizationSample {
	return nvml.ProcessUtilizationSample{Pid: pid, TimeStamp: uint64(at.UnixMicro()), SmUtil: sm, MemUtil: sm / 2, EncUtil: enc, DecUtil: enc / 2}
}

func session(pid uint32, c nvml.EncoderType, fps, latencyUs uint32) nvml.EncoderSessionInfo {
	return nvml.EncoderSessionInfo{Pid: pid, CodecType: uint32(c), HResolution: 1280, VResolution: 720, AverageFps: fps, AverageLatency: latencyUs}
}

func TestTwoProcessesSeeTheirOwnNumbers(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	d := newFullGPU(0)
	d.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		return []nvml.ProcessUtilizationSample{utilSample(200, clock, 50, 40), utilSample(100, clock, 30, 10)}, nvml.SUCCESS
	}
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 1 << 30}, {Pid: 200, UsedGpuMemory: 2 << 30}}, nvml.SUCCESS
	}
	// PID 100 has graphics contexts too: listed again with the same
	// memory, which must not count twice. PID 300 holds memory, idle.
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 1 << 30}, {Pid: 300, UsedGpuMemory: 512 << 20}}, nvml.SUCCESS
	}
	d.GetEncoderSessionsFunc = func() ([]nvml.EncoderSessionInfo, nvml.Return) {
		return []nvml.EncoderSessionInfo{
			session(100, nvml.ENCODER_QUERY_H264, 30, 2000), session(100, nvml.ENCODER_QUERY_H264, 28, 3000),
			session(200, nvml.ENCODER_QUERY_H264, 25, 6000), session(200, nvml.ENCODER_QUERY_HEVC, 20, 9000),
			session(200, nvml.ENCODER_QUERY_H264, 23, 8000),
		}, nvml.SUCCESS
	}
	lib, _ := newLib(d)
	st := tick(open(t, lib, Config{Now: now})).States[0]
	if st.ProcessSupport != telemetry.AllProcessData {
		t.Errorf("process support = %b, want all", st.ProcessSupport)
	}
	if len(st.Processes) != 3 {
		t.Fatalf("%d processes, want 3: %+v", len(st.Processes), st.Processes)
	}
	p100, p200, p300 := st.Processes[0], st.Processes[1], st.Processes[2]
	if p100.PID != 100 || p200.PID != 200 || p300.PID != 300 {
		t.Fatalf("PIDs %d %d %d, want ascending 100 200 300", p100.PID, p200.PID, p300.PID)
	}
	if p100.SMUtil != 30 || p100.EncUtil != 10 || p100.MemUtil != 15 || p100.DecUtil != 5 || p200.SMUtil != 50 || p200.EncUtil != 40 {
		t.Errorf("utilization: 100 = %+v, 200 = %+v", p100, p200)
	}
	if !p100.UtilAt.Equal(clock) {
		t.Errorf("UtilAt = %v, want the sample's stamp %v", p100.UtilAt, clock)
	}
	if p100.FBUsed != 1<<30 || p200.FBUsed != 2<<30 || p300.FBUsed != 512<<20 {
		t.Errorf("FB: %d %d %d", p100.FBUsed, p200.FBUsed, p300.FBUsed)
	}
	if p300.SMUtil != 0 || !p300.Has.Has(telemetry.ProcUtil) {
		t.Errorf("idle PID 300: %+v; want utilization 0 and present", p300)
	}
	h := p100.Encoder[telemetry.CodecH264]
	if h.Sessions != 2 || h.FPS != 29 || !near(h.LatencyMean, 0.0025) || !near(h.LatencyMax, 0.003) {
		t.Errorf("PID 100 H264 = %+v", h)
	}
	if p100.Encoder[telemetry.CodecHEVC].Sessions != 0 {
		t.Errorf("PID 100 has HEVC sessions: %+v", p100.Encoder)
	}
	h, v := p200.Encoder[telemetry.CodecH264], p200.Encoder[telemetry.CodecHEVC]
	if h.Sessions != 2 || h.FPS != 24 || !near(h.LatencyMean, 0.007) || !near(h.LatencyMax, 0.008) || v.Sessions != 1 || !near(v.LatencyMax, 0.009) {
		t.Errorf("PID 200: H264 %+v, HEVC %+v", h, v)
	}
	if tot := p200.EncoderTotal(); tot.Sessions != 3 || !near(tot.LatencyMean, (0.006+0.009+0.008)/3) || !near(tot.LatencyMax, 0.009) {
		t.Errorf("PID 200 total = %+v", tot)
	}
	if p300.EncoderTotal().Sessions != 0 {
		t.Errorf("PID 300 sessions = %+v", p300.Encoder)
	}
}

func near(a, b float64) bool { return a-b < 1e-12 && b-a < 1e-12 }

// NVIDIA's mock library, and some drivers, answer samples already read
// whatever lastSeen says: each is kept once, lastSeen never goes back,
// and a held sample expires when no newer one comes.
func TestRepeatedProcessSamplesAreKeptOnce(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	var mu sync.Mutex
	t0 := clock
	samples := []nvml.ProcessUtilizationSample{utilSample(100, t0, 30, 10), utilSample(100, t0.Add(-time.Second), 90, 90)}
	var lastSeens []uint64
	d := newFullGPU(0)
	d.GetProcessUtilizationFunc = func(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		lastSeens = append(lastSeens, lastSeen)
		return append([]nvml.ProcessUtilizationSample(nil), samples...), nvml.SUCCESS
	}
	lib, _ := newLib(d)
	s := open(t, lib, Config{Now: now})
	lastSeens = nil // the probe's call
	for range 3 {
		clock = clock.Add(100 * time.Millisecond)
		st := tick(s).States[0]
		if len(st.Processes) != 1 || st.Processes[0].SMUtil != 30 || !st.Processes[0].UtilAt.Equal(t0) {
			t.Fatalf("processes %+v; want PID 100 at 30%% from the newest sample only", st.Processes)
		}
	}
	mu.Lock()
	samples = append(samples, utilSample(100, clock, 60, 20), utilSample(100, t0.Add(time.Millisecond), 1, 1))
	mu.Unlock()
	clock = clock.Add(100 * time.Millisecond)
	if p := tick(s).States[0].Processes; len(p) != 1 || p[0].SMUtil != 60 {
		t.Errorf("after a newer sample: %+v, want 60%%", p)
	}
	mu.Lock()
	for i := 1; i < len(lastSeens); i++ {
		if lastSeens[i] < lastSeens[i-1] {
			t.Errorf("lastSeen went back: %v", lastSeens)
		}
	}
	if want := uint64(t0.UnixMicro()); lastSeens[0] != 0 || lastSeens[1] != want {
		t.Errorf("lastSeen = %v, want 0 then %d", lastSeens, want)
	}
	samples = nil
	mu.Unlock()
	clock = clock.Add(3 * time.Second)
	if p := tick(s).States[0].Processes; len(p) != 0 {
		t.Errorf("3 s without a sample: %+v, want the process gone (idle, listed by no other call)", p)
	}
}

func TestNoNewerProcessSampleIsNotAnError(t *testing.T) {
	for _, ret := range []nvml.Return{nvml.ERROR_NOT_FOUND, nvml.ERROR_INSUFFICIENT_SIZE} {
		d := newFullGPU(0)
		d.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			if ret == nvml.ERROR_INSUFFICIENT_SIZE {
				return []nvml.ProcessUtilizationSample{}, ret // go-nvml's answer to a count of 0
			}
			return nil, ret
		}
		lib, _ := newLib(d)
		s := open(t, lib, Config{})
		for range 3 {
			st := tick(s).States[0]
			if st.ProcessErrors != 0 || !st.ProcessSupport.Has(telemetry.ProcUtil) || len(st.Processes) != 0 {
				t.Errorf("%v: errors %d, support %b, processes %+v", ret, st.ProcessErrors, st.ProcessSupport, st.Processes)
			}
		}
	}
}

func TestUnsupportedProcessCallIsProbedOnce(t *testing.T) {
	var buf logBuffer
	d := newFullGPU(0)
	var calls atomic.Int32
	d.GetEncoderSessionsFunc = func() ([]nvml.EncoderSessionInfo, nvml.Return) {
		calls.Add(1)
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 7, UsedGpuMemory: 1 << 20}}, nvml.SUCCESS
	}
	lib, _ := newLib(d)
	s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	for range 5 {
		st := tick(s).States[0]
		if st.ProcessSupport.Has(telemetry.ProcEncSessions) || !st.ProcessSupport.Has(telemetry.ProcFB) {
			t.Fatalf("support = %b", st.ProcessSupport)
		}
		if len(st.Processes) != 1 || st.Processes[0].Has.Has(telemetry.ProcEncSessions) || st.ProcessErrors != 0 {
			t.Fatalf("processes %+v, errors %d", st.Processes, st.ProcessErrors)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("GetEncoderSessions called %d times, want once (the probe)", n)
	}
	if n := strings.Count(buf.String(), "per-process calls not supported"); n != 1 {
		t.Errorf("%d log lines about it, want 1:\n%s", n, buf.String())
	}
}

func TestMIGGPUHasNoProcessData(t *testing.T) {
	n := newMIGNode()
	n.create(0, "MIG-aaa", 1, 0, 1<<30)
	fail := func(call string) { t.Errorf("%s called on a MIG-enabled GPU", call) }
	n.parent.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		fail("GetProcessUtilization")
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	n.parent.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		fail("GetComputeRunningProcesses")
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	lib, _ := newLib(n.parent)
	s := open(t, lib, Config{})
	for range 3 {
		st := tick(s).States[0]
		if st.ProcessSupport != 0 || st.Processes != nil || st.ProcessErrors != 0 {
			t.Errorf("MIG GPU: support %b, processes %+v, errors %d", st.ProcessSupport, st.Processes, st.ProcessErrors)
		}
	}
}

func TestFailingProcessCallIsCountedAndLoggedOnce(t *testing.T) {
	var buf logBuffer
	d := newFullGPU(0)
	var fail atomic.Bool
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		if fail.Load() {
			return nil, nvml.ERROR_UNKNOWN
		}
		return []nvml.ProcessInfo{{Pid: 7, UsedGpuMemory: 1 << 20}}, nvml.SUCCESS
	}
	lib, _ := newLib(d)
	s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	fail.Store(true)
	var st telemetry.DeviceState
	for range 3 {
		st = tick(s).States[0]
	}
	if st.ProcessErrors != 3 || len(st.Processes) != 0 {
		t.Errorf("errors %d, processes %+v", st.ProcessErrors, st.Processes)
	}
	fail.Store(false)
	if st = tick(s).States[0]; len(st.Processes) != 1 {
		t.Errorf("after recovery: %+v", st.Processes)
	}
	if c := strings.Count(buf.String(), "per-process call failed"); c != 1 || !strings.Contains(buf.String(), "per-process call recovered") {
		t.Errorf("log:\n%s", buf.String())
	}
}

// A GetProcessUtilization that takes 40 ms at a 100 ms interval moves off
// the tick after slowCallStrikes readings; ticks then no longer make the
// call (counted, not timed: a loaded machine stretches ticks anyway) and
// the utilization still arrives, from the call's own cadence.
func TestSlowProcessUtilizationMovesOffTheTick(t *testing.T) {
	var buf logBuffer
	var inTick atomic.Bool
	var onTick atomic.Int32
	var slow atomic.Bool
	d := newFullGPU(0)
	d.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		if inTick.Load() {
			onTick.Add(1)
		}
		if slow.Load() {
			time.Sleep(40 * time.Millisecond)
		}
		return []nvml.ProcessUtilizationSample{utilSample(100, time.Now(), 30, 10)}, nvml.SUCCESS
	}
	other := newFullGPU(1)
	lib, _ := newLib(d, other)
	s := open(t, lib, Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	slow.Store(true)
	for range slowCallStrikes {
		tick(s)
	}
	if !strings.Contains(buf.String(), "per-process call slow; moved off the tick") {
		t.Fatalf("no log line about the move:\n%s", buf.String())
	}
	onTick.Store(0)
	testutil.Eventually(t, 5*time.Second, "utilization from the off-tick cadence", func() bool {
		inTick.Store(true)
		snap := tick(s)
		inTick.Store(false)
		p := snap.States[0].Processes
		return len(p) == 1 && p[0].SMUtil == 30
	})
	if n := onTick.Load(); n != 0 {
		t.Errorf("GetProcessUtilization called %d times during ticks after the move", n)
	}
}

// On the simulated node the time-sliced GPU's two media servers each see
// their own figures, and those add up to the GPU-wide ones.
func TestSimulatedSharedGPUProcessesAddUp(t *testing.T) {
	lib := sim.New(sim.Options{Devices: 3, Seed: 5, Static: true})
	s := open(t, lib, Config{})
	snap := tick(s)
	for i, st := range snap.States[:2] {
		if len(st.Processes) != 1 {
			t.Errorf("inference GPU %d: %d processes, want 1", i, len(st.Processes))
		}
	}
	st := snap.States[2]
	if len(st.Processes) != 2 {
		t.Fatalf("shared GPU: %d processes, want 2: %+v", len(st.Processes), st.Processes)
	}
	want := lib.Processes()[2:]
	var sm, enc, fb, fpsSum, latSum float64
	var sessions int
	for i, p := range st.Processes {
		if p.PID != want[i].PID {
			t.Errorf("process %d is PID %d, want %s/%s's %d", i, p.PID, want[i].Namespace, want[i].Pod, want[i].PID)
		}
		tot := p.EncoderTotal()
		sm, enc, fb = sm+p.SMUtil, enc+p.EncUtil, fb+float64(p.FBUsed)
		sessions += tot.Sessions
		fpsSum += tot.FPS * float64(tot.Sessions)
		latSum += tot.LatencyMean * float64(tot.Sessions)
	}
	a, b := st.Processes[0], st.Processes[1]
	if a.EncUtil == b.EncUtil || a.EncoderTotal().Sessions >= b.EncoderTotal().Sessions ||
		a.EncoderTotal().LatencyMean >= b.EncoderTotal().LatencyMean {
		t.Errorf("the two pods' encoders look alike: %+v / %+v", a, b)
	}
	for _, c := range []struct {
		f   telemetry.Field
		sum float64
	}{{telemetry.GPUUtil, sm}, {telemetry.EncUtil, enc}, {telemetry.FBUsed, fb}, {telemetry.EncSessions, float64(sessions)}} {
		if v, _ := st.Get(c.f); v != c.sum {
			t.Errorf("%s: processes add up to %v, the GPU says %v", c.f, c.sum, v)
		}
	}
	fps, _ := st.Get(telemetry.EncFPS)
	lat, _ := st.Get(telemetry.EncLatency)
	if math.Abs(fpsSum/float64(sessions)-fps) > 1e-9 || math.Abs(latSum/float64(sessions)-lat) > 1e-9 {
		t.Errorf("mean fps %v, latency %v over the processes; the GPU says %v, %v", fpsSum/float64(sessions), latSum/float64(sessions), fps, lat)
	}
}

// A reading that finds the same processes with the same figures shares the
// last snapshot's list rather than allocating another.
func TestUnchangedProcessesShareTheirList(t *testing.T) {
	d := newFullGPU(0)
	var fb atomic.Uint64
	fb.Store(1 << 30)
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 9, UsedGpuMemory: fb.Load()}, {Pid: 3, UsedGpuMemory: 1 << 20}}, nvml.SUCCESS
	}
	lib, _ := newLib(d)
	s := open(t, lib, Config{})
	a := tick(s).States[0].Processes
	b := tick(s).States[0].Processes
	if len(a) != 2 || &a[0] != &b[0] {
		t.Errorf("unchanged processes copied again: %p, %p", a, b)
	}
	fb.Store(2 << 30)
	c := tick(s).States[0].Processes
	if &c[0] == &b[0] || c[1].FBUsed != 2<<30 || b[1].FBUsed != 1<<30 {
		t.Errorf("a change reused or altered the published list: %+v then %+v", b, c)
	}
}
