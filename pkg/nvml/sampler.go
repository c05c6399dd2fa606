package nvml

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/pkg/telemetry"
)

// MinInterval is the shortest sampling interval accepted. NVML's own
// utilization counters refresh every 1/6 s at best; sampling much faster
// costs CPU and buys nothing (buffered samples are drained anyway).
const MinInterval = 100 * time.Millisecond

// Config configures a Sampler.
type Config struct {
	Interval time.Duration // time between ticks; at least MinInterval
	Window   time.Duration // span of the utilization windows
	Logger   *slog.Logger
	// TickObserver, if set, is told each tick's duration in seconds (a
	// Prometheus histogram, say), so every tick counts, not only the
	// ones a scrape happens to see.
	TickObserver interface{ Observe(float64) }
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// Sampler owns NVML: it reads every GPU at a fixed interval on its own
// goroutine and publishes one immutable snapshot per tick. Readers call
// Latest and never wait for it, nor it for them.
type Sampler struct {
	lib     Library
	cfg     Config
	log     *slog.Logger
	devices []*device
	static  []telemetry.Device
	store   telemetry.Store

	// Touched only by the goroutine that ticks.
	seq, ticks, missed uint64
	lastTick           time.Time

	closeOnce sync.Once
}

// Open initialises NVML, reads the inventory and probes, once per device
// and field, what the device supports. The caller must Close the sampler.
func Open(lib Library, cfg Config) (*Sampler, error) {
	if cfg.Interval < MinInterval {
		return nil, fmt.Errorf("sampling interval %s is below the minimum %s", cfg.Interval, MinInterval)
	}
	if cfg.Window <= 0 {
		cfg.Window = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, ErrLibraryNotFound
		}
		return nil, fmt.Errorf("initialising NVML: %w", ret)
	}
	s := &Sampler{lib: lib, cfg: cfg, log: cfg.Logger}
	devs, err := discover(lib, cfg.Logger)
	if err != nil {
		lib.Shutdown()
		return nil, err
	}
	s.devices = devs
	for _, d := range devs {
		for e := range d.engines {
			d.engines[e].ring = newRing(ringCapacity(cfg.Window))
		}
		s.probe(d)
		s.static = append(s.static, d.Device)
	}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		s.log.Info("NVML initialised", "driver", v, "gpus", len(devs))
	}
	return s, nil
}

// probe asks each field once and records those the device does not
// support, so a tick never asks again (an H100 has no NVENC; a
// MIG-enabled GPU reports no utilization).
func (s *Sampler) probe(d *device) {
	if c, ret := d.handle.GetEncoderCapacity(nvml.ENCODER_QUERY_H264); isNotSupported(ret) || (ret == nvml.SUCCESS && c == 0) {
		d.supported &^= encoderFields
		d.engines[telemetry.EngineEncoder].unsupported = true
	}
	var scratch telemetry.Reading
	for _, r := range readers {
		if d.supported&r.fields == 0 {
			continue
		}
		if ret := r.read(d, &scratch); isNotSupported(ret) {
			d.supported &^= r.fields
		}
	}
	// Reserved memory exists only in v2; say so rather than report 0.
	if d.memV1 {
		d.supported = d.supported.Without(telemetry.FBReserved)
	}
	var missing []string
	for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
		if !d.supported.Has(f) {
			missing = append(missing, f.String())
		}
	}
	if len(missing) > 0 {
		d.log.Info("fields not supported by this GPU; left out", "fields", missing)
	}
}

// Devices returns the static inventory.
func (s *Sampler) Devices() []telemetry.Device { return s.static }

// Latest returns the latest snapshot, or nil before the first tick.
func (s *Sampler) Latest() *telemetry.Snapshot { return s.store.Latest() }

// Interval returns the sampling interval.
func (s *Sampler) Interval() time.Duration { return s.cfg.Interval }

// Run ticks until ctx is done. The first tick happens at once.
func (s *Sampler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.watchXID(ctx) })
	defer wg.Wait()

	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	s.Tick()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.Tick()
		}
	}
}

// Tick samples every device once and publishes the snapshot. It must not
// be called concurrently with itself; Run calls it.
func (s *Sampler) Tick() {
	start := s.cfg.Now()
	if !s.lastTick.IsZero() {
		if gap := start.Sub(s.lastTick); gap > s.cfg.Interval*3/2 {
			s.missed += uint64(gap/s.cfg.Interval) - 1
		}
	}
	s.lastTick = start
	s.seq++
	s.ticks++

	snap := &telemetry.Snapshot{
		Seq:     s.seq,
		Time:    start,
		Devices: s.static,
		States:  make([]telemetry.DeviceState, len(s.devices)),
		Window:  s.cfg.Window,
	}
	for i, d := range s.devices {
		d.sample(start, s.cfg.Window, &snap.States[i])
	}
	snap.Duration = s.cfg.Now().Sub(start)
	snap.Ticks, snap.MissedTicks = s.ticks, s.missed
	s.store.Publish(snap)
	if s.cfg.TickObserver != nil {
		s.cfg.TickObserver.Observe(snap.Duration.Seconds())
	}
}

// sample reads one device into st. A lost GPU is reported as such and
// never asked again; the other GPUs are unaffected.
func (d *device) sample(now time.Time, window time.Duration, st *telemetry.DeviceState) {
	st.XID = d.xid.p.Load()
	defer func() {
		st.Supported = d.supported
		st.Errors = d.errors
		st.Lost = d.lost
	}()
	if d.lost {
		return
	}
	for _, r := range readers {
		if d.supported&r.fields == 0 {
			continue
		}
		ret := r.read(d, &st.Reading)
		if !d.handleReturn(r, ret) {
			return
		}
	}
	if len(d.migs) > 0 {
		st.MIG = make([]telemetry.Reading, len(d.migs))
		for i, m := range d.migs {
			var v1 bool
			if ret := readMemoryOf(m, &v1, &st.MIG[i]); ret == nvml.ERROR_GPU_IS_LOST {
				d.markLost(ret)
				return
			}
		}
	}
	if ret := d.drainSamples(now, window, st); ret == nvml.ERROR_GPU_IS_LOST {
		d.markLost(ret)
	}
}

// handleReturn records what a read's result means for the device and
// reports whether sampling should go on.
func (d *device) handleReturn(r reader, ret nvml.Return) bool {
	switch {
	case ret == nvml.SUCCESS:
		if d.failing&r.fields != 0 {
			d.failing &^= r.fields
			d.log.Info("read recovered", "call", r.call)
		}
	case isNotSupported(ret):
		// Probing found it supported, but the device says otherwise now
		// (a MIG mode change, say): believe it and stop asking.
		d.supported &^= r.fields
		d.log.Info("field no longer supported; left out", "call", r.call)
	case ret == nvml.ERROR_GPU_IS_LOST:
		d.markLost(ret)
		return false
	default:
		for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
			if r.fields.Has(f) {
				d.errors[f]++
			}
		}
		if d.failing&r.fields == 0 {
			d.failing |= r.fields
			d.log.Warn("read failed", "call", r.call, "err", ret)
		}
	}
	return true
}

func (d *device) markLost(ret nvml.Return) {
	d.lost = true
	d.log.Error("GPU lost; no longer sampled", "err", ret)
}

// Close shuts NVML down. Call it after Run has returned.
func (s *Sampler) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
			err = fmt.Errorf("shutting NVML down: %w", ret)
		}
	})
	return err
}

// IsLibraryNotFound reports whether err means NVML could not be loaded.
func IsLibraryNotFound(err error) bool { return errors.Is(err, ErrLibraryNotFound) }
