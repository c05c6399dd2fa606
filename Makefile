# go-nvml needs cgo; its headers use deprecated declarations, whose
# warnings are noise.
export CGO_ENABLED := 1
export CGO_CFLAGS := -O2 -g -Wno-deprecated-declarations

PKG      := github.com/gpu-telemetry/agent
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X $(PKG)/internal/agent.Version=$(VERSION) -X $(PKG)/internal/agent.Revision=$(REVISION)

.PHONY: build build-scaler run test test-deploy lint gosec install-gosec fuzz e2e e2e-cluster e2e-livekit e2e-keda-tls golden bench bench-peer bench-mem bench-go bench-fanin bench-push-fake bench-push bench-chain soak soak-load generate

build: build-scaler
	go build -ldflags '$(LDFLAGS)' -o bin/gpu-agent ./cmd/agent

# The scaler is pure Go: built without cgo, and the build proves it.
SCALER_LDFLAGS := -X $(PKG)/internal/scaler.Version=$(VERSION) -X $(PKG)/internal/scaler.Revision=$(REVISION)
build-scaler:
	CGO_ENABLED=0 go build -ldflags '$(SCALER_LDFLAGS)' -o bin/gpu-scaler ./cmd/scaler

run: build
	bin/gpu-agent --simulate 4

# test/deploy is its own module (helm, kustomize and the Prometheus
# Operator's types stay out of the agent's go.mod): ./... does not reach it.
test:
	go test -race -count=1 ./...
	cd test/deploy && go test -race -count=1 ./...

lint:
	go vet ./...
	cd test/deploy && go vet ./...
	cd test/livekit && go vet ./...
	cd test/kedatls && go vet ./...
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then \
		echo "gofmt -l: these files need gofmt -w:"; echo "$$unformatted"; exit 1; fi
	@if command -v staticcheck >/dev/null 2>&1; then \
		echo staticcheck ./...; staticcheck ./... || exit 1; \
		echo "staticcheck ./... (test/deploy)"; (cd test/deploy && staticcheck ./...) || exit 1; \
		echo "staticcheck ./... (test/livekit)"; (cd test/livekit && staticcheck ./...) || exit 1; \
		echo "staticcheck ./... (test/kedatls)"; cd test/kedatls && staticcheck ./...; \
	else \
		echo "staticcheck not on PATH: skipped (go install honnef.co/go/tools/cmd/staticcheck@latest)"; \
	fi

# gosec over the shipped code (cmd/, internal/ and the API): every
# finding is fixed or carries a #nosec naming its rule and why, where it
# is made. test/ is left out: its harnesses launch the binaries they
# build and write their own scratch files, which is what gosec flags there.
GOSEC_VERSION := v2.30.0
install-gosec:
	go install github.com/securego/gosec/v2/cmd/gosec@$(GOSEC_VERSION)

gosec:
	@command -v gosec >/dev/null 2>&1 || { echo "gosec not on PATH: go install github.com/securego/gosec/v2/cmd/gosec@$(GOSEC_VERSION)"; exit 1; }
	gosec -quiet -exclude-generated -exclude-dir=test ./...

# Every fuzz target (the parsers of what the agent and the scaler are
# handed: flags and environment, field lists, load files, cgroup lines,
# device IDs, KEDA's trigger metadata, an app's exposition), $(FUZZTIME)
# each; CI runs it at 10s. Seeds and past crashers run in `make test`.
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) bash .ci/fuzz

e2e:
	go test -race -count=1 ./test/...

# The deploy/ manifests, the Helm chart, the dashboard and the Dockerfile
# (test/deploy, its own module); -update rewrites the committed kustomize
# builds and deploy/grafana/dashboard.md: review the diff.
test-deploy:
	cd test/deploy && go test -race -count=1 ./...

# A real control plane on this machine: etcd, kube-apiserver,
# kube-controller-manager (HPA sync 1 s), the KEDA operator and adapter,
# Prometheus, the scaler and simulated agents; load steps scale
# Deployments from 0 and from 1 on the push and Prometheus paths
# (test/cluster). Needs root, ip, etcd and prometheus. The first run
# builds the control plane into ~/.cache/gpu-agent (minutes); see
# docs/control-plane.md.
e2e-cluster:
	GPU_AGENT_CLUSTER=1 go test -count=1 -timeout 60m -v ./test/cluster/

# A real WebRTC SFU (LiveKit's server, built from its module) under load
# on a tbf-impaired network of namespaces, a real Prometheus scraping it,
# and the agent and scaler beside it: the scaler's p50/p95 of LiveKit's
# jitter, RTT and loss equal Prometheus's (test/livekit, its own module).
# Needs root, ip and tc, prometheus; the first run builds livekit-server
# into ~/.cache/gpu-agent (minutes).
e2e-livekit:
	cd test/livekit && GPU_AGENT_LIVEKIT=1 go test -count=1 -timeout 30m -v ./...

