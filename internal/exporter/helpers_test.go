package exporter

import (
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func pod(ns, name, container, resource string, ids ...string) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name:    container,
		Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}}
}

func listResponse(pods ...*podresourcesv1.PodResources) *podresourcesv1.ListPodResourcesResponse {
	return &podresourcesv1.ListPodResourcesResponse{PodResources: pods}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newTestHandler is the agent's HTTP handler over c, on a fresh registry.
func newTestHandler(tb testing.TB, c *Collector, interval time.Duration) http.Handler {
	tb.Helper()
	h, err := NewHandler(prometheus.NewRegistry(), c, HandlerOptions{Interval: interval, Logger: discardLogger(), Version: "test"})
	if err != nil {
		tb.Fatal(err)
	}
	return h
}
