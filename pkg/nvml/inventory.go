// Package nvml samples NVIDIA GPUs through NVML and publishes one immutable
// telemetry.Snapshot per tick. It is the only package that imports go-nvml;
// everything it needs from the library goes through Library and nvml.Device,
// so tests run it over go-nvml's mocks and the simulated node over
// package sim.
package nvml

import (
	"errors"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Library is the part of nvml.Interface the sampler uses. nvml.New() and
// go-nvml's mock.Interface both satisfy it.
type Library interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(int) (nvml.Device, nvml.Return)
	EventSetCreate() (nvml.EventSet, nvml.Return)
	SystemGetDriverVersion() (string, nvml.Return)
}

var _ Library = nvml.Interface(nil)

// ErrLibraryNotFound means libnvidia-ml.so.1 could not be loaded: no NVIDIA
// driver on this machine, or the library is not mounted into the container.
var ErrLibraryNotFound = errors.New("NVML library (libnvidia-ml.so.1) not found")

// ErrNoDevices means NVML initialised but reported no usable GPU.
var ErrNoDevices = errors.New("NVML reports no usable GPU")

// NewLibrary returns the real NVML. path overrides where libnvidia-ml.so.1
// is loaded from; empty means the dynamic loader's default.
func NewLibrary(path string) Library {
	if path != "" {
		return nvml.New(nvml.WithLibraryPath(path))
	}
	return nvml.New()
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
func migProfile(m nvml.Device) string {
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
		b.WriteByte(byte(c))
	}
	return b.String()
}