# KEDA's own external scaler client (pkg/scalers) against the scaler's
# mutual TLS through a certificate rotation (test/kedatls, its own
# module). Without -race: KEDA's scalers link every cloud SDK, and the
# first build takes minutes as it is; internal/tlsfiles and
# internal/scaler test the same paths under -race.
e2e-keda-tls:
	cd test/kedatls && go test -count=1 ./...

# Rewrites test/testdata/metrics.golden from the running agent; review the diff.
golden:
	go test -count=1 ./test -run Golden -update

# The whole-process harness: BENCHMARKS.md's table (about 2.5 minutes).
bench:
	go run ./test/bench

# The agent beside utkuozdemir/nvidia_gpu_exporter (its NVML backend,
# built from ../shared/third_party/nvidia_gpu_exporter) on NVIDIA's mock
# NVML, 4 T4s, one scraper at 1 Hz, at 100 ms and at 250 ms: both CPUs,
# both RSS and the ratios.
bench-peer:
	go run ./test/bench -nvml=mock -peer -floor -scrapers 1 -interval 100ms -json bench-peer-100ms.json
	go run ./test/bench -nvml=mock -peer -floor -scrapers 1 -interval 250ms -json bench-peer-250ms.json

# Memory with the pod watch on: the mock's 4 T4s shared by 64 pods through
# the kubelet, 500 realistic pods of the node in a fake API server.
bench-mem:
	go run ./test/bench -nvml=mock -podwatch 500 -scrapers 1 -interval 100ms -json bench-mem.json

# The Go benchmarks of the hot paths.
bench-go:
	go test -run '^$$' -bench . -benchmem ./...

# The scaler fed by fake agents of 8 GPUs at 4 Hz over gRPC on loopback
# (the agents in a child process), its triggers matching 10% of the pods:
# the scaler's CPU, RSS, GetMetrics p50/p99 and a new trigger's
# Unavailable window, at 2,000 and 5,000 agents, the agents honouring the
# scaler's request (filters=1) and sending everything (filters=0, full
# subscriptions). One size and mode: FANIN_AGENTS, FANIN_FILTERS,
# FANIN_SECONDS, FANIN_MATCH with `go test -run '^$$' -bench FanIn
# -benchtime 1x ./internal/fleet/`.
FANIN_SIZES ?= 2000 5000
bench-fanin:
	go test -c -o bin/fleet.test ./internal/fleet/
	cd internal/fleet && for n in $(FANIN_SIZES); do for f in 1 0; do \
		echo "== $$n agents, filters=$$f; $$(uptime)"; \
		FANIN_AGENTS=$$n FANIN_FILTERS=$$f ../../bin/fleet.test -test.run '^$$' -test.bench FanIn -test.benchtime 1x -test.timeout 20m || exit 1; \
	done; done

# Load step at a fake agent -> GetMetrics / StreamIsActive at KEDA's
# client, through the real scaler: p50/p99 over PUSH_STEPS (1,000) steps.
bench-push-fake:
	go test -run '^$$' -bench PushLatency -benchtime 1x ./internal/scaler/

# Regenerates the gRPC API's Go code with Debian's protoc (protobuf-compiler,
# libprotobuf-dev for the well-known types) and the plugins pinned in
# go.mod's tool block. api/telemetry/v1's test fails when the committed
# code differs from what this produces.
generate:
	protoc -I api -I /usr/include \
		--plugin=protoc-gen-go="$$(go tool -n protoc-gen-go)" \
		--plugin=protoc-gen-go-grpc="$$(go tool -n protoc-gen-go-grpc)" \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		telemetry/v1/telemetry.proto

# A load step on a simulated node, from the agent's publish to KEDA's
# client: StreamIsActive and GetMetrics through the real agents and
# scaler, p50/p99 over 1,000 steps (about 3 minutes).
bench-push:
	go run ./test/chain -mode push

# The same step through the push path and through a real Prometheus
# scraping every 1 s with a KEDA-style query polled every 1 s, side by
# side in one run (about 1 minute).
bench-chain:
	go run ./test/chain -mode chain
	go run ./test/chain -mode app

# Both binaries under hostile load for 60 s: 200 closed-loop scrapers,
# 100 Watch subscribers (half never read), 20 that connect and drop, the
# scaler fed by 200 fake agents and called by 50 KEDA clients. Prints
# cadence, latencies, memory, goroutines back to their baselines and the
# sequences every reader saw (test/soak; about 2 minutes).
soak-load:
	go run ./test/soak -mode load -duration 60s

# Both binaries for 30 minutes under a steady scraper, one subscriber and
# one KEDA client: memory, goroutines, descriptors and sequences over
# time; fails on growth it can prove (CI runs 3 minutes of it).
soak:
	go run ./test/soak -mode long -duration 30m
