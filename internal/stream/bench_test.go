package stream

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// benchNode is the bench harness's node: 8 GPUs, every field, each
// time-sliced between 8 of 64 pods, two new samples per engine per tick
// (the driver samples every 1/6 s, the agent ticks every 250 ms).
func benchNode() (*telemetry.Snapshot, testPods) {
	var devs []telemetry.Device
	var gpus []podresources.GPU
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for i := range 8 {
		uuid := fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i)
		devs = append(devs, telemetry.Device{Index: i, UUID: uuid, Name: "Tesla T4", PCIBusID: fmt.Sprintf("00000000:%02X:00.0", i), Minor: i})
		gpus = append(gpus, podresources.GPU{UUID: uuid, Minor: i})
	}
	for p := range 64 {
		resp.PodResources = append(resp.PodResources, pod("media", fmt.Sprintf("sfu-%d", p), "sfu", "nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", devs[p%8].UUID, p/8)))
	}
	now := time.Now()
	states := make([]telemetry.DeviceState, 8)
	for i := range states {
		for f := telemetry.Field(0); f < telemetry.NumFields; f++ {
			states[i].Set(f, float64(i+int(f)))
		}
		for e := range telemetry.NumEngines {
			states[i].NewSamples[e] = []telemetry.UtilSample{{At: now, Value: 40}, {At: now.Add(166 * time.Millisecond), Value: 60}}
		}
	}
	return &telemetry.Snapshot{Seq: 2, Time: now, Devices: devs, States: states},
		testPods{a: podresources.BuildAssignments(resp, podresources.NewResolver(gpus))}
}

// BenchmarkFanOut8GPUs64Pods is the agent's work per snapshot for N
// subscribers, encoding included: the broadcaster's join (once), then,
// per subscriber, its message (the device messages are built once and
// shared by subscribers that skipped nothing) and the protobuf encoding
// gRPC does in Send. The transport's own cost is not in it.
func BenchmarkFanOut8GPUs64Pods(b *testing.B) {
	snap, pods := benchNode()
	prev := &telemetry.Snapshot{Seq: 1, Time: snap.Time.Add(-250 * time.Millisecond), Devices: snap.Devices, States: snap.States}
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			store := telemetry.NewStore(250*time.Millisecond, 15*time.Second)
			s := New(store, Options{Node: "node", Interval: 250 * time.Millisecond, Views: attribution.NewAttributor(store, pods, nil)})
			f, err := newFilter(&telemetryv1.WatchRequest{Namespace: "media", PodPattern: "sfu-.*"})
			if err != nil {
				b.Fatal(err)
			}
			var scratch []*telemetry.Snapshot
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				it := s.newItem(snap)
				for range n {
					var msg *telemetryv1.NodeSnapshot
					msg, scratch = s.message(it, prev, f, scratch[:0])
					if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], msg); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(len(buf)), "bytes/msg")
		})
	}
}

// BenchmarkFanOutGRPC8GPUs64Pods is one snapshot reaching N subscribers
// over real gRPC streams (in-memory connections): publish, then wait
// until every subscriber has received and decoded it. Client and server
// share the benchmark's CPUs, so this is the whole cost of a push on one
// machine, both ends.
func BenchmarkFanOutGRPC8GPUs64Pods(b *testing.B) {
	snap, pods := benchNode()
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := newHarness(b, Options{Node: "node", Interval: 250 * time.Millisecond}, pods)
			seq := uint64(1)
			h.store.Publish(at(snap, seq))
			got := make(chan uint64, n)
			for range n {
				w := h.watch(b, &telemetryv1.WatchRequest{})
				go func() {
					for {
						m, err := w.Recv()
						if err != nil {
							return
						}
						got <- m.GetSequence()
					}
				}()
			}
			for range n {
				<-got // the first message, the latest snapshot
			}
			b.ReportAllocs()
			for b.Loop() {
				seq++
				h.store.Publish(at(snap, seq))
				for range n {
					if s := <-got; s != seq {
						b.Fatalf("received %d, want %d", s, seq)
					}
				}
			}
		})
	}
}

// at is snap as tick seq.
func at(snap *telemetry.Snapshot, seq uint64) *telemetry.Snapshot {
	s := *snap
	s.Seq = seq
	s.Time = snap.Time.Add(time.Duration(seq) * 250 * time.Millisecond)
	return &s
}
