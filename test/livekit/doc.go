// Package livekit runs a real WebRTC SFU under a real load on an impaired
// network, for the end-to-end tests that read its metrics: LiveKit's
// livekit-server (ServerVersion, built from its Go module), synthetic
// publishers and subscribers on LiveKit's Go SDK (loadgen), a tbf
// bottleneck on each direction, and a real Prometheus scraping the SFU.
//
// On loopback nearly every jitter, RTT and loss sample LiveKit observes
// lands in its histograms' first bucket, which tests nothing a percentile
// could get wrong. Here the SFU, the publishers and the subscribers each
// run in a network namespace (see netns.go), the links between them pass
// through token-bucket queues that fill, drain and overflow, and the
// publishers pace irregularly and skip sequence numbers; Start returns an
// Env whose histograms spread over several buckets, which
// TestImpairedSFUHistograms checks and later tests build on (the agent
// scraping Env.MetricsURL, the scaler's percentiles against
// Env.Quantile).
//
// It is its own module so that LiveKit's and pion's dependencies stay out
// of the agent's go.mod; it imports the agent's internal/testutil through
// a replace directive.
//
// Opt in: the tests skip unless GPU_AGENT_LIVEKIT=1, because the first
// run builds livekit-server (2-4 minutes on 2 cores with the module cache
// warm; cached in ~/.cache/gpu-agent/livekit-<key> after, see
// BuildServer) and compiles LiveKit's SDK and pion for loadgen (about 2
// minutes, then in Go's build cache), and the namespaces need root. A
// warm run takes about 40 s.
//
//	cd test/livekit && GPU_AGENT_LIVEKIT=1 go test -count=1 -v ./...
//
// What it needs: root, iproute2's ip and tc, a kernel with sch_tbf,
// Debian's prometheus, and the Go module proxy for the first build. When
// opted in, a missing tool skips the tests on a laptop and fails them
// under CI=true.
package livekit
