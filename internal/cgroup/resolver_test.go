package cgroup

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
)

// The pods of testdata/proc (see testdata/README.md).
var (
	ownerA1 = Owner{PodUID: uidA, ContainerID: cidA, Runtime: RuntimeContainerd}
	ownerA2 = Owner{PodUID: uidA, ContainerID: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", Runtime: RuntimeContainerd}
	ownerB  = Owner{PodUID: uidB, ContainerID: cidB}
)

// countingFS counts opens per name, so that a test can tell a cache hit from
// a re-read.
type countingFS struct {
	fs.FS
	mu    sync.Mutex
	opens map[string]int
}

func newCountingFS(fsys fs.FS) *countingFS {
	return &countingFS{FS: fsys, opens: make(map[string]int)}
}

func (c *countingFS) Open(name string) (fs.File, error) {
	c.mu.Lock()
	c.opens[name]++
	c.mu.Unlock()
	return c.FS.Open(name)
}

func (c *countingFS) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens[name]
}

// failFS fails the read of chosen files with an error, as the kernel does for
// a task reaped between open and read (ESRCH) or a procfs mounted with
// hidepid (EACCES).
type failFS struct {
	fs.FS
	fail map[string]error
}

func (f failFS) Open(name string) (fs.File, error) {
	file, err := f.FS.Open(name)
	if err != nil {
		return nil, err
	}
	if e, ok := f.fail[name]; ok {
		return failFile{file, e}, nil
	}
	return file, nil
}

type failFile struct {
	fs.File
	err error
}

func (f failFile) Read([]byte) (int, error) { return 0, f.err }

func TestResolverTestdata(t *testing.T) {
	r := NewResolver("testdata/proc")
	// 4001 has no cgroup file and 5555 no directory: both exited.
	got, err := r.Resolve([]uint32{1001, 1002, 2001, 3001, 4001, 5555})
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	want := map[uint32]Owner{1001: ownerA1, 1002: ownerA2, 2001: ownerB}
	if !maps.Equal(got, want) {
		t.Errorf("Resolve = %v\nwant %v", got, want)
	}
	// The host process is cached (as no pod); the exited PIDs are not.
	if n := r.Len(); n != 4 {
		t.Errorf("Len = %d, want 4", n)
	}
}

func TestResolverLookup(t *testing.T) {
	r := NewResolver("testdata/proc")
	for _, tc := range []struct {
		pid    uint32
		want   Owner
		ok     bool
		exited bool
	}{
		{pid: 1001, want: ownerA1, ok: true},
		{pid: 2001, want: ownerB, ok: true},
		{pid: 3001},
		{pid: 4001, exited: true},
		{pid: 5555, exited: true},
	} {
		got, ok, err := r.Lookup(tc.pid)
		if tc.exited {
			if !errors.Is(err, ErrNoProcess) {
				t.Errorf("Lookup(%d) error = %v, want ErrNoProcess", tc.pid, err)
			}
			continue
		}
		if err != nil || got != tc.want || ok != tc.ok {
			t.Errorf("Lookup(%d) = %+v, %v, %v; want %+v, %v, nil", tc.pid, got, ok, err, tc.want, tc.ok)
		}
	}
}

func TestResolverCachesAndEvicts(t *testing.T) {
	fsys := newCountingFS(os.DirFS("testdata/proc"))
	r := newResolverFS(fsys)

	tick := func(pids ...uint32) map[uint32]Owner {
		t.Helper()
		got, err := r.Resolve(pids)
		if err != nil {
			t.Fatalf("Resolve(%v): %v", pids, err)
		}
		return got
	}
	opens := func(want map[string]int) {
		t.Helper()
		for name, n := range want {
			if got := fsys.count(name); got != n {
				t.Errorf("opens of %s = %d, want %d", name, got, n)
			}
		}
	}

	tick(1001, 2001, 3001)
	opens(map[string]int{"1001/cgroup": 1, "2001/cgroup": 1, "3001/cgroup": 1})

	// Warm: pods and the host process alike come from the cache.
	got := tick(1001, 2001, 3001)
	if !maps.Equal(got, map[uint32]Owner{1001: ownerA1, 2001: ownerB}) {
		t.Errorf("warm Resolve = %v", got)
	}
	opens(map[string]int{"1001/cgroup": 1, "2001/cgroup": 1, "3001/cgroup": 1})

	// 2001 and 3001 leave the GPU: evicted, so the cache follows the tick.
	tick(1001, 1002)
	if n := r.Len(); n != 2 {
		t.Errorf("Len after eviction = %d, want 2", n)
	}
	// A PID back after eviction is read again: it may be a new process.
	got = tick(1001, 2001)
	if !maps.Equal(got, map[uint32]Owner{1001: ownerA1, 2001: ownerB}) {
		t.Errorf("Resolve after eviction = %v", got)
	}
	opens(map[string]int{"1001/cgroup": 1, "1002/cgroup": 1, "2001/cgroup": 2, "3001/cgroup": 1})

	// An empty tick empties the cache.
	tick()
	if n := r.Len(); n != 0 {
		t.Errorf("Len after empty tick = %d, want 0", n)
	}
}

