package nvml

import (
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// node is a mock NVML over go-nvml's mocks whose driver can be unloaded,
// loaded and reloaded, and whose GPUs can fall off the bus and come back,
// which NVIDIA's mock library cannot do (it can only trip a GPU). It keeps
// NVML's rules as a process sees them:
//
//   - with the driver unloaded every call answers DRIVER_NOT_LOADED, Init
//     included;
//   - after a reload (or Shutdown) every call answers UNINITIALIZED until
//     Init, and the handles of before answer so for good: Init hands out
//     new ones (same UUIDs), so a sampler that kept an old handle fails;
//   - a GPU lost answers GPU_IS_LOST through its handle for good; unbound,
//     NVML no longer finds it; bound again, it has a new handle.
type node struct {
	lib    *mock.Interface
	events chan nvml.EventData
	// build, if set, changes each device it makes, before it is guarded
	// (a test's gate on one call, say).
	build func(i int, d *mock.Device)
	clock func() time.Duration // when Init and lookups are recorded

	mu       sync.Mutex
	loaded   bool // the driver
	inited   bool // NVML, in the current session
	session  int  // bumped by every unload and reload
	devs     []*mock.Device
	made     int // the session devs were made in
	lost     map[*mock.Device]bool
	unbound  []bool
	calls    map[*mock.Device]int // NVML calls through each handle
	stale    int                  // calls through a handle of an older session after a later Init
	initAt   []time.Duration      // clock at each Init call
	lookups  []time.Duration      // clock at each DeviceGetHandleByUUID of a lost GPU
	initGate *gate                // if set, Init passes through it
}

func newNode(n int) *node {
	nd := &node{events: make(chan nvml.EventData, 16), loaded: true, inited: false,
		lost: map[*mock.Device]bool{}, unbound: make([]bool, n), calls: map[*mock.Device]int{},
		clock: func() time.Duration { return 0 }}
	nd.devs = make([]*mock.Device, n)
	nd.lib = &mock.Interface{
		InitFunc:     nd.init,
		ShutdownFunc: nd.shutdown,
		SystemGetDriverVersionFunc: func() (string, nvml.Return) {
			return "550.54.15", nd.state()
		},
		DeviceGetCountFunc: func() (int, nvml.Return) {
			if ret := nd.state(); ret != nvml.SUCCESS {
				return 0, ret
			}
			return len(nd.devs), nvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			nd.mu.Lock()
			defer nd.mu.Unlock()
			if ret := nd.stateLocked(); ret != nvml.SUCCESS {
				return nil, ret
			}
			if i < 0 || i >= len(nd.devs) || nd.unbound[i] {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return nd.devs[i], nvml.SUCCESS
		},
		DeviceGetHandleByUUIDFunc: func(uuid string) (nvml.Device, nvml.Return) {
			nd.mu.Lock()
			defer nd.mu.Unlock()
			if ret := nd.stateLocked(); ret != nvml.SUCCESS {
				return nil, ret
			}
			for i, d := range nd.devs {
				if gpuUUID(i) != uuid {
					continue
				}
				if nd.lost[d] || nd.unbound[i] {
					nd.lookups = append(nd.lookups, nd.clock())
				}
				if nd.unbound[i] {
					return nil, nvml.ERROR_NOT_FOUND
				}
				return d, nvml.SUCCESS
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) {
			nd.mu.Lock()
			defer nd.mu.Unlock()
			if ret := nd.stateLocked(); ret != nvml.SUCCESS {
				return nil, ret
			}
			session := nd.session
			return &mock.EventSet{
				WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
					if nd.sessionState(session) != nvml.SUCCESS {
						time.Sleep(time.Duration(ms) * time.Millisecond)
						return nvml.EventData{}, nd.sessionState(session)
					}
					return waitEvent(nd.events, ms)
				},
				FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			}, nvml.SUCCESS
		},
	}
	return nd
}

// init is nvmlInit: it fails while the driver is unloaded, and makes new
// handles in a new session.
func (nd *node) init() nvml.Return {
	nd.mu.Lock()
	g := nd.initGate
	nd.mu.Unlock()
	if g != nil {
		g.pass()
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.initAt = append(nd.initAt, nd.clock())
	if !nd.loaded {
		return nvml.ERROR_DRIVER_NOT_LOADED
	}
	nd.inited = true
	if nd.devs[0] == nil || nd.made != nd.session {
		for i := range nd.devs {
			nd.devs[i] = nd.device(i)
		}
		nd.made = nd.session
	}
	return nvml.SUCCESS
}

func (nd *node) shutdown() nvml.Return {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if !nd.loaded {
		return nvml.ERROR_DRIVER_NOT_LOADED
	}
	if !nd.inited {
		return nvml.ERROR_UNINITIALIZED
	}
	nd.inited = false
	nd.session++ // the next Init makes new handles
	return nvml.SUCCESS
}

func (nd *node) state() nvml.Return {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.stateLocked()
}

func (nd *node) stateLocked() nvml.Return {
	switch {
	case !nd.loaded:
		return nvml.ERROR_DRIVER_NOT_LOADED
	case !nd.inited:
		return nvml.ERROR_UNINITIALIZED
	}
	return nvml.SUCCESS
}

// sessionState is what a handle of session answers.
func (nd *node) sessionState(session int) nvml.Return {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if ret := nd.stateLocked(); ret != nvml.SUCCESS {
		return ret
	}
	if session != nd.session {
		return nvml.ERROR_UNINITIALIZED
	}
	return nvml.SUCCESS
}

// device makes GPU i's handle in the current session.
func (nd *node) device(i int) *mock.Device {
	d := newFullGPU(i)
	if nd.build != nil {
		nd.build(i, d)
	}
	session := nd.session
	guard(d, func() nvml.Return {
		nd.mu.Lock()
		defer nd.mu.Unlock()
		nd.calls[d]++
		if session != nd.session && nd.inited {
			nd.stale++
		}
		switch {
		case !nd.loaded:
			return nvml.ERROR_DRIVER_NOT_LOADED
		case !nd.inited || session != nd.session:
			return nvml.ERROR_UNINITIALIZED
		case nd.lost[d]:
			return nvml.ERROR_GPU_IS_LOST
		}
		return nvml.SUCCESS
	})
	return d
}

// reload reloads the driver under the process: NVML answers UNINITIALIZED
// until it is initialised again, and the handles of before for good.
func (nd *node) reload() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.inited = false
	nd.session++
}

// unload unloads the driver; load loads it again (NVML still needs Init).
func (nd *node) unload() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.loaded, nd.inited = false, false
	nd.session++
}

func (nd *node) load() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.loaded = true
}

