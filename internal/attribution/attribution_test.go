package attribution

import (
	"slices"
	"testing"

	"github.com/gpu-telemetry/agent/internal/telemetry"
)

const (
	uuidWhole  = "GPU-00000000-0000-0000-0000-000000000000"
	uuidShared = "GPU-11111111-1111-1111-1111-111111111111"
	uuidFree   = "GPU-22222222-2222-2222-2222-222222222222"
	uuidMIG    = "GPU-33333333-3333-3333-3333-333333333333"
	uuidLost   = "GPU-44444444-4444-4444-4444-444444444444"
	migA       = "MIG-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
	migB       = "MIG-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
)

func reading(f telemetry.Field, v float64) telemetry.Reading {
	var r telemetry.Reading
	r.Set(f, v)
	return r
}

// node: GPU 0 whole, GPU 1 time-sliced between two pods, GPU 2 free,
// GPU 3 MIG-enabled with two instances (one held), GPU 4 lost but held.
func node() *telemetry.Snapshot {
	devs := []telemetry.Device{
		{Index: 0, UUID: uuidWhole, Minor: 0},
		{Index: 1, UUID: uuidShared, Minor: 1},
		{Index: 2, UUID: uuidFree, Minor: 2},
		{Index: 3, UUID: uuidMIG, Minor: 3, MIGEnabled: true, MIG: []telemetry.MIGDevice{
			{UUID: migA, GI: 1, Profile: "3g.20gb"}, {UUID: migB, GI: 2, Profile: "3g.20gb"},
		}},
		{Index: 4, UUID: uuidLost, Minor: 4},
	}
	states := []telemetry.DeviceState{
		{Reading: reading(telemetry.GPUUtil, 10)},
		{Reading: reading(telemetry.GPUUtil, 11)},
		{Reading: reading(telemetry.GPUUtil, 12)},
		{Reading: reading(telemetry.Power, 13), MIG: []telemetry.Reading{
			reading(telemetry.FBUsed, 1<<30), reading(telemetry.FBUsed, 2<<30),
		}},
		{Reading: reading(telemetry.GPUUtil, 14), Lost: true},
	}
	return &telemetry.Snapshot{Seq: 1, Devices: devs, States: states}
}

// assignments is the pod map of node(): what the kubelet client makes of
// its answer (replicas collapsed to their GPU, pods sorted; its own tests
// hold it to that).
func assignments() *DevicePods {
	return NewDevicePods(map[string][]Pod{
		uuidWhole:  {{Namespace: "ml", Name: "inference-0", Container: "server"}},
		uuidShared: {{Namespace: "media", Name: "sfu-1", Container: "sfu"}, {Namespace: "media", Name: "sfu-0", Container: "sfu"}},
		migB:       {{Namespace: "ml", Name: "small", Container: "worker"}},
		uuidLost:   {{Namespace: "ml", Name: "trainer", Container: "main"}},
	})
}

func TestAttribute(t *testing.T) {
	snap := node()
	v := Attribute(snap, assignments(), nil)
	if v.Snapshot != snap {
		t.Error("the view does not point at its snapshot")
	}
	type want struct {
		uuid    string
		gpu     int
		mig     bool
		pods    []Pod
		reading *telemetry.Reading
		current bool
	}
	ref := func(ns, p, c string) Pod {
		return Pod{Namespace: ns, Name: p, Container: c}
	}
	wants := []want{
		{uuidWhole, 0, false, []Pod{ref("ml", "inference-0", "server")}, &snap.States[0].Reading, true},
		{uuidShared, 1, false, []Pod{ref("media", "sfu-0", "sfu"), ref("media", "sfu-1", "sfu")}, &snap.States[1].Reading, true},
		{uuidFree, 2, false, nil, &snap.States[2].Reading, true},
		{uuidMIG, 3, false, nil, &snap.States[3].Reading, true},
		{migA, 3, true, nil, &snap.States[3].MIG[0], true},
		{migB, 3, true, []Pod{ref("ml", "small", "worker")}, &snap.States[3].MIG[1], true},
		{uuidLost, 4, false, []Pod{ref("ml", "trainer", "main")}, &snap.States[4].Reading, false},
	}
	if len(v.Devices) != len(wants) {
		t.Fatalf("%d devices in the view, want %d", len(v.Devices), len(wants))
	}
	for i, w := range wants {
		d := &v.Devices[i]
		if d.UUID() != w.uuid || d.GPU.Index != w.gpu || (d.MIG != nil) != w.mig {
			t.Errorf("device %d = %s (GPU %d, MIG %v), want %s (GPU %d, MIG %v)", i, d.UUID(), d.GPU.Index, d.MIG != nil, w.uuid, w.gpu, w.mig)
		}
		if !slices.Equal(d.Pods, w.pods) {
			t.Errorf("%s: pods %v, want %v", w.uuid, d.Pods, w.pods)
		}
		if d.Reading != w.reading {
			t.Errorf("%s: reading %+v, not the device's own", w.uuid, *d.Reading)
		}
		if d.State != &snap.States[w.gpu] {
			t.Errorf("%s: state is not its GPU's", w.uuid)
		}
		if d.Current() != w.current || d.Lost() == w.current {
			t.Errorf("%s: current %v, lost %v; want current %v", w.uuid, d.Current(), d.Lost(), w.current)
		}
		if d.PerPod != nil {
			t.Errorf("%s: per-pod values without per-process attribution", w.uuid)
		}
	}
}

