package stream

import (
	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/stream/watchreq"
)

// MaxHeartbeat is the longest heartbeat the agent keeps to (see
// watchreq.MaxHeartbeat).
const MaxHeartbeat = watchreq.MaxHeartbeat

// filter is a WatchRequest, validated, and what it matches of a view.
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

// match reports whether the subscriber wants device d: one of its pods
// passes the filter, or no pod holds it and the subscriber asked for such
// devices.
func (f *filter) match(d *attribution.Device) bool {
	if len(d.Pods) == 0 {
		return f.Unattributed
	}
	if f.Pods == nil {
		return true
	}
	for _, p := range d.Pods {
		if f.Pods.Match(p.Namespace, p.Name) {
			return true
		}
	}
	return false
}
