package sim

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/cgroup"
)

// The shared GPU's two processes add up to what the GPU reports as a
// whole: utilization per driver sample, sessions, mean fps and latency,
// and framebuffer; and they differ.
func TestSharedGPUProcessesAddUp(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 3, Seed: 7, Now: func() time.Time { return clock }})
	d := l.Devices()[2]
	if len(d.procs) != 2 || len(l.Devices()[0].procs) != 1 || len(l.Processes()) != 4 {
		t.Fatalf("processes: %+v", l.Processes())
	}
	var sawDifferentLatency bool
	for range 50 {
		clock = clock.Add(1300 * time.Millisecond)
		ps, ret := d.GetProcessUtilization(0)
		if ret != nvml.SUCCESS {
			t.Fatalf("GetProcessUtilization: %v", ret)
		}
		ts := ps[0].TimeStamp
		var sm, mem, enc, dec uint32
		for _, p := range ps {
			sm, mem, enc, dec = sm+p.SmUtil, mem+p.MemUtil, enc+p.EncUtil, dec+p.DecUtil
		}
		for typ, sum := range map[nvml.SamplingType]uint32{nvml.GPU_UTILIZATION_SAMPLES: sm, nvml.MEMORY_UTILIZATION_SAMPLES: mem,
			nvml.ENC_UTILIZATION_SAMPLES: enc, nvml.DEC_UTILIZATION_SAMPLES: dec} {
			_, samples, _ := d.GetSamples(typ, ts-1)
			if len(samples) != 1 || samples[0].TimeStamp != ts {
				t.Fatalf("GetSamples(%v) after %d: %+v", typ, ts-1, samples)
			}
			if v := binary.LittleEndian.Uint32(samples[0].SampleValue[:]); v != sum {
				t.Errorf("sampling type %v: processes add up to %d, the GPU's sample is %d", typ, sum, v)
			}
		}
		if _, ret := d.GetProcessUtilization(ts); ret != nvml.ERROR_NOT_FOUND {
			t.Errorf("nothing newer than %d: %v, want NOT_FOUND", ts, ret)
		}

		n, fps, lat, _ := d.GetEncoderStats()
		sessions, _ := d.GetEncoderSessions()
		if len(sessions) != n {
			t.Fatalf("%d sessions listed, GetEncoderStats says %d", len(sessions), n)
		}
		var fpsSum, latSum int
		perPID := map[uint32][2]int{}
		for _, s := range sessions {
			fpsSum += int(s.AverageFps)
			latSum += int(s.AverageLatency)
			c := perPID[s.Pid]
			perPID[s.Pid] = [2]int{c[0] + 1, c[1] + int(s.AverageLatency)}
		}
		if n > 0 && (fpsSum != n*int(fps) || latSum != n*int(lat)) {
			t.Errorf("sessions' fps %d / latency %d sum to %d / %d, want %d×%d / %d×%d", fps, lat, fpsSum, latSum, n, fps, n, lat)
		}
		a, b := perPID[d.procs[0].PID], perPID[d.procs[1].PID]
		if a[0] > 0 && b[0] > 0 && a[1]/a[0] < b[1]/b[0] {
			sawDifferentLatency = true
		}

		mem2, _ := d.GetMemoryInfo_v2()
		infos, _ := d.GetComputeRunningProcesses()
		var fb uint64
		for _, p := range infos {
			fb += p.UsedGpuMemory
		}
		if fb != mem2.Used {
			t.Errorf("processes hold %d bytes, the GPU %d", fb, mem2.Used)
		}
	}
	if !sawDifferentLatency {
		t.Error("webrtc-sfu-1 never encoded at a higher latency than webrtc-sfu-0")
	}
}

// An encoder step splits between the processes in their proportions.
func TestEncoderStepSplitsAcrossProcesses(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	l := New(Options{Devices: 2, Seed: 3, Now: func() time.Time { return clock }})
	c := NewControl(l)
	enc := 75.0
	if err := c.SetLoad(1, Load{Encoder: &enc}); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Second)
	h, _ := c.DeviceGetHandleByIndex(1)
	ps, ret := h.GetProcessUtilization(0)
	if ret != nvml.SUCCESS || len(ps) != 2 || ps[0].EncUtil+ps[1].EncUtil != 75 || ps[0].EncUtil >= ps[1].EncUtil {
		t.Errorf("processes under a 75%% step: %+v, %v", ps, ret)
	}
	sessions, _ := h.GetEncoderSessions()
	if n, _, _, _ := h.GetEncoderStats(); n != 12 || len(sessions) != n {
		t.Errorf("%d sessions listed, %d reported, want 12", len(sessions), n)
	}
}

// The simulated procfs gives each process's pod to cgroup's resolver,
// and no other PID.
func TestProcFSResolvesEveryProcess(t *testing.T) {
	l := New(Options{Devices: 3, Seed: 11})
	r := cgroup.NewResolverFS(l.ProcFS())
	seen := map[string]bool{}
	for _, p := range l.Processes() {
		o, ok, err := r.Lookup(p.PID)
		if err != nil || !ok || o.PodUID != p.PodUID || o.ContainerID != p.ContainerID || o.Runtime != cgroup.RuntimeContainerd {
			t.Errorf("PID %d (%s/%s): %+v, %v, %v", p.PID, p.Namespace, p.Pod, o, ok, err)
		}
		if seen[p.PodUID] {
			t.Errorf("pod UID %s repeated", p.PodUID)
		}
		seen[p.PodUID] = true
	}
	if _, _, err := r.Lookup(1); !errors.Is(err, cgroup.ErrNoProcess) {
		t.Errorf("PID 1: %v, want ErrNoProcess", err)
	}
	want := []string{"default/inference-0", "default/inference-1", "media/webrtc-sfu-0", "media/webrtc-sfu-1"}
	for i, p := range l.Processes() {
		if got := p.Namespace + "/" + p.Pod; got != want[i] || p.GPU != min(i, 2) {
			t.Errorf("process %d: %s on GPU %d, want %s", i, got, p.GPU, want[i])
		}
	}
	if a, b := New(Options{Devices: 3, Seed: 11}).Processes(), l.Processes(); a[3].PodUID != b[3].PodUID || a[3].PID != b[3].PID {
		t.Error("same seed, different processes")
	}
}
