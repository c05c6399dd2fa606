package podresources_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gpu-telemetry/agent/internal/podresources"
)

func TestParseDeviceID(t *testing.T) {
	const u = "GPU-8e3f1c2a-0b4d-4e5f-9a6b-7c8d9e0f1a2b"
	const m = "MIG-4a2e2e4f-3c1d-5b6a-8f9e-0d1c2b3a4f5e"
	tests := []struct {
		id   string
		want podresources.DeviceRef
	}{
		{u, podresources.DeviceRef{Kind: podresources.RefGPU, UUID: u, Index: -1, GI: -1, CI: -1, Replica: -1}},
		{u + "::3", podresources.DeviceRef{Kind: podresources.RefGPU, UUID: u, Index: -1, GI: -1, CI: -1, Replica: 3}},
		{"GPU-ABC", podresources.DeviceRef{Kind: podresources.RefGPU, UUID: "GPU-ABC", Index: -1, GI: -1, CI: -1, Replica: -1}},
		{m, podresources.DeviceRef{Kind: podresources.RefMIG, UUID: m, Index: -1, GI: -1, CI: -1, Replica: -1}},
		{m + "::0", podresources.DeviceRef{Kind: podresources.RefMIG, UUID: m, Index: -1, GI: -1, CI: -1, Replica: 0}},
		{"MIG-" + u + "/7/0", podresources.DeviceRef{Kind: podresources.RefLegacyMIG, UUID: u, Index: -1, GI: 7, CI: 0, Replica: -1}},
		{"MIG-" + u + "/13/2::12", podresources.DeviceRef{Kind: podresources.RefLegacyMIG, UUID: u, Index: -1, GI: 13, CI: 2, Replica: 12}},
		{"nvidia0", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 0, GI: -1, CI: -1, Replica: -1}},
		{"nvidia15", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 15, GI: -1, CI: -1, Replica: -1}},
		{"nvidia0/vgpu1", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 0, GI: -1, CI: -1, Replica: 1}},
		{"nvidia0/gi7", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 0, GI: 7, CI: -1, Replica: -1}},
		{"nvidia0/gi7/vgpu0", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 0, GI: 7, CI: -1, Replica: 0}},
		{"nvidia2/gi7/ci1", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 2, GI: 7, CI: 1, Replica: -1}},
		{"nvidia1::4", podresources.DeviceRef{Kind: podresources.RefIndex, Index: 1, GI: -1, CI: -1, Replica: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := podresources.ParseDeviceID(tt.id)
			if err != nil {
				t.Fatalf("ParseDeviceID(%q) error: %v", tt.id, err)
			}
			if got != tt.want {
				t.Fatalf("ParseDeviceID(%q) = %+v, want %+v", tt.id, got, tt.want)
			}
			again, err := podresources.ParseDeviceID(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip through %q = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseDeviceIDErrors(t *testing.T) {
	for _, id := range []string{
		"", "GPU-", "MIG-", "GPU", "gpu-abc", "nvidia", "nvidiaX", "nvidia-1", "nvidia+1", "nvidia0/", "nvidia0/gi", "nvidia0/gix",
		"nvidia0/vgpu", "nvidia0/ci1", "nvidia0/vgpu1/gi2", "nvidia0/gi1/vgpu1::2", "nvidia0/gi1/extra",
		"MIG-GPU-x/1", "MIG-GPU-x", "MIG-GPU-/1/0", "MIG-GPU-x/1/0/2", "MIG-GPU-x/-1/0", "MIG-GPU-x/1/", "MIG-GPU-x/a/0",
		"GPU-abc::", "GPU-abc::-1", "GPU-abc::+1", "GPU-abc::x", "GPU-abc::1::2", "GPU-abc:1", "::1",
		"GPU-abc/0", "GPU-a b", "MIG-abc/1", "nvidia99999999999999999999", "GPU-x::99999999999999999999",
		"example.com/foo",
	} {
		ref, err := podresources.ParseDeviceID(id)
		if err == nil {
			t.Errorf("ParseDeviceID(%q) = %+v, want error", id, ref)
			continue
		}
		if !errors.Is(err, podresources.ErrInvalidDeviceID) {
			t.Errorf("ParseDeviceID(%q) error %v does not wrap ErrInvalidDeviceID", id, err)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "invalid device id") {
			t.Errorf("ParseDeviceID(%q) error %q: want lowercase prefix", id, msg)
		}
	}
}

func FuzzParseDeviceID(f *testing.F) {
	for _, s := range []string{
		"GPU-8e3f1c2a-0b4d-4e5f-9a6b-7c8d9e0f1a2b", "GPU-abc::3", "MIG-xyz::0", "MIG-GPU-abc/1/0", "MIG-GPU-abc/1/0::2",
		"nvidia0", "nvidia0/vgpu1", "nvidia0/gi7", "nvidia0/gi7/vgpu0", "nvidia0/gi7/ci0/vgpu3", "", "GPU-", "::", "nvidiaX",
		"MIG-GPU-x/1", "GPU-x::-1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		ref, err := podresources.ParseDeviceID(id)
		if err != nil {
			if !errors.Is(err, podresources.ErrInvalidDeviceID) {
				t.Fatalf("error %v does not wrap ErrInvalidDeviceID", err)
			}
			return
		}
		switch ref.Kind {
		case podresources.RefGPU:
			if !strings.HasPrefix(ref.UUID, "GPU-") || len(ref.UUID) == len("GPU-") || !strings.HasPrefix(id, ref.UUID) {
				t.Fatalf("gpu uuid %q does not round-trip from %q", ref.UUID, id)
			}
		case podresources.RefMIG:
			if !strings.HasPrefix(ref.UUID, "MIG-") || len(ref.UUID) == len("MIG-") || !strings.HasPrefix(id, ref.UUID) {
				t.Fatalf("mig uuid %q does not round-trip from %q", ref.UUID, id)
			}
		case podresources.RefLegacyMIG:
			if !strings.HasPrefix(id, "MIG-"+ref.UUID+"/") || ref.GI < 0 || ref.CI < 0 {
				t.Fatalf("legacy mig %+v does not round-trip from %q", ref, id)
			}
		case podresources.RefIndex:
			if ref.UUID != "" || ref.Index < 0 {
				t.Fatalf("index ref %+v from %q", ref, id)
			}
		default:
			t.Fatalf("unknown kind %v from %q", ref.Kind, id)
		}
		again, err := podresources.ParseDeviceID(ref.String())
		if err != nil || again != ref {
			t.Fatalf("ParseDeviceID(%q) = %+v, %v; want %+v (from %q)", ref.String(), again, err, ref, id)
		}
	})
}
