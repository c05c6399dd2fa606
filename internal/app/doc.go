// Package app scrapes the node's own services: the experience metrics
// (latency, jitter, loss histograms) of the pods on the agent's node that
// opt in by annotation, so that the stream can carry what users feel
// beside the GPU load that causes it.
//
// Discovery reads the pod watch's index (Pods): a pod is a target when it
// is Running, has an IP and carries gpu-agent.io/scrape: "true"; its other
// gpu-agent.io/ annotations give the port, path, scheme, the families to
// keep (an RE2 matched against whole family names: nothing is kept until
// one is named) and its interval.
//
// Each target has its own loop and schedule, never the GPU tick. A scrape
// is bounded every way an endpoint can misbehave: a timeout (--app.timeout,
// at most the interval), no redirects, a body cap enforced while reading
// (--app.max-body-bytes), a series cap applied before anything is kept
// (--app.max-series-per-pod, whole families only), a target cap
// (--app.max-targets). Reading and parsing a body holds one of
// --app.concurrency slots, so the memory the scrapes take at once is
// bounded by slots x body cap, times the parser's own overhead (the text
// decoder of prometheus/common holds every family of a body at once; the
// protobuf decoder, which the Accept header prefers, one at a time).
// Waiting for an answer holds no slot.
//
// Cost and failure modes of the external calls: one HTTP GET per target
// per interval, to the pod's IP on the node's own network. A failed
// scrape is a per-target error and a counter
// (gpu_agent_app_scrape_errors_total{reason}); the target keeps its last
// good values, flagged with the error, until a scrape succeeds or the
// pod goes.
package app
