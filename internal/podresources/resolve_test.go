package podresources_test

import (
	"testing"

	"github.com/gpu-telemetry/agent/internal/podresources"
)

func TestResolver(t *testing.T) {
	r := podresources.NewResolver(testInventory())
	tests := []struct {
		id     string
		want   string
		wantOK bool
	}{
		{gpu0, gpu0, true},
		{gpu1 + "::0", gpu1, true},
		{gpu1 + "::7", gpu1, true},
		{gpu2, gpu2, true}, // a MIG-enabled GPU is still a GPU
		{migA, migA, true},
		{migB + "::2", migB, true},
		{"MIG-" + gpu2 + "/1/0", migA, true},
		{"MIG-" + gpu2 + "/7/1", migB, true},
		{"MIG-" + gpu2 + "/7/0::1", migC, true},
		{"MIG-" + gpu2 + "/9/0", "", false},
		{"MIG-" + gpu0 + "/1/0", "", false}, // gpu0 has no MIG
		{"nvidia0", gpu0, true},
		{"nvidia3", gpu3, true},
		{"nvidia1/vgpu1", gpu1, true},
		{"nvidia2/gi1", migA, true},
		{"nvidia2/gi7", migC, true}, // lowest ci of gi 7
		{"nvidia2/gi7/ci1", migB, true},
		{"nvidia2/gi7/vgpu0", migC, true},
		{"nvidia2/gi8", "", false},
		{"nvidia0/gi0", "", false},
		{"nvidia9", "", false},
		{"GPU-99999999-9999-4999-8999-999999999999", "", false},
		{"MIG-99999999-9999-5999-8999-999999999999", "", false},
		{"MIG-" + "GPU-99999999-9999-4999-8999-999999999999/1/0", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			ref, err := podresources.ParseDeviceID(tt.id)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := r.Resolve(ref)
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("Resolve(%q) = %q, %v; want %q, %v", tt.id, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestResolverIgnoresZeroValues(t *testing.T) {
	r := podresources.NewResolver([]podresources.GPU{{UUID: "", Minor: 0, MIG: []podresources.MIGDevice{{UUID: "", GI: 1, CI: 0}}}})
	for _, ref := range []podresources.DeviceRef{
		{}, // zero kind
		{Kind: podresources.RefIndex, Index: 0, GI: -1, CI: -1, Replica: -1},
		{Kind: podresources.RefLegacyMIG, UUID: "", GI: 1, CI: 0, Replica: -1},
	} {
		if got, ok := r.Resolve(ref); ok {
			t.Errorf("Resolve(%+v) = %q, true; want false for an inventory entry without uuid", ref, got)
		}
	}
}
