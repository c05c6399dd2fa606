package cgroup

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// ErrNoProcess says the PID is gone: it exited between the moment NVML
// reported it and the read of its cgroup file. It is expected, not a fault.
var ErrNoProcess = errors.New("no such process")

// DefaultProcFS is where the host's procfs is found when the agent runs with
// hostPID; a DaemonSet that mounts the host's /proc elsewhere names that path.
const DefaultProcFS = "/proc"

// maxCgroupFile bounds the bytes read from one cgroup file. A real one is at
// most about 3 KiB (a dozen v1 hierarchies with a pod path of some 200 bytes
// each); the bound keeps a garbage or hostile file from costing more, and the
// parser drops the partial last line of a cut file.
const maxCgroupFile = 16 << 10

// Resolver maps host PIDs to pods, reading each PID's cgroup file once and
// remembering the answer, host processes included, for as long as the PID
// keeps being asked about. It is safe for concurrent use, but Resolve's
// eviction assumes each call carries every PID of the tick, so one caller
// (the sampler, once per tick) should own it.
//
// A cached answer is trusted while the PID stays in use: a process does not
// leave its container's cgroup, and a PID reused by a new GPU process within
// one tick of the old one's exit would be misattributed for as long as it
// stays cached. Kernels hand out PIDs in increasing order up to pid_max
// before wrapping, which makes that reuse rare.
type Resolver struct {
	fsys fs.FS

	mu    sync.Mutex
	tick  uint64
	cache map[uint32]entry
	buf   []byte // reused read buffer, guarded by mu
}

type entry struct {
	owner Owner
	pod   bool
	tick  uint64 // the last Resolve that asked for this PID
}

// NewResolver returns a Resolver reading <procfs>/<pid>/cgroup; an empty
// procfs means DefaultProcFS.
func NewResolver(procfs string) *Resolver {
	if procfs == "" {
		procfs = DefaultProcFS
	}
	return newResolverFS(os.DirFS(procfs))
}

// newResolverFS is the seam for tests that count or fail reads.
func newResolverFS(fsys fs.FS) *Resolver {
	return &Resolver{fsys: fsys, cache: make(map[uint32]entry)}
}

// Lookup returns the pod of one PID, from the cache when it is there. ok is
// false for a process in no pod; the error is ErrNoProcess (wrapped) for a PID
// that is gone. Lookup evicts nothing: a caller that uses it alone keeps
// every PID it has asked about.
func (r *Resolver) Lookup(pid uint32) (o Owner, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.lookupLocked(pid)
	return e.owner, e.pod, err
}

// Resolve returns the pods of the PIDs seen this tick, keyed by PID; host
// processes and PIDs that are gone are left out. Cached PIDs not in pids are
// evicted, so the cache holds no more than the last tick's PIDs. The error
// joins the reads that failed for another reason (such as a procfs the agent
// may not read); the map still holds every PID that resolved.
func (r *Resolver) Resolve(pids []uint32) (map[uint32]Owner, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tick++
	out := make(map[uint32]Owner, len(pids))
	var errs []error
	for _, pid := range pids {
		e, err := r.lookupLocked(pid)
		switch {
		case errors.Is(err, ErrNoProcess):
			// Exited since NVML saw it: nothing to attribute.
		case err != nil:
			errs = append(errs, err)
		case e.pod:
			out[pid] = e.owner
		}
	}
	for pid, e := range r.cache {
		if e.tick != r.tick {
			delete(r.cache, pid)
		}
	}
	return out, errors.Join(errs...)
}

// Len returns the number of PIDs cached.
func (r *Resolver) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}

func (r *Resolver) lookupLocked(pid uint32) (entry, error) {
	if e, hit := r.cache[pid]; hit {
		e.tick = r.tick
		r.cache[pid] = e
		return e, nil
	}
	b, err := r.read(pid)
	if err != nil {
		// Neither a gone PID nor a failed read is cached: the first
		// cannot be asked about again, the second may succeed next tick.
		return entry{}, err
	}
	o, ok := Parse(b)
	e := entry{owner: o, pod: ok, tick: r.tick}
	r.cache[pid] = e
	return e, nil
}

// read returns the complete lines of the first maxCgroupFile bytes of the
// PID's cgroup file, in r.buf.
func (r *Resolver) read(pid uint32) ([]byte, error) {
	name := strconv.FormatUint(uint64(pid), 10) + "/cgroup"
	f, err := r.fsys.Open(name)
	if err != nil {
		return nil, readErr(pid, err)
	}
	defer f.Close()
	if r.buf == nil {
		r.buf = make([]byte, maxCgroupFile)
	}
	// A procfs file reports size 0, so read until EOF or the bound rather
	// than trusting Stat.
	n, err := io.ReadFull(f, r.buf)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return r.buf[:n], nil
	case err != nil:
		return nil, readErr(pid, err)
	}
	// Full buffer: the file may go on, so drop what follows the last
	// complete line rather than parse a cut path.
	b := r.buf[:n]
	for len(b) > 0 && b[len(b)-1] != '\n' {
		b = b[:len(b)-1]
	}
	return b, nil
}

// readErr turns the errors of an exited PID into ErrNoProcess: ENOENT when
// its /proc directory is gone before the open, ESRCH when the task is reaped
// between the open and the read.
func readErr(pid uint32, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("cgroup: pid %d: %w", pid, ErrNoProcess)
	}
	return fmt.Errorf("cgroup: read cgroup of pid %d: %w", pid, err)
}
