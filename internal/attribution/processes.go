package attribution

import (
	"context"
	"log/slog"
	"maps"
	"sync/atomic"

	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// ProcessStage maps the GPU processes of each snapshot to the pods they
// run in: host PID to pod UID and container ID through /proc/<pid>/cgroup
// (internal/cgroup), then to namespace, pod and container names through a name
// source (the node's pod watch, or the simulated node's table).
//
// It follows the snapshot store on one goroutine, so that /proc is read
// once per snapshot and never on a scrape or a stream send: readers join
// each snapshot with the latest map it publishes (Processes), which is
// map lookups. The cost per tick is one cgroup file read per PID new since
// the last tick (cgroup.Resolver caches the rest); a PID seen for the
// first time is attributed from the tick after its read, at most one
// interval late.

// Feed is the snapshot store the process stage follows; telemetry.Store
// implements it.
type Feed interface {
	Snapshots
	Wait(ctx context.Context, seq uint64) (*telemetry.Snapshot, error)
}

// PIDResolver maps the PIDs of one tick to pod UIDs and container IDs;
// cgroup.Resolver implements it. Resolve is called once per snapshot with
// every PID of it, which lets the resolver evict PIDs that are gone.
type PIDResolver interface {
	Resolve(pids []uint32) (map[uint32]cgroup.Owner, error)
}

// Names turns what a cgroup path says into pod names; the pod watch
// implements it, and NameTable for the simulated node.
type Names interface {
	// Ready reports whether a miss means "not a pod of this node" rather
	// than "not known yet" (a pod watch before its first list).
	Ready() bool
	// Name returns the pod of o, with the container's name where known.
	Name(o cgroup.Owner) (Pod, bool)
}

// ProcessStage publishes the PID-to-pod map of the latest snapshot.
type ProcessStage struct {
	src   Feed
	res   PIDResolver
	names Names
	log   *slog.Logger

	last    atomic.Pointer[ProcessPods]
	failing bool // Run's goroutine only: the last Resolve returned an error
}

// NewProcessStage returns a stage over src; log may be nil.
func NewProcessStage(src Feed, res PIDResolver, names Names, log *slog.Logger) *ProcessStage {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ProcessStage{src: src, res: res, names: names, log: log}
}

var _ Processes = (*ProcessStage)(nil)

// ProcessPods returns the latest map, nil before the first snapshot or
// while the name source is not ready.
func (s *ProcessStage) ProcessPods() *ProcessPods { return s.last.Load() }

// Run follows the store until ctx ends, resolving each snapshot it sees;
// a snapshot published while it resolves the previous one is skipped for
// the next (PIDs outlive ticks).
func (s *ProcessStage) Run(ctx context.Context) error {
	var seq uint64
	for {
		snap, err := s.src.Wait(ctx, seq)
		if err != nil {
			return nil // ctx ended: a normal stop
		}
		seq = snap.Seq
		s.Update(snap)
	}
}

// Update resolves the processes of snap and publishes the map. Run calls
// it; it is exported for tests, and must not run concurrently with Run.
func (s *ProcessStage) Update(snap *telemetry.Snapshot) {
	if !s.names.Ready() {
		return
	}
	var pids []uint32
	for i := range snap.States {
		for _, p := range snap.States[i].Processes {
			pids = append(pids, p.PID)
		}
	}
	owners, err := s.res.Resolve(pids)
	switch {
	case err != nil && !s.failing:
		// A procfs the agent may not read (no hostPID, no mount, a
		// restrictive hidepid): logged once, the PIDs that did resolve
		// are still used.
		s.log.Warn("reading GPU processes' cgroups failed; their pods are not known", "err", err)
		s.failing = true
	case err == nil && s.failing:
		s.log.Info("reading GPU processes' cgroups works again")
		s.failing = false
	}
	pods := make(map[uint32]Pod, len(owners))
	for pid, o := range owners {
		if ref, ok := s.names.Name(o); ok {
			pods[pid] = ref
		}
	}
	// An unchanged map keeps its pointer, so views cached on it stay
	// valid until the snapshot changes.
	if prev := s.last.Load(); prev != nil && maps.Equal(prev.Pods, pods) {
		return
	}
	s.last.Store(&ProcessPods{Seq: snap.Seq, Pods: pods})
}

// NameTable is a fixed name source: the simulated node's pods, or a test's.
type NameTable struct {
	Containers map[string]Pod // by container ID
	Pods       map[string]Pod // by pod UID, container empty
}

// Ready is always true: the table is complete from the start.
func (t *NameTable) Ready() bool { return true }

// Name looks the container up, then the pod.
func (t *NameTable) Name(o cgroup.Owner) (Pod, bool) {
	if ref, ok := t.Containers[o.ContainerID]; ok && o.ContainerID != "" {
		return ref, true
	}
	ref, ok := t.Pods[o.PodUID]
	return ref, ok
}
