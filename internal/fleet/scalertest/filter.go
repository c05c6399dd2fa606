package scalertest

import (
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/stream/watchreq"
)

// What an agent that honours its WatchRequest does with it. The request
// is read by the agent's own watchreq; what it selects and sends is
// internal/stream's (message.go, stream.go's Watch) over the proto's
// snapshots a test publishes here rather than the sampler's types.
// TestFilter* in this package hold it to the documented contract
// (docs/stream-and-scaler.md, "The agent's stream"). Two differences,
// both of the fake's plumbing: the fake keeps no history, so the samples
// of a snapshot lost from a slow subscriber's buffer are lost (the real
// agent reads them back from its history); and app scrapes come with the
// snapshots only (no apps_only messages).

// maxSinceWindow bounds the snapshots whose samples a message may gather.
const maxSinceWindow = 1024

// filter is a WatchRequest, validated, and what it matches of a snapshot.
type filter struct {
	watchreq.Filter
}

func newFilter(req *telemetryv1.WatchRequest) (*filter, error) {
	f, err := watchreq.Parse(req)
	if err != nil {
		return nil, err
	}
	return &filter{Filter: *f}, nil
}

func (f *filter) match(d *telemetryv1.Device) bool {
	if len(d.GetPods()) == 0 {
		return f.Unattributed
	}
	if f.Pods == nil {
		return true
	}
	for _, p := range d.GetPods() {
		if f.Pods.Match(p.GetNamespace(), p.GetName()) {
			return true
		}
	}
	return false
}

// due reports whether snap comes at least period after last on the
// sampler's clock, give or take half an interval of tick jitter.
func due(last, snap *telemetryv1.NodeSnapshot, period, interval time.Duration) bool {
	return period <= 0 || snap.GetSampleTime().AsTime().Sub(last.GetSampleTime().AsTime()) >= period-interval/2
}

// message is what the subscriber gets of snap, its previous message
// having been of last (nil: none yet), since holding the snapshots it
// was offered in between (their samples come along).
func (f *filter) message(snap, last *telemetryv1.NodeSnapshot, since []*telemetryv1.NodeSnapshot, interval time.Duration) *telemetryv1.NodeSnapshot {
	msg := &telemetryv1.NodeSnapshot{
		Node: snap.Node, Sequence: snap.Sequence, SampleTime: snap.SampleTime, Interval: snap.Interval,
		AgentStart: snap.AgentStart, PodsStale: snap.PodsStale,
	}
	if last != nil && snap.Sequence > last.Sequence+1 {
		msg.Skipped = snap.Sequence - last.Sequence - 1
	}
	for _, d := range snap.Devices {
		if !f.match(d) {
			continue
		}
		if len(since) > 0 && len(d.Samples) > 0 {
			d = withSamplesSince(d, since)
		}
		if f.Mask != nil {
			d = f.Mask.Project(d)
		}
		msg.Devices = append(msg.Devices, d)
	}
	if f.Families != nil {
		for _, a := range snap.Apps {
			if f.MatchPod(a.GetNamespace(), a.GetPod()) {
				msg.Apps = append(msg.Apps, appScrape(a, f.Families))
			}
		}
	}
	msg.Period = durationpb.New(f.Period(interval, len(msg.Devices) == 0 && len(msg.Apps) == 0))
	return msg
}

// withSamplesSince is d with the samples of the same device in since
// (oldest first) before its own, engine by engine.
func withSamplesSince(d *telemetryv1.Device, since []*telemetryv1.NodeSnapshot) *telemetryv1.Device {
	byEngine := map[telemetryv1.Engine][]*telemetryv1.Sample{}
	for _, s := range since {
		for _, o := range s.Devices {
			if o.GetUuid() != d.GetUuid() {
				continue
			}
			for _, es := range o.Samples {
				byEngine[es.GetEngine()] = append(byEngine[es.GetEngine()], es.Samples...)
			}
		}
	}
	c := shallow(d)
	c.Samples = make([]*telemetryv1.EngineSamples, len(d.Samples))
	for i, es := range d.Samples {
		c.Samples[i] = &telemetryv1.EngineSamples{Engine: es.Engine,
			Samples: append(byEngine[es.GetEngine()], es.Samples...)}
	}
	return c
}

// shallow copies d's fields, sharing their values.
func shallow(d *telemetryv1.Device) *telemetryv1.Device {
	c := &telemetryv1.Device{}
	src, dst := d.ProtoReflect(), c.ProtoReflect()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	return c
}

func appScrape(a *telemetryv1.AppScrape, families map[string]bool) *telemetryv1.AppScrape {
	m := &telemetryv1.AppScrape{Namespace: a.Namespace, Pod: a.Pod, ScrapeTime: a.ScrapeTime, Error: a.Error}
	for _, fm := range a.Families {
		if families[fm.GetName()] {
			m.Families = append(m.Families, fm)
		}
	}
	return m
}
