package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// change is a Deployment's spec.replicas from a moment on, as the watch
// delivered it.
type change struct {
	at       time.Time
	replicas int32
}

// ReplicaRecorder watches the Deployments of a namespace and keeps every
// change of spec.replicas with the time the watch delivered it: what KEDA
// (0 <-> 1) and the HPA controller (1 <-> N) write.
type ReplicaRecorder struct {
	mu      sync.Mutex
	history map[string][]change
	notify  chan struct{}
}

// RecordReplicas starts the watch; it ends with ctx.
func RecordReplicas(ctx context.Context, client kubernetes.Interface, ns string) (*ReplicaRecorder, error) {
	r := &ReplicaRecorder{history: map[string][]change{}, notify: make(chan struct{})}
	list, err := client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range list.Items {
		r.record(&list.Items[i])
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.AppsV1().Deployments(ns).Watch(ctx, o)
		},
	})
	if err != nil {
		return nil, err
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				if d, ok := ev.Object.(*appsv1.Deployment); ok && ev.Type != watch.Deleted {
					r.record(d)
				}
			}
		}
	}()
	return r, nil
}

func (r *ReplicaRecorder) record(d *appsv1.Deployment) {
	var n int32 = 1
	if d.Spec.Replicas != nil {
		n = *d.Spec.Replicas
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.history[d.Name]
	if len(h) > 0 && h[len(h)-1].replicas == n {
		return
	}
	r.history[d.Name] = append(h, change{at: now, replicas: n})
	close(r.notify)
	r.notify = make(chan struct{})
}

// Current returns the Deployment's latest spec.replicas seen, -1 if none.
func (r *ReplicaRecorder) Current(name string) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.history[name]
	if len(h) == 0 {
		return -1
	}
	return h[len(h)-1].replicas
}

// Changes returns the Deployment's replica counts seen after since, in
// order.
func (r *ReplicaRecorder) Changes(name string, since time.Time) []int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int32
	for _, c := range r.history[name] {
		if c.at.After(since) {
			out = append(out, c.replicas)
		}
	}
	return out
}

// WaitFor returns when the Deployment's spec.replicas first became want
// after since.
func (r *ReplicaRecorder) WaitFor(ctx context.Context, name string, want int32, since time.Time, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r.mu.Lock()
		for _, c := range r.history[name] {
			if c.at.After(since) && c.replicas == want {
				r.mu.Unlock()
				return c.at, nil
			}
		}
		notify := r.notify
		r.mu.Unlock()
		select {
		case <-notify:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("deployment %s: spec.replicas never %d within %s (now %d, changes since the step %v)",
				name, want, timeout, r.Current(name), r.Changes(name, since))
		}
	}
}
