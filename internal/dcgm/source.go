package dcgm

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"
)

// Mode is how the agent reaches DCGM (--dcgm).
type Mode int

const (
	Off        Mode = iota // DCGM is not used
	Embedded               // a host engine inside the agent's process
	Standalone             // a running nv-hostengine, at an address
)

// ParseMode reads --dcgm.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "off":
		return Off, nil
	case "embedded":
		return Embedded, nil
	case "standalone":
		return Standalone, nil
	}
	return Off, fmt.Errorf(`must be "off", "embedded" or "standalone"`)
}

func (m Mode) String() string {
	switch m {
	case Embedded:
		return "embedded"
	case Standalone:
		return "standalone"
	}
	return "off"
}

// Field is a DCGM field ID.
type Field uint16

// The profiling fields the Source watches (dcgm_fields.h).
const (
	ProfGrEngineActive   Field = 1001 // DCGM_FI_PROF_GR_ENGINE_ACTIVE, ratio
	ProfSMActive         Field = 1002 // DCGM_FI_PROF_SM_ACTIVE, ratio
	ProfSMOccupancy      Field = 1003 // DCGM_FI_PROF_SM_OCCUPANCY, ratio
	ProfPipeTensorActive Field = 1004 // DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, ratio
	ProfDRAMActive       Field = 1005 // DCGM_FI_PROF_DRAM_ACTIVE, ratio
	ProfPCIeTxBytes      Field = 1009 // DCGM_FI_PROF_PCIE_TX_BYTES, bytes per second
	ProfPCIeRxBytes      Field = 1010 // DCGM_FI_PROF_PCIE_RX_BYTES, bytes per second
)

// ProfilingFields are the fields watched, in this order.
var ProfilingFields = []Field{ProfGrEngineActive, ProfSMActive, ProfSMOccupancy, ProfPipeTensorActive,
	ProfDRAMActive, ProfPCIeTxBytes, ProfPCIeRxBytes}

// MinInterval is DCGM's floor for a watch's update period.
const MinInterval = 100 * time.Millisecond

// Value is a field's latest value, with DCGM's timestamp of it.
type Value struct {
	Float   float64
	Int     int64
	Integer bool // Int holds the value (DCGM_FT_INT64), else Float
	Time    time.Time
}

// Number is the value as a float64.
func (v Value) Number() float64 {
	if v.Integer {
		return float64(v.Int)
	}
	return v.Float
}

// Reading is the latest value of each field of each GPU, by GPU UUID,
// and of each MIG GPU instance, by its GPU's UUID and GPU instance ID. It
// is immutable once published.
type Reading struct {
	Time      time.Time // when it was read
	GPUs      map[string]map[Field]Value
	Instances map[InstanceKey]map[Field]Value
}

// InstanceKey names a MIG GPU instance as NVML does: by its GPU's UUID
// and its GPU instance ID (telemetry.MIGDevice.GI).
type InstanceKey struct {
	GPU string
	GI  int
}

// Options configure a Source.
type Options struct {
	Mode    Mode
	Address string // Standalone: host:port, or a unix socket path (absolute or unix://)
	// Interval is the watch's period and the time between two reads;
	// raised to MinInterval.
	Interval time.Duration
	// CallTimeout bounds each DCGM call; a call past it is reported
	// (reason "timeout") and left to finish on its own. Default 10 s
	// (starting an embedded host engine takes seconds).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between two connection
	// attempts, doubling from one to the other. Defaults 1 s and 1 min.
	MinBackoff, MaxBackoff time.Duration
	// Relist is how often the GPUs and MIG instances are listed again
	// while connected, so that a GPU DCGM lists late (hot-plugged, or
	// back after a driver reload) and a MIG reconfiguration are watched
	// without a reconnect. Default 1 min (NVML's MIG rescan's).
	Relist time.Duration
	Logger *slog.Logger
}

// closeTimeout bounds the disconnect on shutdown, so that a hung call or
// host engine never holds up SIGTERM.
const closeTimeout = time.Second

// Source connects to DCGM, watches the profiling fields of every GPU and
// reads them every interval on its own goroutine (Run); Latest takes the
// newest values without blocking.
type Source struct {
	opts    Options
	lib     library
	calls   *caller
	log     *slog.Logger
	metrics *Metrics

	latest atomic.Pointer[Reading]

	// Owned by Run.
	open      bool       // Connect may have succeeded: Disconnect before the next
	gpus      []GPU      // watched on the current connection
	instances []Instance // watched on the current connection
	reason    string     // of the current failure; "" while up
}

// New returns a Source over go-dcgm. Nothing is loaded until Run.
func New(opts Options) *Source {
	return newSource(opts, &goDCGM{})
}

