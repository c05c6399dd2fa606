package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/test/internal/fakedcgm"
)

// dcgmChildEnv marks a child of TestDCGMSource or TestDCGMLibraryMissing:
// "fake" (libdcgm.so.4 is the fake, on LD_LIBRARY_PATH) or "missing" (no
// libdcgm.so.4). glibc reads LD_LIBRARY_PATH only at start, and go-dcgm
// keeps one global connection, so each runs in a process of its own.
const dcgmChildEnv = "GPU_AGENT_TEST_DCGM_CHILD"

// TestDCGMSource runs internal/dcgm's Source through go-dcgm's real cgo
// path over the fake libdcgm.so.4: values read and stepped, a refused
// connection retried, a lost one reconnected, the profiling module in
// use, and a call that hangs.
func TestDCGMSource(t *testing.T) {
	if os.Getenv(dcgmChildEnv) == "fake" {
		dcgmFakeChild(t)
		return
	}
	dir, err := fakedcgm.Build(t.TempDir())
	if err == fakedcgm.ErrNoCompiler && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	runDCGMChild(t, "TestDCGMSource", "fake", dir)
}

// TestDCGMLibraryMissing: without libdcgm.so.4 the Source reports DCGM
// down, reason library_missing, and keeps trying.
func TestDCGMLibraryMissing(t *testing.T) {
	if os.Getenv(dcgmChildEnv) == "missing" {
		src, stop := startDCGM(t, dcgm.Embedded, "")
		defer stop()
		waitDCGM(t, src, "reason library_missing", func() bool { return dcgmCount(t, src, dcgm.ReasonLibraryMissing) >= 2 })
		if dcgmUp(t, src) != 0 || src.Latest() != nil {
			t.Error("DCGM up, or values served, without libdcgm.so.4")
		}
		return
	}
	runDCGMChild(t, "TestDCGMLibraryMissing", "missing", "")
}

// runDCGMChild re-runs test name in a child with LD_LIBRARY_PATH=libDir.
func runDCGMChild(t *testing.T, name, kind, libDir string) {
	t.Helper()
	env := []string{dcgmChildEnv + "=" + kind, "LD_LIBRARY_PATH=" + libDir,
		fakedcgm.ControlEnv + "=" + filepath.Join(t.TempDir(), "control")}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LD_LIBRARY_PATH=") && !strings.HasPrefix(e, fakedcgm.ControlEnv+"=") {
			env = append(env, e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("child did not pass %s:\n%s", name, out)
	}
	t.Logf("child:\n%s", out)
}