// lose makes GPU i's handle answer GPU_IS_LOST for good, as a GPU that
// fell off the bus; with unbind, NVML no longer finds it either.
func (nd *node) lose(i int, unbind bool) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.lost[nd.devs[i]] = true
	nd.unbound[i] = unbind
}

// bind brings GPU i back under a new handle, as binding it again does.
func (nd *node) bind(i int) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.unbound[i] = false
	nd.devs[i] = nd.device(i)
}

// gateInit makes Init pass through g from now on.
func (nd *node) gateInit(g *gate) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.initGate = g
}

// handle is GPU i's current handle.
func (nd *node) handle(i int) *mock.Device {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.devs[i]
}

// count reads one of the node's records under its lock.
func count[T any](nd *node, f func() T) T {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return f()
}

// guard makes every call of d (each XxxFunc it has that answers an
// nvml.Return) ask check first, and answer what it says unless SUCCESS:
// how a whole mock device follows the driver's state, not only the calls
// a test thought of.
func guard(d *mock.Device, check func() nvml.Return) {
	v := reflect.ValueOf(d).Elem()
	retType := reflect.TypeFor[nvml.Return]()
	for i := range v.NumField() {
		f, sf := v.Field(i), v.Type().Field(i)
		if !sf.IsExported() || !strings.HasSuffix(sf.Name, "Func") || f.Kind() != reflect.Func || f.IsNil() {
			continue
		}
		ft := f.Type()
		if ft.NumOut() == 0 || ft.Out(ft.NumOut()-1) != retType {
			continue
		}
		orig := reflect.ValueOf(f.Interface())
		f.Set(reflect.MakeFunc(ft, func(args []reflect.Value) []reflect.Value {
			if ret := check(); ret != nvml.SUCCESS {
				out := make([]reflect.Value, ft.NumOut())
				for j := range out {
					out[j] = reflect.Zero(ft.Out(j))
				}
				out[len(out)-1] = reflect.ValueOf(ret)
				return out
			}
			if ft.IsVariadic() {
				return orig.CallSlice(args)
			}
			return orig.Call(args)
		}))
	}
}

// fakeClock is a test's wall clock (Config.Now, from which the sampler's
// monotonic clock follows): it moves only when the test says.
type fakeClock struct {
	start time.Time
	d     atomic.Int64
}

func newFakeClock() *fakeClock { return &fakeClock{start: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) now() time.Time          { return c.start.Add(c.elapsed()) }
func (c *fakeClock) elapsed() time.Duration  { return time.Duration(c.d.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.d.Add(int64(d)) }