func TestResolverExitedBetweenOpenAndRead(t *testing.T) {
	fsys := newCountingFS(failFS{
		FS:   os.DirFS("testdata/proc"),
		fail: map[string]error{"1002/cgroup": syscall.ESRCH},
	})
	r := newResolverFS(fsys)
	got, err := r.Resolve([]uint32{1001, 1002})
	if err != nil {
		t.Fatalf("Resolve: %v, want no error for an exited PID", err)
	}
	if !maps.Equal(got, map[uint32]Owner{1001: ownerA1}) {
		t.Errorf("Resolve = %v, want only 1001", got)
	}
	if _, _, err := r.Lookup(1002); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Lookup(1002) error = %v, want ErrNoProcess", err)
	}
	if n := r.Len(); n != 1 {
		t.Errorf("Len = %d, want 1: an exited PID is not cached", n)
	}
}

func TestResolverReadError(t *testing.T) {
	fsys := newCountingFS(failFS{
		FS:   os.DirFS("testdata/proc"),
		fail: map[string]error{"2001/cgroup": syscall.EACCES},
	})
	r := newResolverFS(fsys)
	got, err := r.Resolve([]uint32{1001, 2001})
	if !errors.Is(err, fs.ErrPermission) || errors.Is(err, ErrNoProcess) {
		t.Fatalf("Resolve error = %v, want a permission error", err)
	}
	if !strings.Contains(err.Error(), "pid 2001") {
		t.Errorf("error %q does not name the PID", err)
	}
	// The PIDs that did resolve are still returned.
	if !maps.Equal(got, map[uint32]Owner{1001: ownerA1}) {
		t.Errorf("Resolve = %v, want 1001 despite the error", got)
	}
	// A failed read is not cached: the next tick tries again.
	_, _ = r.Resolve([]uint32{1001, 2001})
	if n := fsys.count("2001/cgroup"); n != 2 {
		t.Errorf("opens of 2001/cgroup = %d, want 2", n)
	}
}

func TestResolverBoundsRead(t *testing.T) {
	line := "0::/kubepods/pod" + uidA + "/" + cidA + "\n"
	junk := strings.Repeat("x", maxCgroupFile)
	fsys := fstest.MapFS{
		// A real line, then more than the bound of junk: the line
		// still counts, the cut junk is dropped.
		"1/cgroup": {Data: []byte(line + junk + "\n" + "0::/kubepods/pod" + uidB + "/" + cidB + "\n")},
		// The pod line straddles the bound: its cut start must not be
		// taken for a path.
		"2/cgroup": {Data: []byte(strings.Repeat("#", maxCgroupFile-len(line)/2) + "\n" + line)},
		// A pod line past the bound is never read.
		"3/cgroup": {Data: []byte(junk + "\n" + line)},
	}
	r := newResolverFS(fsys)
	for _, tc := range []struct {
		pid  uint32
		want Owner
		ok   bool
	}{
		{1, Owner{PodUID: uidA, ContainerID: cidA}, true},
		{2, Owner{}, false},
		{3, Owner{}, false},
	} {
		got, ok, err := r.Lookup(tc.pid)
		if err != nil || got != tc.want || ok != tc.ok {
			t.Errorf("Lookup(%d) = %+v, %v, %v; want %+v, %v, nil", tc.pid, got, ok, err, tc.want, tc.ok)
		}
	}
}

func TestResolverDefaultProcFS(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip("no /proc here")
	}
	r := NewResolver("")
	// This test runs on a host, in a container or in CI: whatever the
	// answer, reading its own cgroup file must work.
	if _, _, err := r.Lookup(uint32(os.Getpid())); err != nil {
		t.Errorf("Lookup(self) on /proc: %v", err)
	}
}

func TestResolverConcurrent(t *testing.T) {
	r := NewResolver("testdata/proc")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				_, _ = r.Resolve([]uint32{1001, 2001, 3001, 4001})
				_, _, _ = r.Lookup(1002)
			}
		})
	}
	wg.Wait()
}