func dcgmFakeChild(t *testing.T) {
	ctl := fakedcgm.Control{Path: os.Getenv(fakedcgm.ControlEnv)}
	set := func(lines ...string) {
		t.Helper()
		if err := ctl.Set(lines...); err != nil {
			t.Fatal(err)
		}
	}
	const gpuA, gpuB = "GPU-0a0a0a0a-0000-0000-0000-000000000000", "GPU-0b0b0b0b-0000-0000-0000-000000000001"
	gpus := "gpus=" + gpuA + "," + gpuB
	value := func(src *dcgm.Source, uuid string, f dcgm.Field) (dcgm.Value, bool) {
		r := src.Latest()
		if r == nil {
			return dcgm.Value{}, false
		}
		v, ok := r.GPUs[uuid][f]
		return v, ok
	}

	// Subtests share go-dcgm's one connection: each Source is stopped
	// (and disconnected) before the next starts.
	t.Run("values read and stepped", func(t *testing.T) {
		set(gpus, "value.1002=0.25")
		src, stop := startDCGM(t, dcgm.Embedded, "")
		defer stop()
		waitDCGM(t, src, "both GPUs' SM activity", func() bool {
			a, okA := value(src, gpuA, dcgm.ProfSMActive)
			b, okB := value(src, gpuB, dcgm.ProfSMActive)
			return okA && okB && a.Number() == 0.25 && b.Number() == 0.25
		})
		if v, ok := value(src, gpuA, dcgm.ProfPCIeTxBytes); !ok || !v.Integer || v.Int != 1009000 || v.Time.IsZero() {
			t.Errorf("PCIe TX bytes of %s: %+v, %v; want the integer 1009000 with a timestamp", gpuA, v, ok)
		}
		for _, f := range dcgm.ProfilingFields {
			if _, ok := value(src, gpuB, f); !ok {
				t.Errorf("no value of field %d for %s", f, gpuB)
			}
		}
		if dcgmUp(t, src) != 1 {
			t.Error("gpu_agent_dcgm_up is not 1")
		}
		set(gpus, "value.1002=0.25", "value.1.1002=0.75")
		waitDCGM(t, src, "the stepped value", func() bool {
			b, ok := value(src, gpuB, dcgm.ProfSMActive)
			return ok && b.Number() == 0.75
		})
		if a, _ := value(src, gpuA, dcgm.ProfSMActive); a.Number() != 0.25 {
			t.Errorf("%s's SM activity %v moved with the other GPU's", gpuA, a.Number())
		}
	})

	// MIG: GPU B's GPU instances 3 and 5 (entities 8 and 9, as the host
	// engine numbers them) are read under B's UUID and their GPU instance
	// IDs, never mistaken for GPUs; a MIG reconfiguration and a GPU listed
	// late are watched at the next relist, without a reconnect.
	t.Run("MIG instances, and GPUs and instances that change", func(t *testing.T) {
		set("gpus="+gpuA, "instances=0/3")
		src, stop := startDCGM(t, dcgm.Embedded, "")
		defer stop()
		instance := func(gpu string, gi int, f dcgm.Field) (float64, bool) {
			r := src.Latest()
			if r == nil {
				return 0, false
			}
			v, ok := r.Instances[dcgm.InstanceKey{GPU: gpu, GI: gi}][f]
			return v.Number(), ok
		}
		waitDCGM(t, src, "GPU A's instance", func() bool { _, ok := instance(gpuA, 3, dcgm.ProfSMActive); return ok })
		set(gpus, "instances=1/3,1/5", "value.i8.1004=0.625", "value.1.1004=0.25")
		waitDCGM(t, src, "GPU B and its two instances", func() bool {
			v3, ok3 := instance(gpuB, 3, dcgm.ProfPipeTensorActive)
			v5, ok5 := instance(gpuB, 5, dcgm.ProfPipeTensorActive)
			b, okB := value(src, gpuB, dcgm.ProfPipeTensorActive)
			return ok3 && ok5 && okB && v3 == 0.625 && v5 == 0.4+0.05+0.009 && b.Number() == 0.25
		})
		r := src.Latest()
		if _, ok := r.Instances[dcgm.InstanceKey{GPU: gpuA, GI: 3}]; ok || len(r.Instances) != 2 {
			t.Errorf("instances %v: want GPU B's 3 and 5 only (GPU A's went with the reconfiguration)", r.Instances)
		}
		if v, ok := r.Instances[dcgm.InstanceKey{GPU: gpuB, GI: 5}][dcgm.ProfPCIeTxBytes]; !ok || !v.Integer || v.Int != 1009*1000+500+9 {
			t.Errorf("instance 5's PCIe TX bytes %+v (%v)", v, ok)
		}
		if c := dcgmCounts(t, src); dcgmUp(t, src) != 1 || c["gpu_agent_dcgm_errors_total{reason=connect}"] != 0 ||
			c["gpu_agent_dcgm_errors_total{reason=read}"] != 0 {
			t.Errorf("a relist went through a failure: %v", c)
		}
		// An old driver's DCGM without a MIG hierarchy: GPUs still read.
		set(gpus, "instances=1/3", "fail.dcgmGetGpuInstanceHierarchy=-6")
		waitDCGM(t, src, "no instances without a hierarchy", func() bool {
			r := src.Latest()
			return r != nil && len(r.Instances) == 0 && len(r.GPUs) == 2
		})
	})

	t.Run("refused, then accepted, then lost and reconnected", func(t *testing.T) {
		set(gpus, "fail.dcgmConnect_v2=-21")
		src, stop := startDCGM(t, dcgm.Standalone, "localhost:5555")
		defer stop()
		waitDCGM(t, src, "reason connect", func() bool { return dcgmCount(t, src, dcgm.ReasonConnect) >= 2 })
		if dcgmUp(t, src) != 0 || src.Latest() != nil {
			t.Fatal("up, or values served, while the host engine refuses")
		}
		set(gpus)
		waitDCGM(t, src, "up after the host engine accepts", func() bool { return dcgmUp(t, src) == 1 && src.Latest() != nil })
		set(gpus, "fail.*=-21") // the host engine goes away
		waitDCGM(t, src, "reason read", func() bool { return dcgmCount(t, src, dcgm.ReasonRead) >= 1 && dcgmUp(t, src) == 0 })
		set(gpus)
		waitDCGM(t, src, "up after reconnecting", func() bool { return dcgmUp(t, src) == 1 && src.Latest() != nil })
	})

	t.Run("profiling module in use", func(t *testing.T) {
		set(gpus, "fail.dcgmWatchFields=-34")
		src, stop := startDCGM(t, dcgm.Embedded, "")
		defer stop()
		waitDCGM(t, src, "reason in_use", func() bool { return dcgmCount(t, src, dcgm.ReasonInUse) >= 2 })
		if dcgmUp(t, src) != 0 || dcgmCount(t, src, dcgm.ReasonConnect) != 0 {
			t.Errorf("up %v, connect errors %v: want 0 and 0", dcgmUp(t, src), dcgmCount(t, src, dcgm.ReasonConnect))
		}
	})

	t.Run("not supported", func(t *testing.T) {
		set(gpus, "fail.dcgmWatchFields=-36")
		src, stop := startDCGM(t, dcgm.Embedded, "")
		defer stop()
		waitDCGM(t, src, "reason not_supported", func() bool { return dcgmCount(t, src, dcgm.ReasonNotSupported) >= 1 })
	})

	// Last: a hung call may outlive its Source.
	t.Run("a call that hangs", func(t *testing.T) {
		set(gpus)
		src, stop := startDCGM(t, dcgm.Embedded, "")
		waitDCGM(t, src, "up", func() bool { return dcgmUp(t, src) == 1 })
		set(gpus, "hang.dcgmGetValuesSince_v2=3000")
		waitDCGM(t, src, "reason timeout", func() bool { return dcgmCount(t, src, dcgm.ReasonTimeout) >= 1 })
		latest := make(chan *dcgm.Reading)
		go func() { latest <- src.Latest() }()
		select {
		case r := <-latest:
			if r != nil {
				t.Error("values served while DCGM's read hangs")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Latest blocked behind a hung DCGM call")
		}
		set(gpus)
		waitDCGM(t, src, "up after the hang", func() bool { return dcgmUp(t, src) == 1 && src.Latest() != nil })

		set(gpus, "hang.dcgmGetValuesSince_v2=4000")
		waitDCGM(t, src, "a second timeout", func() bool { return dcgmCount(t, src, dcgm.ReasonTimeout) >= 2 })
		stop() // must return while the call still hangs
	})
}

// startDCGM runs a Source with short timeouts; stop cancels it and fails
// the test unless Run returns within 5 s (SIGTERM's budget).
func startDCGM(t *testing.T, mode dcgm.Mode, addr string) (*dcgm.Source, func()) {
	t.Helper()
	src := dcgm.New(dcgm.Options{Mode: mode, Address: addr, Interval: dcgm.MinInterval,
		CallTimeout: 500 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Relist: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	stopped := false
	return src, func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of its context ending")
		}
	}
}

// waitDCGM waits up to 20 s for cond.
func waitDCGM(t *testing.T, src *dcgm.Source, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("waited 20s for %s: up %v, errors %v", what, dcgmUp(t, src), dcgmCounts(t, src))
}

func dcgmGather(t *testing.T, src *dcgm.Source) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(src.Metrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			if g := m.GetGauge(); g != nil {
				out[key] = g.GetValue()
			} else {
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func dcgmUp(t *testing.T, src *dcgm.Source) float64 { return dcgmGather(t, src)["gpu_agent_dcgm_up"] }

func dcgmCount(t *testing.T, src *dcgm.Source, reason string) float64 {
	return dcgmGather(t, src)["gpu_agent_dcgm_errors_total{reason="+reason+"}"]
}

func dcgmCounts(t *testing.T, src *dcgm.Source) map[string]float64 { return dcgmGather(t, src) }
