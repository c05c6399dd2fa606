package agent

import (
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// DefaultHostengineAddress is nv-hostengine's default listening address.
const DefaultHostengineAddress = "localhost:5555"

// applyRemoteHostengine makes dcgm-exporter's -r (or
// $DCGM_REMOTE_HOSTENGINE_INFO) select --dcgm=standalone at its address,
// as it does in dcgm-exporter; the agent's own flags, where given, must
// agree with it.
func (c *Config) applyRemoteHostengine(fs *flag.FlagSet) error {
	if c.dcgmRemote == "" {
		return nil
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if c.Simulate > 0 && !given["dcgm"] {
		// A dcgm-exporter DaemonSet tried on the simulated node: warn as
		// for the options with no meaning here, rather than fail.
		c.notices = append(c.notices, notice{warn: true, msg: "ignoring a dcgm-exporter option that has no meaning here",
			args: []any{"option", "--remote-hostengine-info", "value", c.dcgmRemote, "why", "the simulated node has no DCGM"}})
		return nil
	}
	if given["dcgm"] && c.DCGM != dcgm.Standalone {
		return fmt.Errorf("--dcgm=%s and dcgm-exporter's --remote-hostengine-info=%s say different things: the remote host engine needs --dcgm=standalone", c.DCGM, c.dcgmRemote)
	}
	if given["dcgm.hostengine-address"] && c.DCGMAddress != c.dcgmRemote {
		return fmt.Errorf("--dcgm.hostengine-address=%s and dcgm-exporter's --remote-hostengine-info=%s say different things: give one of them", c.DCGMAddress, c.dcgmRemote)
	}
	c.DCGM, c.DCGMAddress = dcgm.Standalone, c.dcgmRemote
	return nil
}

// validateDCGM checks the DCGM flags, each error naming its flag.
func (c *Config) validateDCGM() []error {
	var errs []error
	if c.DCGM == dcgm.Off {
		return nil
	}
	if c.Simulate > 0 {
		errs = append(errs, fmt.Errorf("--dcgm=%s: not with --simulate (the simulated node has no DCGM)", c.DCGM))
	}
	if c.DCGM != dcgm.Standalone {
		return errs
	}
	a := c.DCGMAddress
	switch {
	case a == "":
		errs = append(errs, fmt.Errorf(`--dcgm.hostengine-address="": must be host:port or a unix socket path with --dcgm=standalone`))
	case strings.HasPrefix(a, "/"), strings.HasPrefix(a, "unix:///"):
		if len(strings.TrimPrefix(a, "unix://")) > 107 {
			errs = append(errs, fmt.Errorf("--dcgm.hostengine-address=%s: unix socket paths are limited to 107 bytes", a))
		}
	default:
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("--dcgm.hostengine-address=%s: want host:port (nv-hostengine listens on port 5555) or an absolute unix socket path", a))
		}
	}
	return errs
}

// profilingFields are the snapshot's fields of the DCGM fields the
// Source watches (dcgm.ProfilingFields), in the same units.
var profilingFields = map[dcgm.Field]telemetry.Field{
	dcgm.ProfGrEngineActive:   telemetry.ProfGrEngineActive,
	dcgm.ProfSMActive:         telemetry.ProfSMActive,
	dcgm.ProfSMOccupancy:      telemetry.ProfSMOccupancy,
	dcgm.ProfPipeTensorActive: telemetry.ProfTensorActive,
	dcgm.ProfDRAMActive:       telemetry.ProfDRAMActive,
	dcgm.ProfPCIeTxBytes:      telemetry.ProfPCIeTX,
	dcgm.ProfPCIeRxBytes:      telemetry.ProfPCIeRX,
}

// staleDCGMIntervals is how many DCGM intervals old a value may be and
// still be served: DCGM stops updating a field it cannot read any more
// (the profiling module lost, a GPU that went away) without saying so.
const staleDCGMIntervals = 3

// dcgmExtra hands the sampler DCGM's latest values (nvml.ExtraSource):
// the sampler stays the one writer of the snapshot, and nvml knows
// nothing of DCGM. A field is supported while DCGM is up and has a
// current value of it for the GPU; absent, not zero, otherwise.
type dcgmExtra struct {
	latest func() *dcgm.Reading // dcgm.Source.Latest: an atomic load
	maxAge time.Duration
	now    func() time.Time
}

var _ nvml.ExtraSource = dcgmExtra{}

// NewDCGMExtra is the sampler's extra source over src: what the agent
// wires, for tests that assemble the stages themselves.
func NewDCGMExtra(src *dcgm.Source) nvml.ExtraSource { return newDCGMExtra(src) }

func newDCGMExtra(src *dcgm.Source) dcgmExtra {
	return dcgmExtra{latest: src.Latest, maxAge: staleDCGMIntervals * src.Interval(), now: time.Now}
}

// Fill sets the GPU's profiling fields that DCGM has a current value of.
func (x dcgmExtra) Fill(uuid string, r *telemetry.Reading, supported *telemetry.FieldSet) {
	if latest := x.latest(); latest != nil { // else DCGM is down, or not up yet
		x.fill(latest.GPUs[uuid], r, supported)
	}
}

// FillInstance sets the MIG instance's profiling fields that DCGM has a
// current value of: its GPU instance entity's (DCGM's per-instance
// activity, which NVML does not report), matched by its GPU's UUID and
// GPU instance ID.
func (x dcgmExtra) FillInstance(gpuUUID string, gi int, r *telemetry.Reading) {
	if latest := x.latest(); latest != nil {
		x.fill(latest.Instances[dcgm.InstanceKey{GPU: gpuUUID, GI: gi}], r, nil)
	}
}

func (x dcgmExtra) fill(values map[dcgm.Field]dcgm.Value, r *telemetry.Reading, supported *telemetry.FieldSet) {
	now := x.now()
	for f, v := range values {
		tf, ok := profilingFields[f]
		if !ok || now.Sub(v.Time) > x.maxAge {
			continue
		}
		r.Set(tf, v.Number())
		if supported != nil {
			*supported = supported.With(tf)
		}
	}
}
