// Package nvml samples NVIDIA GPUs through NVML and publishes one immutable
// telemetry.Snapshot per tick. It is the only package that imports go-nvml;
// everything it needs from the library goes through three narrow
// interfaces of its own, Library, Device and EventSet (the calls the
// sampler makes), so tests run it over go-nvml's mocks (FromInterface)
// and the simulated node (package sim) implements only what it is asked.
package nvml

import (
	"errors"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/internal/nvml/calls"
)

// Library, Device and EventSet are the calls the sampler makes
// (package calls): NewLibrary gives the real NVML, FromInterface adapts
// any nvml.Interface (go-nvml's mocks), and the simulated node implements
// them itself.
type (
	Library  = calls.Library
	Device   = calls.Device
	EventSet = calls.EventSet
)

var _ Device = nvml.Device(nil)

// FromInterface adapts an nvml.Interface: the real library, or go-nvml's
// mocks in tests.
func FromInterface(l nvml.Interface) Library { return library{l} }

type library struct{ nvml.Interface }

func (l library) DeviceGetHandleByIndex(i int) (Device, nvml.Return) {
	d, ret := l.Interface.DeviceGetHandleByIndex(i)
	if d == nil {
		return nil, ret
	}
	return d, ret
}

func (l library) DeviceGetHandleByUUID(uuid string) (Device, nvml.Return) {
	d, ret := l.Interface.DeviceGetHandleByUUID(uuid)
	if d == nil {
		return nil, ret
	}
	return d, ret
}

func (l library) EventSetCreate() (EventSet, nvml.Return) {
	set, ret := l.Interface.EventSetCreate()
	if set == nil {
		return nil, ret
	}
	return eventSet{set}, ret
}

type eventSet struct{ nvml.EventSet }

func (s eventSet) Register(d Device, types uint64) nvml.Return {
	nd, ok := d.(nvml.Device)
	if !ok {
		return nvml.ERROR_INVALID_ARGUMENT // a device of another library
	}
	return nd.RegisterEvents(types, s.EventSet)
}

// ErrLibraryNotFound means libnvidia-ml.so.1 could not be loaded: no NVIDIA
// driver on this machine, or the library is not mounted into the container.
var ErrLibraryNotFound = errors.New("NVML library (libnvidia-ml.so.1) not found")

// ErrNoDevices means NVML initialised but reported no usable GPU.
var ErrNoDevices = errors.New("NVML reports no usable GPU")

// NewLibrary returns the real NVML. path overrides where libnvidia-ml.so.1
// is loaded from; empty means the dynamic loader's default.
func NewLibrary(path string) Library {
	if path != "" {
		return FromInterface(nvml.New(nvml.WithLibraryPath(path)))
	}
	return FromInterface(nvml.New())
}

// isNotSupported reports whether ret means "this device has no such field",
// as opposed to a failure worth counting.
func isNotSupported(ret nvml.Return) bool {
	return ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_FUNCTION_NOT_FOUND
}

// nvmlError turns a non-success Return into an error naming the call.
func nvmlError(call string, ret nvml.Return) error {
	return fmt.Errorf("%s: %w", call, ret)
}

// migProfile names a MIG instance the way dcgm-exporter's GPU_I_PROFILE
// does ("1g.5gb"): from the device name NVML gives MIG instances
// ("NVIDIA A100-SXM4-40GB MIG 1g.5gb"), else from its attributes.
func migProfile(m Device) string {
	if name, ret := m.GetName(); ret == nvml.SUCCESS {
		if i := strings.LastIndex(name, " MIG "); i >= 0 {
			return strings.TrimSpace(name[i+len(" MIG "):])
		}
	}
	if attr, ret := m.GetAttributes(); ret == nvml.SUCCESS {
		return fmt.Sprintf("%dg.%dgb", attr.GpuInstanceSliceCount, (attr.MemorySizeMB+1023)/1024)
	}
	return ""
}

// busID converts NVML's NUL-terminated C string.
func busID(raw [32]int8) string {
	var b strings.Builder
	for _, c := range raw {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c)) // #nosec G115 -- a C char of NVML's, copied as is
	}
	return b.String()
}
