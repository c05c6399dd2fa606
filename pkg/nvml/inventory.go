// Package nvml samples NVIDIA GPUs through NVML and publishes one immutable
// telemetry.Snapshot per tick. It is the only package that imports go-nvml;
// everything it needs from the library goes through Library and nvml.Device,
// so tests run it over go-nvml's mocks and the simulated node over
// package sim.
package nvml

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-telemetry/agent/pkg/telemetry"
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

// device is one GPU's handle and the per-device state of the sampler. It
// is touched only by the sampler goroutine, except xid (atomic).
type device struct {
	telemetry.Device
	handle nvml.Device
	migs   []nvml.Device
	log    *slog.Logger

	supported FieldSupport
	engines   [telemetry.NumEngines]engineState
	memV1     bool               // GetMemoryInfo_v2 unsupported: use v1
	failing   telemetry.FieldSet // fields whose last read failed, for once-per-change logs
	errors    [telemetry.NumFields]uint64
	lost      bool
	xid       xidState
}

// FieldSupport is the set of fields a device answers.
type FieldSupport = telemetry.FieldSet

// discover reads the static inventory of every GPU. A GPU that cannot be
// opened is skipped with a warning so the others are still served.
func discover(lib Library, log *slog.Logger) ([]*device, error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, nvmlError("DeviceGetCount", ret)
	}
	devs := make([]*device, 0, n)
	for i := 0; i < n; i++ {
		d, err := openDevice(lib, i)
		if err != nil {
			log.Warn("skipping GPU that cannot be opened", "index", i, "err", err)
			continue
		}
		d.log = log.With("gpu", i, "uuid", d.UUID)
		devs = append(devs, d)
	}
	if len(devs) == 0 {
		return nil, ErrNoDevices
	}
	return devs, nil
}

func openDevice(lib Library, index int) (*device, error) {
	h, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return nil, nvmlError("DeviceGetHandleByIndex", ret)
	}
	d := &device{handle: h, supported: telemetry.AllFields}
	d.Index = index
	if d.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return nil, nvmlError("GetUUID", ret)
	}
	if d.Name, ret = h.GetName(); ret != nvml.SUCCESS {
		return nil, nvmlError("GetName", ret)
	}
	if pci, ret := h.GetPciInfo(); ret == nvml.SUCCESS {
		d.PCIBusID = busID(pci.BusId)
	}
	d.Minor = index
	if minor, ret := h.GetMinorNumber(); ret == nvml.SUCCESS {
		d.Minor = minor
	}
	if mem, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryTotal = mem.Total
	}
	if current, _, ret := h.GetMigMode(); ret == nvml.SUCCESS && current == nvml.DEVICE_MIG_ENABLE {
		d.MIGEnabled = true
		d.MIG, d.migs = openMIGDevices(h)
	}
	return d, nil
}

// openMIGDevices lists the MIG instances of a MIG-enabled GPU. Slots with
// no instance answer NOT_FOUND and are skipped.
func openMIGDevices(h nvml.Device) ([]telemetry.MIGDevice, []nvml.Device) {
	max, ret := h.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, nil
	}
	var infos []telemetry.MIGDevice
	var handles []nvml.Device
	for i := 0; i < max; i++ {
		m, ret := h.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		info := telemetry.MIGDevice{GI: -1, CI: -1}
		if info.UUID, ret = m.GetUUID(); ret != nvml.SUCCESS {
			continue
		}
		if gi, ret := m.GetGpuInstanceId(); ret == nvml.SUCCESS {
			info.GI = gi
		}
		if ci, ret := m.GetComputeInstanceId(); ret == nvml.SUCCESS {
			info.CI = ci
		}
		info.Profile = migProfile(m)
		infos = append(infos, info)
		handles = append(handles, m)
	}
	return infos, handles
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
