package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// benchPIDs is the per-tick load: 100 GPU processes on one node.
const benchPIDs = 100

// writeBenchProcFS writes a procfs of benchPIDs processes, most in pods as a
// shared-GPU node has them: v2 systemd lines, every fourth a 13-line v1
// hybrid file (the longest real shape), and one in ten a host process.
func writeBenchProcFS(b *testing.B) (root string, pids []uint32) {
	b.Helper()
	root = b.TempDir()
	for i := range benchPIDs {
		pid := uint32(10000 + i)
		uid := fmt.Sprintf("%08x_1234_4abc_8def_%012x", i/4, i/4)
		cid := fmt.Sprintf("%064x", i)
		path := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/cri-containerd-" + cid + ".scope"
		var content string
		switch {
		case i%10 == 9:
			content = "0::/system.slice/nvidia-persistenced.service\n"
		case i%4 == 0:
			content = v1Lines(path, path)
		default:
			content = "0::" + path + "\n"
		}
		dir := filepath.Join(root, strconv.FormatUint(uint64(pid), 10))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return root, pids
}

// BenchmarkResolveWarm is the steady state: the same 100 PIDs tick after
// tick, all from the cache.
func BenchmarkResolveWarm(b *testing.B) {
	root, pids := writeBenchProcFS(b)
	r := NewResolver(root)
	if _, err := r.Resolve(pids); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(pids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveCold is the first tick, or a tick where every process is
// new: 100 files opened, read and parsed.
func BenchmarkResolveCold(b *testing.B) {
	root, pids := writeBenchProcFS(b)
	b.ReportAllocs()
	for b.Loop() {
		r := NewResolver(root)
		if _, err := r.Resolve(pids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveColdRealProc reads up to 100 real /proc/<pid>/cgroup files,
// where the kernel renders each one on read: the cost a tmpfs fixture hides.
func BenchmarkResolveColdRealProc(b *testing.B) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		b.Skip("no /proc here")
	}
	var pids []uint32
	for _, e := range ents {
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil && len(pids) < benchPIDs {
			pids = append(pids, uint32(n))
		}
	}
	b.ReportMetric(float64(len(pids)), "pids/op")
	b.ReportAllocs()
	for b.Loop() {
		r := NewResolver("")
		// Errors (a hidepid mount, a PID gone) are part of the real
		// cost; they are not the point here.
		_, _ = r.Resolve(pids)
	}
}

// BenchmarkParse is one file's parse without the read: the v1 hybrid file,
// the longest real shape.
func BenchmarkParse(b *testing.B) {
	path := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope"
	in := []byte(v1Lines(path, path))
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := Parse(in); !ok {
			b.Fatal("no pod")
		}
	}
}