// Without a pod map (kubelet not answered yet, or attribution off) every
// device is listed, held by no pod.
func TestAttributeWithoutPods(t *testing.T) {
	v := Attribute(node(), nil, nil)
	if len(v.Devices) != 7 {
		t.Fatalf("%d devices, want 7", len(v.Devices))
	}
	for _, d := range v.Devices {
		if d.Pods != nil {
			t.Errorf("%s held by %v without a pod map", d.UUID(), d.Pods)
		}
	}
}

// A MIG instance the snapshot has no reading for (a MIG reconfiguration
// between inventory and tick) is left out rather than served empty.
func TestAttributeMIGWithoutReading(t *testing.T) {
	snap := node()
	snap.States[3].MIG = snap.States[3].MIG[:1]
	v := Attribute(snap, assignments(), nil)
	for _, d := range v.Devices {
		if d.UUID() == migB {
			t.Errorf("MIG instance without a reading listed")
		}
	}
	if len(v.Devices) != 6 {
		t.Errorf("%d devices, want 6", len(v.Devices))
	}
}

// A GPU instance with two compute instances is one device, held by the
// pods of both: the device plugin allocates compute instances, each with
// its own UUID.
func TestAttributeComputeInstances(t *testing.T) {
	const migB2 = "MIG-cccccccc-cccc-cccc-cccc-cccccccccccc"
	snap := node()
	snap.Devices[3].MIG[1].ComputeInstances = []telemetry.MIGComputeInstance{{UUID: migB, CI: 0}, {UUID: migB2, CI: 1}}
	a := NewDevicePods(map[string][]Pod{
		migB2: {{Namespace: "ml", Name: "small", Container: "worker"}, {Namespace: "ml", Name: "twice", Container: "worker"}},
		migB:  {{Namespace: "ml", Name: "big", Container: "worker"}, {Namespace: "ml", Name: "twice", Container: "worker"}},
	})
	var got []Pod
	for _, d := range Attribute(snap, a, nil).Devices {
		if d.UUID() == migB2 {
			t.Errorf("the second compute instance has a device of its own")
		}
		if d.UUID() == migB {
			got = d.Pods
		}
	}
	want := []Pod{{Namespace: "ml", Name: "big", Container: "worker"}, {Namespace: "ml", Name: "small", Container: "worker"}, {Namespace: "ml", Name: "twice", Container: "worker"}}
	if !slices.Equal(got, want) {
		t.Errorf("GPU instance held by %v, want %v", got, want)
	}
}

// A stalled GPU (its NVML calls not returning) is listed, not current.
func TestAttributeStalled(t *testing.T) {
	snap := node()
	snap.States[0].Stalled = true
	v := Attribute(snap, assignments(), nil)
	if d := v.Devices[0]; d.UUID() != uuidWhole || d.Current() || !d.Stalled() {
		t.Errorf("stalled GPU: %s current %v stalled %v; want listed, not current", d.UUID(), d.Current(), d.Stalled())
	}
	if !v.Devices[1].Current() {
		t.Errorf("a healthy GPU next to the stalled one is not current")
	}
}

type store struct{ snap *telemetry.Snapshot }

func (s *store) Latest() *telemetry.Snapshot { return s.snap }

type pods struct {
	a     *DevicePods
	stale bool
}

func (p *pods) DevicePods() *DevicePods { return p.a }
func (p *pods) Stale() bool             { return p.stale }

// The Attributor joins each (snapshot, pod map) pair once and rebuilds
// when either changes.
func TestAttributorCachesPerPair(t *testing.T) {
	src, p := &store{}, &pods{a: assignments()}
	at := NewAttributor(src, p, nil)
	if at.Latest() != nil {
		t.Fatal("a view before the first snapshot")
	}
	src.snap = node()
	v1 := at.Latest()
	if v1 == nil || v1.Snapshot != src.snap {
		t.Fatal("no view of the first snapshot")
	}
	if at.Latest() != v1 {
		t.Error("same snapshot and pod map joined twice")
	}
	p.a = NewDevicePods(map[string][]Pod{})
	v2 := at.Latest()
	if v2 == v1 || v2.Devices[0].Pods != nil {
		t.Errorf("new pod map not joined: GPU 0 still held by %v", v2.Devices[0].Pods)
	}
	src.snap = node()
	v3 := at.Latest()
	if v3 == v2 || v3.Snapshot != src.snap {
		t.Error("new snapshot not joined")
	}
	p.stale = true
	if v4 := at.Latest(); v4 == v3 || !v4.PodsStale {
		t.Error("a pod source gone stale does not show in the view")
	}
	if NewAttributor(src, nil, nil).Latest().Devices[0].Pods != nil {
		t.Error("pods without a pod source")
	}
}
