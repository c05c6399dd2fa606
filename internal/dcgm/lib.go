package dcgm

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	godcgm "github.com/NVIDIA/go-dcgm/pkg/dcgm"
)

// library is what the Source needs of DCGM. goDCGM implements it over
// go-dcgm; every method is one blocking call into libdcgm, made by the
// Source through caller (one at a time, each with a timeout).
type library interface {
	// Connect loads libdcgm.so.4 and starts an embedded host engine or
	// connects to a standalone one.
	Connect(mode Mode, address string) error
	// Disconnect destroys the groups and shuts the connection down; its
	// errors are only logged (after a lost connection they are expected).
	Disconnect() error
	// GPUs lists the GPUs DCGM supports, with their UUIDs.
	GPUs() ([]GPU, error)
	// Instances lists the MIG GPU instances (DCGM's GPU_I entities) of
	// the GPUs; none on a GPU without MIG.
	Instances() ([]Instance, error)
	// Watch creates a group of the gpus and instances and a field group
	// of fields, and watches them every period, in place of any earlier
	// watch.
	Watch(gpus []GPU, instances []Instance, fields []Field, period time.Duration) error
	// Read returns the watched values since since, and the time to pass
	// next.
	Read(since time.Time) ([]Sample, time.Time, error)
}

// GPU is one GPU as DCGM numbers it, with NVML's identity.
type GPU struct {
	ID   uint
	UUID string
}

// Instance is a MIG GPU instance as DCGM numbers it (a GPU_I entity),
// with what NVML knows it by: its GPU's UUID and its GPU instance ID.
// dcgm-exporter watches GPU instances, not compute instances, on a MIG
// GPU; so does the agent, whose MIG devices are GPU instances.
type Instance struct {
	ID      uint // DCGM's GPU_I entity ID
	GPU     uint // DCGM's ID of its GPU
	GPUUUID string
	GI      uint // NVML's GPU instance ID
}

// Entity is what a sample is of: a GPU, or a GPU instance.
type Entity struct {
	Instance bool // a GPU_I entity, else a GPU
	ID       uint // DCGM's ID of it
}

// Sample is one value of a field of an entity, as DCGM read it.
type Sample struct {
	Entity Entity
	Field  Field
	Value  Value
}

// goDCGM is the library over go-dcgm, the only importer of it. go-dcgm
// keeps one global connection: there must be one goDCGM per process.
type goDCGM struct {
	group   godcgm.GroupHandle
	fields  godcgm.FieldHandle
	watched bool
}

var _ library = (*goDCGM)(nil)

// groupSeq makes the names of the groups unique within the host engine,
// which keeps a standalone connection's groups when it is lost.
var groupSeq atomic.Uint64

func (l *goDCGM) Connect(mode Mode, address string) error {
	switch mode {
	case Embedded:
		_, err := godcgm.Init(godcgm.Embedded)
		return err
	case Standalone:
		addr, socket := splitAddress(address)
		_, err := godcgm.Init(godcgm.Standalone, addr, socket)
		return err
	}
	return fmt.Errorf("dcgm mode %v cannot connect", mode)
}

// splitAddress turns --dcgm.hostengine-address into go-dcgm's two
// arguments: a unix socket path (absolute, or unix://path) and "1", or
// host:port and "0".
func splitAddress(a string) (addr, socket string) {
	if p, ok := strings.CutPrefix(a, "unix://"); ok {
		return p, "1"
	}
	if strings.HasPrefix(a, "/") {
		return a, "1"
	}
	return a, "0"
}

func (l *goDCGM) Disconnect() error {
	var errs []error
	if l.watched {
		// After a lost connection these fail: the host engine drops a
		// connection's groups with it, an embedded one at shutdown.
		errs = append(errs, godcgm.DestroyGroup(l.group), godcgm.FieldGroupDestroy(l.fields))
		l.watched = false
	}
	errs = append(errs, godcgm.Shutdown())
	return errors.Join(errs...)
}

