# syntax=docker/dockerfile:1
#
# The agent (the default target) and the scaler (--target scaler):
#
#   docker build --build-arg VERSION=$(git describe --always) --build-arg REVISION=$(git rev-parse --short HEAD) -t gpu-agent .
#   docker build --target scaler --build-arg VERSION=... --build-arg REVISION=... -t gpu-scaler .
#
# The go build lines are the Makefile's (make build, make build-scaler):
# the same packages, cgo settings and -X version stamps, plus -trimpath
# and a stripped binary. test/deploy checks that they agree.

ARG GO_IMAGE=golang:1.26-bookworm

# Modules once, for both binaries.
FROM ${GO_IMAGE} AS modules
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .

# go-nvml needs cgo (gcc) at build time but no NVIDIA driver:
# libnvidia-ml.so.1 is dlopen()ed at start, from the driver that the NVIDIA
# container toolkit mounts into the container.
FROM modules AS build-agent
ARG VERSION=dev
ARG REVISION=unknown
RUN CGO_ENABLED=1 CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
    go build -trimpath \
      -ldflags "-s -w -X github.com/gpu-telemetry/agent/internal/agent.Version=${VERSION} -X github.com/gpu-telemetry/agent/internal/agent.Revision=${REVISION}" \
      -o /out/gpu-agent ./cmd/agent

# The scaler is pure Go: no cgo, a static binary.
FROM modules AS build-scaler
ARG VERSION=dev
ARG REVISION=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/gpu-telemetry/agent/internal/scaler.Version=${VERSION} -X github.com/gpu-telemetry/agent/internal/scaler.Revision=${REVISION}" \
      -o /out/gpu-scaler ./cmd/scaler

# gpu-scaler: distroless/static, as its nonroot user.
FROM gcr.io/distroless/static-debian12:nonroot AS scaler
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpu-scaler" \
      org.opencontainers.image.description="KEDA external scaler fed by the gpu-agent push stream" \
      org.opencontainers.image.source="https://github.com/gpu-telemetry/agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build-scaler /out/gpu-scaler /usr/bin/gpu-scaler
USER 65532:65532
EXPOSE 9500 9501
ENTRYPOINT ["/usr/bin/gpu-scaler"]

# gpu-agent: distroless/base has glibc, which dlopen of the driver's
# library needs, and nothing else. Its nonroot user by default; the
# DaemonSet runs it as UID 0 without capabilities, because the kubelet's
# pod-resources socket is root's (deploy/daemonset.yaml says why).
FROM gcr.io/distroless/base-debian12:nonroot AS agent
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpu-agent" \
      org.opencontainers.image.description="Node-level GPU telemetry agent: dcgm-exporter compatible metrics, sub-second sampling, pod attribution, push stream" \
      org.opencontainers.image.source="https://github.com/gpu-telemetry/agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build-agent /out/gpu-agent /usr/bin/gpu-agent
# dcgm-exporter's field lists where its image has them: its Helm chart
# passes -f /etc/dcgm-exporter/dcp-metrics-included.csv by default.
COPY deploy/dcgm-exporter/*.csv /etc/dcgm-exporter/
USER 65532:65532
EXPOSE 9400 9401
ENTRYPOINT ["/usr/bin/gpu-agent"]
