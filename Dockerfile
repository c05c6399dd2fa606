# Builds the agent. go-nvml needs cgo (gcc) at build time but no NVIDIA
# driver: libnvidia-ml.so.1 is loaded at start, from the driver that the
# NVIDIA container toolkit mounts into the container.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN CGO_ENABLED=1 CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
    go build -trimpath \
      -ldflags "-s -w -X github.com/gpu-telemetry/agent/internal/agent.Version=${VERSION} -X github.com/gpu-telemetry/agent/internal/agent.Revision=${REVISION}" \
      -o /out/gpu-agent ./cmd/agent

# distroless/base has glibc, which dlopen of the driver's library needs.
FROM gcr.io/distroless/base-debian12
COPY --from=build /out/gpu-agent /usr/bin/gpu-agent
# dcgm-exporter's field lists where its image has them: its Helm chart
# passes -f /etc/dcgm-exporter/dcp-metrics-included.csv by default.
COPY deploy/dcgm-exporter/*.csv /etc/dcgm-exporter/
EXPOSE 9400
ENTRYPOINT ["/usr/bin/gpu-agent"]