func newSource(opts Options, lib library) *Source {
	if opts.Interval < MinInterval {
		opts.Interval = MinInterval
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(time.Minute, opts.MinBackoff)
	}
	if opts.Relist <= 0 {
		opts.Relist = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{opts: opts, lib: lib, calls: newCaller(), log: opts.Logger, metrics: newMetrics()}
}

// Metrics is the Source's own metrics, for the agent's registry.
func (s *Source) Metrics() *Metrics { return s.metrics }

// Interval is the time between two reads (Options.Interval, at least
// MinInterval).
func (s *Source) Interval() time.Duration { return s.opts.Interval }

// Latest is the newest reading; nil while DCGM is not up.
func (s *Source) Latest() *Reading { return s.latest.Load() }

// Run connects, watches and reads until ctx ends, reconnecting with
// backoff after a failure. It returns nil when ctx ends, within
// closeTimeout however DCGM behaves.
func (s *Source) Run(ctx context.Context) error {
	defer s.close()
	backoff := s.opts.MinBackoff
	for {
		err := s.connect(ctx)
		if err == nil {
			backoff = s.opts.MinBackoff
			err = s.read(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		s.fail(err, backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.opts.MaxBackoff)
	}
}

// failure is a failed call with the phase it failed in.
type failure struct {
	p   phase
	err error
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func (s *Source) connect(ctx context.Context) error {
	if s.open {
		// Shutdown then Init is go-dcgm's reconnect; a hung call still
		// in flight makes this wait (and time out) rather than race it.
		err := s.calls.do(ctx, s.opts.CallTimeout, s.lib.Disconnect)
		if err != nil && ctx.Err() == nil {
			s.log.Debug("disconnecting from DCGM", "err", err)
		}
		if isTimeout(err) {
			return &failure{phaseConnect, fmt.Errorf("disconnecting: %w", err)}
		}
		s.open = false
	}
	err := s.calls.do(ctx, s.opts.CallTimeout, func() error { return s.lib.Connect(s.opts.Mode, s.opts.Address) })
	if err != nil && !isTimeout(err) {
		return &failure{phaseConnect, err}
	}
	s.open = true // a timed-out Connect may yet succeed
	if err != nil {
		return &failure{phaseConnect, fmt.Errorf("connecting: %w", err)}
	}
	gpus, instances, err := s.list(ctx)
	if err != nil {
		return &failure{phaseConnect, err}
	}
	return s.watch(ctx, phaseConnect, gpus, instances)
}

// list lists the GPUs and their MIG instances. A MIG hierarchy DCGM
// cannot give (an old driver, a GPU without MIG answering an error) costs
// the instances only; a call that hangs fails the whole.
func (s *Source) list(ctx context.Context) ([]GPU, []Instance, error) {
	var gpus []GPU
	err := s.calls.do(ctx, s.opts.CallTimeout, func() (err error) {
		gpus, err = s.lib.GPUs()
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if len(gpus) == 0 {
		return nil, nil, fmt.Errorf("DCGM lists no GPU: %w", errNoGPU)
	}
	var instances []Instance
	err = s.calls.do(ctx, s.opts.CallTimeout, func() (err error) {
		instances, err = s.lib.Instances()
		return err
	})
	switch {
	case isTimeout(err):
		return nil, nil, fmt.Errorf("reading the MIG hierarchy: %w", err)
	case err != nil:
		s.log.Debug("DCGM gives no MIG hierarchy: MIG instances have no profiling fields", "err", err)
		instances = nil
	}
	return gpus, instances, nil
}

// watch watches the profiling fields of gpus and instances, in place of
// any earlier watch.
func (s *Source) watch(ctx context.Context, p phase, gpus []GPU, instances []Instance) error {
	err := s.calls.do(ctx, s.opts.CallTimeout, func() error {
		return s.lib.Watch(gpus, instances, ProfilingFields, s.opts.Interval)
	})
	if err != nil {
		return &failure{p, fmt.Errorf("watching the profiling fields: %w", err)}
	}
	s.gpus, s.instances = gpus, instances
	return nil
}

// relist lists the GPUs and MIG instances again and, when they changed,
// watches the new ones; changed says whether it did.
func (s *Source) relist(ctx context.Context) (changed bool, err error) {
	gpus, instances, err := s.list(ctx)
	if err != nil {
		return false, &failure{phaseRead, err}
	}
	if slices.Equal(gpus, s.gpus) && slices.Equal(instances, s.instances) {
		return false, nil
	}
	s.log.Info("DCGM's GPUs or MIG instances changed; watching the new ones",
		"gpus", len(gpus), "was_gpus", len(s.gpus), "instances", len(instances), "was_instances", len(s.instances))
	return true, s.watch(ctx, phaseRead, gpus, instances)
}

// read reads every interval until a read fails or ctx ends; the first
// read is at once, so that DCGM reports up only once a read has passed.
func (s *Source) read(ctx context.Context) error {
	var since time.Time // zero: everything kept
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	relisted := time.Now()
	for {
		if time.Since(relisted) >= s.opts.Relist {
			relisted = time.Now()
			changed, err := s.relist(ctx)
			if err != nil {
				return err
			}
			if changed {
				since = time.Time{} // a new group: everything it kept
			}
		}
		var samples []Sample
		var next time.Time
		err := s.calls.do(ctx, s.opts.CallTimeout, func() (err error) {
			samples, next, err = s.lib.Read(since)
			return err
		})
		if err != nil {
			return &failure{phaseRead, err}
		}
		since = next
		s.publish(samples)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// publish merges samples into a copy of the latest reading (a field with
// no new sample keeps its last value and timestamp) and marks DCGM up.
func (s *Source) publish(samples []Sample) {
	uuid := make(map[uint]string, len(s.gpus))
	for _, g := range s.gpus {
		uuid[g.ID] = g.UUID
	}
	inst := make(map[uint]InstanceKey, len(s.instances))
	for _, in := range s.instances {
		inst[in.ID] = InstanceKey{GPU: in.GPUUUID, GI: int(in.GI)}
	}
	r := &Reading{Time: time.Now(), GPUs: map[string]map[Field]Value{}}
	if old := s.latest.Load(); old != nil {
		// Only what is still watched: a GPU or instance gone with a
		// relist takes its values with it.
		for u, fs := range old.GPUs {
			if slices.ContainsFunc(s.gpus, func(g GPU) bool { return g.UUID == u }) {
				r.GPUs[u] = maps.Clone(fs)
			}
		}
		for k, fs := range old.Instances {
			if slices.ContainsFunc(s.instances, func(in Instance) bool { return in.GPUUUID == k.GPU && int(in.GI) == k.GI }) {
				if r.Instances == nil {
					r.Instances = map[InstanceKey]map[Field]Value{}
				}
				r.Instances[k] = maps.Clone(fs)
			}
		}
	}
	for _, sm := range samples {
		var fs map[Field]Value
		if sm.Entity.Instance {
			k, ok := inst[sm.Entity.ID]
			if !ok {
				continue
			}
			if r.Instances == nil {
				r.Instances = map[InstanceKey]map[Field]Value{}
			}
			if fs = r.Instances[k]; fs == nil {
				fs = map[Field]Value{}
				r.Instances[k] = fs
			}
		} else {
			u, ok := uuid[sm.Entity.ID]
			if !ok {
				continue
			}
			if fs = r.GPUs[u]; fs == nil {
				fs = map[Field]Value{}
				r.GPUs[u] = fs
			}
		}
		if cur, ok := fs[sm.Field]; !ok || !sm.Value.Time.Before(cur.Time) {
			fs[sm.Field] = sm.Value
		}
	}
	s.latest.Store(r)
	if s.reason != "" || !s.metrics.isUp() {
		s.log.Info("DCGM is up", "mode", s.opts.Mode.String(), "gpus", len(s.gpus), "mig_instances", len(s.instances))
		s.reason = ""
	}
	s.metrics.setUp(true)
}

// fail reports a failure: the reason counted, DCGM down, the latest
// reading dropped (readers see no values rather than stale ones), and a
// log line when the reason changes.
func (s *Source) fail(err error, retry time.Duration) {
	p := phaseConnect
	if f, ok := err.(*failure); ok {
		p = f.p
	}
	reason := classify(p, err)
	s.metrics.count(reason)
	s.metrics.setUp(false)
	s.latest.Store(nil)
	if reason == s.reason {
		s.log.Debug("DCGM still down", "reason", reason, "err", err, "retry_in", retry)
		return
	}
	s.reason = reason
	s.log.Warn("DCGM is down; NVML's metrics carry on", "reason", reason, "err", err, "retry_in", retry)
}

// close disconnects within closeTimeout, or leaves it with a log line when
// a call is still in flight.
func (s *Source) close() {
	s.metrics.setUp(false)
	s.latest.Store(nil)
	if !s.open {
		return
	}
	err := s.calls.do(context.Background(), closeTimeout, s.lib.Disconnect)
	switch {
	case isTimeout(err):
		s.log.Info("not disconnecting from DCGM: a call is still in flight")
	case err != nil:
		s.log.Debug("disconnecting from DCGM", "err", err)
	}
	s.open = false
}
