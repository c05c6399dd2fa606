package fakeapi

import (
	"context"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The agent's own pod client and watcher, pointed at the fake through a
// kubeconfig, sync this node's pods (and not another node's) and find
// them by UID and container ID.
func TestAgentPodWatch(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	s := Start(
		Pod("node-a", "media", "sfu-0", "11111111-2222-4333-8444-555555555555", "sfu="+id),
		Pod("node-b", "media", "elsewhere", "99999999-2222-4333-8444-555555555555"),
	)
	defer s.Close()
	kc, err := s.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	client, err := podwatch.NewClient(kc)
	if err != nil {
		t.Fatal(err)
	}
	w, err := podwatch.New(client, "node-a", podwatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := testutil.Poll(t.Context(), 10*time.Second, func() (bool, error) { return w.HasSynced(), nil }); err != nil {
		t.Fatalf("not synced: %v; requests %+v", err, s.Requests())
	}
	if p, ok := w.Lookup("11111111-2222-4333-8444-555555555555"); !ok || p.Name != "sfu-0" || p.Namespace != "media" {
		t.Errorf("Lookup = %+v, %v; want media/sfu-0", p, ok)
	}
	if p, name, ok := w.Container(id); !ok || p.Name != "sfu-0" || name != "sfu" {
		t.Errorf("Container = %+v %q %v; want sfu-0's sfu", p, name, ok)
	}
	if _, ok := w.Lookup("99999999-2222-4333-8444-555555555555"); ok {
		t.Error("another node's pod was listed: the field selector was not applied")
	}
	reqs := s.Requests()
	if len(reqs) == 0 || reqs[0].FieldSelector != "spec.nodeName=node-a" {
		t.Errorf("requests %+v; want the first with fieldSelector spec.nodeName=node-a", reqs)
	}
	t.Logf("requests: %+v", reqs)
}