func (l *goDCGM) GPUs() ([]GPU, error) {
	ids, err := godcgm.GetSupportedDevices()
	if err != nil {
		return nil, fmt.Errorf("listing GPUs: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	entities := make([]godcgm.GroupEntityPair, len(ids))
	for i, id := range ids {
		entities[i] = godcgm.GroupEntityPair{EntityGroupId: godcgm.FE_GPU, EntityId: id}
	}
	// Live data: the UUID is not watched.
	vals, err := godcgm.EntitiesGetLatestValues(entities, []godcgm.Short{godcgm.DCGM_FI_DEV_UUID}, godcgm.DCGM_FV_FLAG_LIVE_DATA)
	if err != nil {
		return nil, fmt.Errorf("reading GPU UUIDs: %w", err)
	}
	gpus := make([]GPU, 0, len(ids))
	for _, v := range vals {
		if v.Status != 0 || v.FieldType != godcgm.DCGM_FT_STRING {
			continue // a GPU without a UUID cannot be matched to NVML's
		}
		gpus = append(gpus, GPU{ID: v.EntityID, UUID: v.String()})
	}
	return gpus, nil
}

// Instances reads DCGM's MIG hierarchy and keeps its GPU instances.
func (l *goDCGM) Instances() ([]Instance, error) {
	h, err := godcgm.GetGPUInstanceHierarchy()
	if err != nil {
		return nil, err
	}
	var out []Instance
	for _, e := range h.EntityList[:min(h.Count, uint(len(h.EntityList)))] {
		if e.Entity.EntityGroupId != godcgm.FE_GPU_I || e.Parent.EntityGroupId != godcgm.FE_GPU {
			continue // a compute instance: its GPU instance is watched
		}
		out = append(out, Instance{ID: e.Entity.EntityId, GPU: e.Parent.EntityId, GPUUUID: e.Info.GpuUuid, GI: e.Info.NvmlInstanceId})
	}
	return out, nil
}

func (l *goDCGM) Watch(gpus []GPU, instances []Instance, fields []Field, period time.Duration) error {
	if l.watched {
		// A new inventory: the old groups go (their errors do not matter:
		// the new watch is what counts).
		_, _ = godcgm.DestroyGroup(l.group), godcgm.FieldGroupDestroy(l.fields)
		l.watched = false
	}
	name := fmt.Sprintf("gpu-agent-%d-%d", os.Getpid(), groupSeq.Add(1))
	group, err := godcgm.CreateGroup(name)
	if err != nil {
		return err
	}
	for _, g := range gpus {
		if err := godcgm.AddEntityToGroup(group, godcgm.FE_GPU, g.ID); err != nil {
			_ = godcgm.DestroyGroup(group)
			return fmt.Errorf("adding GPU %d to the group: %w", g.ID, err)
		}
	}
	for _, in := range instances {
		if err := godcgm.AddEntityToGroup(group, godcgm.FE_GPU_I, in.ID); err != nil {
			_ = godcgm.DestroyGroup(group)
			return fmt.Errorf("adding GPU instance %d (GPU %d, GI %d) to the group: %w", in.ID, in.GPU, in.GI, err)
		}
	}
	ids := make([]godcgm.Short, len(fields))
	for i, f := range fields {
		ids[i] = godcgm.Short(f)
	}
	fg, err := godcgm.FieldGroupCreate(name, ids)
	if err != nil {
		_ = godcgm.DestroyGroup(group)
		return err
	}
	l.group, l.fields, l.watched = group, fg, true
	// Keep a few periods of samples, at least a second: GetValuesSince is
	// called every period and takes the newest.
	keep := max(5*period, time.Second)
	return godcgm.WatchFieldsWithGroupEx(fg, group, period.Microseconds(), keep.Seconds(), 0)
}

func (l *goDCGM) Read(since time.Time) ([]Sample, time.Time, error) {
	vals, next, err := godcgm.GetValuesSince(l.group, l.fields, since)
	if err != nil {
		return nil, since, err
	}
	out := make([]Sample, 0, len(vals))
	for _, v := range vals {
		if (v.EntityGroupId != godcgm.FE_GPU && v.EntityGroupId != godcgm.FE_GPU_I) || v.Status != 0 {
			continue
		}
		s := Sample{Entity: Entity{Instance: v.EntityGroupId == godcgm.FE_GPU_I, ID: v.EntityID},
			Field: Field(v.FieldID), Value: Value{Time: time.UnixMicro(v.TS)}}
		switch v.FieldType {
		case godcgm.DCGM_FT_DOUBLE:
			f := v.Float64()
			if f >= godcgm.DCGM_FT_FP64_BLANK {
				continue // blank: no value yet, not supported, not permitted
			}
			s.Value.Float = f
		case godcgm.DCGM_FT_INT64:
			n := v.Int64()
			if n >= godcgm.DCGM_FT_INT64_BLANK {
				continue
			}
			s.Value.Int, s.Value.Integer = n, true
		default:
			continue
		}
		out = append(out, s)
	}
	return out, next, nil
}
