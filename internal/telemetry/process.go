package telemetry

import "time"

// ProcessData names a per-process source: one NVML call each, probed once
// per device like every field, so a device can answer some and not others
// (NVIDIA's mock library answers utilization but no encoder sessions; a
// MIG-enabled GPU answers none).
type ProcessData uint8

// The per-process sources.
const (
	ProcUtil        ProcessData = iota // SM, memory, encoder, decoder utilization
	ProcFB                             // framebuffer used (compute and graphics process lists)
	ProcEncSessions                    // encoder sessions
	ProcFBCSessions                    // frame-buffer-capture sessions

	NumProcessData
)

var processDataNames = [NumProcessData]string{"utilization", "fb_used", "encoder_sessions", "fbc_sessions"}

func (p ProcessData) String() string {
	if p < NumProcessData {
		return processDataNames[p]
	}
	return "unknown"
}

// ProcessDataSet is a bit set of ProcessData.
type ProcessDataSet uint8

// Has reports whether p is in the set.
func (s ProcessDataSet) Has(p ProcessData) bool { return s&(1<<p) != 0 }

// With returns the set with p added.
func (s ProcessDataSet) With(p ProcessData) ProcessDataSet { return s | 1<<p }

// Without returns the set with p removed.
func (s ProcessDataSet) Without(p ProcessData) ProcessDataSet { return s &^ (1 << p) }

// AllProcessData is the set of every per-process source.
const AllProcessData = ProcessDataSet(1<<NumProcessData - 1)

// Codec is an NVENC codec, as NVML's encoder sessions name it.
type Codec uint8

// The codecs NVENC reports; CodecOther stands for any value NVML adds later.
const (
	CodecH264 Codec = iota
	CodecHEVC
	CodecAV1
	CodecOther

	NumCodecs
)

var codecNames = [NumCodecs]string{"h264", "hevc", "av1", "other"}

// String returns the codec's stable lowercase name, used in labels.
func (c Codec) String() string {
	if c < NumCodecs {
		return codecNames[c]
	}
	return "other"
}

// EncoderSessions aggregates one process's encoder sessions of one codec.
// A fixed array of these in ProcessSample, rather than a slice, keeps a
// tick's process list one allocation whatever the sessions.
type EncoderSessions struct {
	Sessions    int     // 0: nothing of this codec, the rest is zero
	FPS         float64 // mean of the sessions' average frame rates
	LatencyMean float64 // seconds, mean of the sessions' average encode latencies
	LatencyMax  float64 // seconds, the worst session's average encode latency
}

// FBCSessions aggregates one process's frame-buffer-capture sessions.
type FBCSessions struct {
	Sessions    int
	FPS         float64 // mean of the sessions' average frame rates
	LatencyMean float64 // seconds
}

// ProcessSample is one process's use of one GPU, as of one reading. PID is a
// host PID. Has is the set of sources that answered in this reading, the
// same for every process of it: a figure whose source is in Has is a true
// value, zero included (a process that holds memory but ran no kernel
// lately has utilization 0 with ProcUtil set); one whose source is not
// (unsupported, or its call failed this reading) is unknown, not zero.
type ProcessSample struct {
	PID uint32
	Has ProcessDataSet
	// Utilization in percent (0-100) over the driver's latest sample
	// period, as NVML's per-process samples give it; zero for a process
	// the driver reported no sample for lately (NVML lists only processes
	// with non-zero utilization).
	SMUtil, MemUtil, EncUtil, DecUtil float64
	// UtilAt is the driver's timestamp of the sample the utilization
	// comes from; zero when there is none.
	UtilAt time.Time
	FBUsed uint64 // bytes
	// Encoder holds the process's encoder sessions by codec.
	Encoder [NumCodecs]EncoderSessions
	FBC     FBCSessions
}

// EncoderTotal returns the process's encoder sessions over every codec:
// session count, mean fps and latency weighted by sessions, and the
// worst latency.
func (p *ProcessSample) EncoderTotal() EncoderSessions {
	var t EncoderSessions
	for _, e := range p.Encoder {
		if e.Sessions == 0 {
			continue
		}
		t.FPS += e.FPS * float64(e.Sessions)
		t.LatencyMean += e.LatencyMean * float64(e.Sessions)
		t.LatencyMax = max(t.LatencyMax, e.LatencyMax)
		t.Sessions += e.Sessions
	}
	if t.Sessions > 0 {
		t.FPS /= float64(t.Sessions)
		t.LatencyMean /= float64(t.Sessions)
	}
	return t
}
