package cgroup

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// crowdPIDs is a node's process count that makes walking /proc costly: a
// busy host with many pods runs tens of thousands.
const (
	crowdPIDs    = 50_000
	crowdFirst   = 100_000 // the first PID of the fake procfs
	gpuPerTick   = 100     // GPU processes NVML reports each tick
	churnPerTick = 10      // of which new each tick (and as many gone)
)

// crowdOwner is the pod the fake procfs puts pid in: 50 processes per pod,
// one container per 10; every tenth PID is a host process (ok false).
func crowdOwner(pid uint32) (Owner, bool) {
	i := pid - crowdFirst
	if i%10 == 9 {
		return Owner{}, false
	}
	return Owner{
		PodUID:      fmt.Sprintf("%08x-1234-4abc-8def-%012x", i/50, i/50),
		ContainerID: fmt.Sprintf("%064x", i/10),
		Runtime:     RuntimeContainerd,
	}, true
}

// writeCrowdedProcFS writes a procfs of crowdPIDs processes into a temp
// dir, as --path.procfs would name it: each PID's directory with its
// cgroup file (cgroup v2, systemd driver, containerd), and the other
// entries a real /proc has beside them.
func writeCrowdedProcFS(tb testing.TB) string {
	tb.Helper()
	root := tb.TempDir()
	for _, name := range []string{"self", "stat", "meminfo"} {
		if err := os.WriteFile(filepath.Join(root, name), nil, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range uint32(crowdPIDs) {
		pid := crowdFirst + i
		content := "0::/system.slice/containerd.service\n"
		if o, ok := crowdOwner(pid); ok {
			content = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
				strings.ReplaceAll(o.PodUID, "-", "_") + ".slice/cri-containerd-" + o.ContainerID + ".scope\n"
		}
		dir := filepath.Join(root, strconv.FormatUint(uint64(pid), 10))
		if err := os.Mkdir(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return root
}

// crowdTick is the PIDs NVML reports on tick k: gpuPerTick of the fake
// procfs's, churnPerTick of them new since tick k-1, and one that exited
// before its cgroup was read (no directory).
func crowdTick(k int) []uint32 {
	pids := make([]uint32, 0, gpuPerTick+1)
	for i := range gpuPerTick {
		pids = append(pids, crowdFirst+uint32((k*churnPerTick+i)%crowdPIDs))
	}
	return append(pids, crowdFirst+crowdPIDs+uint32(k))
}

// On a /proc of 50,000 processes the resolver reads the cgroup of the
// PIDs it is asked about and nothing else: never a directory listing, no
// other PID's file, and a PID only once while it stays on a GPU. The GPU
// processes are attributed right, and the cache holds no more than a
// tick's PIDs: those that leave the GPUs (or exit) are forgotten.
func TestResolverCrowdedProcFS(t *testing.T) {
	root := writeCrowdedProcFS(t)
	fsys := newCountingFS(os.DirFS(root))
	r := newResolverFS(fsys)
	const ticks = 30
	asked := map[string]int{} // opens each file should have had
	var prev map[uint32]bool
	for k := range ticks {
		pids := crowdTick(k)
		got, err := r.Resolve(pids)
		if err != nil {
			t.Fatalf("tick %d: %v", k, err)
		}
		want := map[uint32]Owner{}
		now := map[uint32]bool{}
		for _, pid := range pids {
			now[pid] = true
			name := strconv.FormatUint(uint64(pid), 10) + "/cgroup"
			// A PID new this tick is read; a gone one is tried every
			// tick (nothing to cache); a cached one is not read.
			if !prev[pid] || pid >= crowdFirst+crowdPIDs {
				asked[name]++
			}
			if o, ok := crowdOwner(pid); ok && pid < crowdFirst+crowdPIDs {
				want[pid] = o
			}
		}
		prev = now
		if !maps.Equal(got, want) {
			t.Fatalf("tick %d: %d PIDs attributed, want %d; e.g. %v", k, len(got), len(want), firstDiff(got, want))
		}
		if n := r.Len(); n > gpuPerTick {
			t.Fatalf("tick %d: %d PIDs cached, want at most the tick's %d", k, n, gpuPerTick)
		}
	}
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	total := 0
	for name, n := range fsys.opens {
		total += n
		if n != asked[name] {
			t.Errorf("%s opened %d times, want %d", name, n, asked[name])
		}
	}
	t.Logf("%d ticks of %d GPU PIDs (%d new each) over a procfs of %d: %d files opened", ticks, gpuPerTick, churnPerTick, crowdPIDs, total)
}

func firstDiff(got, want map[uint32]Owner) string {
	for pid, o := range want {
		if got[pid] != o {
			return fmt.Sprintf("PID %d: %+v, want %+v", pid, got[pid], o)
		}
	}
	for pid, o := range got {
		if _, ok := want[pid]; !ok {
			return fmt.Sprintf("PID %d: %+v, want none", pid, o)
		}
	}
	return ""
}

// BenchmarkResolveCrowdedProcFS is one pass of the process stage on a
// node of 50,000 processes: 100 GPU PIDs, 10 of them new (read) and 90
// cached, one gone (tried). The other 49,900 cost nothing: the cost per
// pass is that of the GPU processes, not of /proc.
func BenchmarkResolveCrowdedProcFS(b *testing.B) {
	r := NewResolver(writeCrowdedProcFS(b))
	// A wrap to tick 0 reads 100 files again once in 1,000 passes.
	ticks := make([][]uint32, 1000)
	for k := range ticks {
		ticks[k] = crowdTick(k)
	}
	b.ReportAllocs()
	k := 0
	for b.Loop() {
		if _, err := r.Resolve(ticks[k%len(ticks)]); err != nil {
			b.Fatal(err)
		}
		k++
	}
}
