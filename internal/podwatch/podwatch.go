// Package podwatch turns the pod UIDs and container IDs that internal/cgroup reads
// from cgroups into namespaces, pod names and container names; and, when
// asked (Options.PodLabels, Options.PodUID), gives the pods' UIDs and
// labels by namespace and name (PodMeta), which the kubelet's
// pod-resources API does not carry.
//
// The kubelet's pod-resources API names pods but not their UIDs, and the
// cgroup path names UIDs but not pods, so the join needs a source that has
// both: the API server. A node-scoped pod informer (field selector
// spec.nodeName=<node>) lists this node's pods once and then follows a watch,
// so the sampler's reads every tick are map lookups in memory and never an
// API call.
//
// Cost and failure modes of the external calls: one LIST of the node's pods at
// start and whenever the watch cannot resume (at most about 110 pods per
// node by the kubelet's default limit), then one long-lived WATCH. While the API server is
// unreachable the index keeps what it had and the reflector retries with
// backoff; pods created meanwhile are not found until it comes back, and
// callers fall back to the pod UID. A watch the server ends, and a resume
// it answers 410 Gone, cost a LIST after the same backoff (0.8 s doubling
// to 30 s): never a loop, whatever the server does.
package podwatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/gpu-telemetry/agent/internal/app"
	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
)

// ConfigHashAnnotation is set by the kubelet on a static pod's mirror pod.
// The cgroup path of a static pod carries this hash as its UID (the kubelet
// derives the UID from the manifest), while the mirror pod the API server
// holds has a UID of its own: the hash is the only link between the two.
const ConfigHashAnnotation = "kubernetes.io/config.hash"

// Pod names a pod. UID is the API server's metadata.uid, which for a static
// pod is not the config hash its cgroup carries.
type Pod struct {
	Namespace string
	Name      string
	UID       string
}

// PodsClient is what the watcher calls: List and Watch of pods in all
// namespaces. NewClient returns one; so does the CoreV1().Pods("") of a
// kubernetes.Interface, such as client-go's fake clientset in tests.
//
// It is this narrow so that the agent need not link client-go's full
// clientset, whose scheme registers every API group of Kubernetes: with it
// the stripped agent binary grows from 18 to 55 MB; with NewClient's
// core/v1-only client, to 28 MB.
//
// A client that cannot serve watch-list streams should also have an
// IsWatchListSemanticsUnSupported method that returns true, as client-go's
// fakes do; otherwise the reflector waits for the end of a stream such a
// client never sends.
type PodsClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Options tune a Watcher. The zero value is usable.
type Options struct {
	// Logger receives the watcher's state changes; nil discards them.
	Logger *slog.Logger
	// ResyncPeriod replays the cache to the index at this period; 0, the
	// default, never does: the index is rebuilt from events alone, and a
	// resync would only repeat what it already holds.
	ResyncPeriod time.Duration

	// PodLabels keeps each pod's labels that it allows, for PodMeta
	// (dcgm-exporter's --kubernetes-enable-pod-labels, its allowlist
	// --kubernetes-pod-label-allowlist-regex); nil, the default, keeps
	// none: on a node of many pods their labels are most of what a
	// stripped pod would hold, so they are stripped unless asked for.
	PodLabels *attribution.LabelAllowlist
	// PodUID puts each pod's UID in PodMeta (--kubernetes-enable-pod-uid).
	// The index holds UIDs either way: cgroups name pods by UID.
	PodUID bool
}

// Watcher keeps an index of the pods on one node. Lookup and Container are
// safe for concurrent use with Run and with each other.
type Watcher struct {
	node     string
	log      *slog.Logger
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration

	// Writes come from the informer's one handler goroutine; reads come
	// from the sampler every tick and from collectors. A RWMutex keeps
	// reads to a map lookup without copying the index on every pod event,
	// which a copy-on-write snapshot would do for every status change.
	mu sync.RWMutex
	// pods is keyed by metadata.uid: it is what an update or a delete
	// names, and it holds what to remove from the other two maps.
	pods map[types.UID]*entry
	// byUID holds each pod under its UID and, for a static pod, also
	// under its config hash.
	byUID map[string]*entry
	// byContainer holds each container's bare ID (no "containerd://").
	byContainer map[string]containerRef
	// byName holds each pod under namespace/name, for PodMeta; nil when
	// neither labels nor UIDs were asked for.
	byName map[string]*entry
	labels *attribution.LabelAllowlist // Options.PodLabels
	uid    bool                        // Options.PodUID

	running chan struct{}
	errMu   sync.Mutex
	lastErr string // the failure last logged; "" once a list succeeds
	errors  uint64 // failed lists and watches, under errMu
	lists   uint64 // lists begun, watch-lists included, under errMu
}

// Stats is what the watch has done so far, for the agent's metrics.
type Stats struct {
	Synced bool   // the first list of the node's pods has been indexed
	Pods   int    // pods indexed now
	Errors uint64 // failed lists and watches (a closed or expired watch is not one)
	Lists  uint64 // lists of the node's pods: the first, and one each time the watch cannot resume
}

// Stats returns the watch's state; safe for concurrent use.
func (w *Watcher) Stats() Stats {
	w.mu.RLock()
	pods := len(w.pods)
	w.mu.RUnlock()
	w.errMu.Lock()
	errs, lists := w.errors, w.lists
	w.errMu.Unlock()
	return Stats{Synced: w.HasSynced(), Pods: pods, Errors: errs, Lists: lists}
}

type entry struct {
	pod        Pod
	hash       string
	containers []string
	app        app.PodInfo          // what app discovery reads
	meta       *attribution.PodMeta // nil unless labels or UIDs were asked for
}

type containerRef struct {
	e    *entry
	name string
}

// New builds a Watcher of the pods on node. It makes no API call: Run does.
func New(client PodsClient, node string, opts Options) (*Watcher, error) {
	if client == nil {
		return nil, errors.New("podwatch: nil client")
	}
	if node == "" {
		// Without a node the selector would match every pod of the
		// cluster: a list the agent's memory limit is not sized for.
		return nil, errors.New("podwatch: empty node name")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		node:        node,
		log:         log,
		pods:        make(map[types.UID]*entry),
		byUID:       make(map[string]*entry),
		byContainer: make(map[string]containerRef),
		running:     make(chan struct{}, 1),
		labels:      opts.PodLabels,
		uid:         opts.PodUID,
	}
	if w.labels != nil || w.uid {
		w.byName = make(map[string]*entry)
	}
	w.informer = cache.NewSharedIndexInformerWithOptions(
		// The wrapper lets the reflector ask the client whether it
		// supports watch-list streaming (the fake clientset does not).
		cache.ToListWatcherWithWatchListSemantics(w.listWatch(client), client),
		&corev1.Pod{},
		cache.SharedIndexInformerOptions{ResyncPeriod: opts.ResyncPeriod, ObjectDescription: "pods on " + node},
	)
	// Strip pods before they are stored: a full pod is 5 to 20 kB of
	// specs, managed fields and labels the index never reads (labels
	// only when asked for, and only the allowed ones).
	if err := w.informer.SetTransform(stripper(w.labels)); err != nil {
		return nil, fmt.Errorf("podwatch: setting transform: %w", err)
	}
	if err := w.informer.SetWatchErrorHandlerWithContext(w.watchError); err != nil {
		return nil, fmt.Errorf("podwatch: setting watch error handler: %w", err)
	}
	reg, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.upsert(obj) },
		UpdateFunc: func(_, obj any) { w.upsert(obj) },
		DeleteFunc: w.remove,
	})
	if err != nil {
		return nil, fmt.Errorf("podwatch: adding event handler: %w", err)
	}
	w.reg = reg
	return w, nil
}

// fieldSelector selects the pods bound to node. The API server filters with
// it, so neither the list nor the watch carries other nodes' pods.
func fieldSelector(node string) string {
	return fields.OneTermEqualSelector("spec.nodeName", node).String()
}

// listWatch lists and watches the node's pods, counting lists: a list
// (or a watch-list, which begins with every pod) comes once at start and
// again whenever the watch cannot resume. One that succeeds after a
// logged failure is logged once.
func (w *Watcher) listWatch(pods PodsClient) *cache.ListWatch {
	sel := fieldSelector(w.node)
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			w.listed()
			list, err := pods.List(ctx, o)
			if err == nil {
				w.recovered()
			}
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			initial := o.SendInitialEvents != nil && *o.SendInitialEvents
			if initial {
				w.listed()
			}
			wi, err := pods.Watch(ctx, o)
			if err == nil && initial {
				w.recovered()
			}
			return wi, err
		},
	}
}

func (w *Watcher) listed() {
	w.errMu.Lock()
	w.lists++
	w.errMu.Unlock()
}

// recovered logs the end of a logged failure, once.
func (w *Watcher) recovered() {
	w.errMu.Lock()
	was := w.lastErr
	w.lastErr = ""
	w.errMu.Unlock()
	if was != "" {
		w.log.Info("pod watch works again", "node", w.node)
	}
}

// Run lists and watches the node's pods until ctx is done, then returns nil.
// Call it once.
func (w *Watcher) Run(ctx context.Context) error {
	select {
	case w.running <- struct{}{}:
	default:
		return errors.New("podwatch: run called twice")
	}
	// client-go's reflector logs through klog, to stderr in klog's
	// format, a line each time a watch ends early: the context carries
	// the agent's logger instead, at debug level (quiet), since
	// watchError reports what matters once.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(quiet{w.log.Handler()}))
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), w.HasSynced) {
			w.mu.RLock()
			n := len(w.pods)
			w.mu.RUnlock()
			w.log.Info("pod watch synced", "node", w.node, "pods", n)
		}
	}()
	w.informer.RunWithContext(ctx)
	return nil
}

// HasSynced reports whether the first list of the node's pods has reached
// the index. Before that a miss means "not known yet", not "not a pod here".
func (w *Watcher) HasSynced() bool {
	return w.reg.HasSynced()
}

// Lookup returns the pod with this UID, or the static pod with this config
// hash: either form procpod reads from a cgroup path.
func (w *Watcher) Lookup(uid string) (Pod, bool) {
	w.mu.RLock()
	e, ok := w.byUID[uid]
	w.mu.RUnlock()
	if !ok {
		return Pod{}, false
	}
	return e.pod, true
}

// Container returns the pod and the name of the container with this ID,
// bare as procpod reads it from a cgroup path or with the runtime's scheme
// as the pod's status writes it ("containerd://<id>"). Init and ephemeral
// containers are included.
func (w *Watcher) Container(containerID string) (pod Pod, name string, ok bool) {
	id := bareID(containerID)
	w.mu.RLock()
	c, ok := w.byContainer[id]
	w.mu.RUnlock()
	if !ok {
		return Pod{}, "", false
	}
	return c.e.pod, c.name, true
}

// bareID drops the "<runtime>://" the status puts before a container ID
// (containerd://, cri-o://, docker://), since cgroup paths carry it bare.
func bareID(id string) string {
	if i := strings.Index(id, "://"); i >= 0 {
		return id[i+3:]
	}
	return id
}

func (w *Watcher) upsert(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		w.log.Debug("pod watch: unexpected object", "type", fmt.Sprintf("%T", obj))
		return
	}
	var meta *attribution.PodMeta
	if w.byName != nil {
		meta = w.meta(p) // outside the lock: it sorts and sanitises
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Replace rather than patch: a restarted container has a new ID and
	// the old one must stop resolving.
	w.dropLocked(p.UID)
	// The selector keeps other nodes' pods out; this check keeps them out
	// of the index should a server, proxy or fake ignore it.
	if p.Spec.NodeName != w.node {
		return
	}
	e := &entry{
		pod:  Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)},
		hash: p.Annotations[ConfigHashAnnotation],
		app:  appInfo(p),
	}
	w.pods[p.UID] = e
	w.byUID[string(p.UID)] = e
	if e.hash != "" {
		w.byUID[e.hash] = e
	}
	if w.byName != nil {
		e.meta = meta
		w.byName[nameKey(p.Namespace, p.Name)] = e
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, s := range list {
			id := bareID(s.ContainerID)
			if id == "" {
				continue // not started yet
			}
			e.containers = append(e.containers, id)
			w.byContainer[id] = containerRef{e: e, name: s.Name}
		}
	}
}

func (w *Watcher) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		// The watch missed the delete; the tombstone holds the last
		// state the cache had, stripped like every other.
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		w.log.Debug("pod watch: unexpected deleted object", "type", fmt.Sprintf("%T", obj))
		return
	}
	w.mu.Lock()
	w.dropLocked(p.UID)
	w.mu.Unlock()
}

// dropLocked removes a pod's keys, each only if it still points at this
// pod: after a relist a static pod's new mirror (new UID, same hash) can be
// added before its old mirror is deleted.
func (w *Watcher) dropLocked(uid types.UID) {
	e, ok := w.pods[uid]
	if !ok {
		return
	}
	delete(w.pods, uid)
	if w.byUID[string(uid)] == e {
		delete(w.byUID, string(uid))
	}
	if e.hash != "" && w.byUID[e.hash] == e {
		delete(w.byUID, e.hash)
	}
	// A pod deleted and created again under its name (a StatefulSet's)
	// may be added before the old one is deleted.
	if k := nameKey(e.pod.Namespace, e.pod.Name); w.byName != nil && w.byName[k] == e {
		delete(w.byName, k)
	}
	for _, id := range e.containers {
		if w.byContainer[id].e == e {
			delete(w.byContainer, id)
		}
	}
}

// watchError replaces client-go's default handler, which logs through klog,
// so that failures reach the agent's logger, each distinct one once until
// a list succeeds: a missing RBAC rule fails every retry with the same
// message.
func (w *Watcher) watchError(_ context.Context, _ *cache.Reflector, err error) {
	if errors.Is(err, io.EOF) {
		return // the server closed the watch; the reflector reopens it
	}
	if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		// 410: the watch could not resume from its resource version
		// (etcd compacted past it), and the reflector lists again.
		// The protocol working, not a failure; and the message names
		// resource versions, so it would differ every time.
		w.log.Debug("pod watch expired; listing the node's pods again", "node", w.node, "err", err)
		return
	}
	msg := err.Error()
	w.errMu.Lock()
	repeat := msg == w.lastErr
	w.lastErr = msg
	w.errors++
	w.errMu.Unlock()
	if repeat {
		w.log.Debug("pod watch failed again", "node", w.node, "err", err)
		return
	}
	w.log.Warn("pod watch failed; pod names may be missing or stale until it recovers", "node", w.node, "err", err)
}

// strip keeps what the index reads: names, UID, the config hash, the node,
// and each container's name and ID; and what app discovery reads: the
// phase, the pod IP, the gpu-agent.io/ annotations and, of a pod that has
// one, the containers' ports. No labels: see stripper.
func strip(obj any) (any, error) { return stripper(nil)(obj) }

// stripper is strip that also keeps the labels that labels allows, when
// not nil (for PodMeta). The transform must accept its own output, since
// client-go may transform an object twice: the allowlist reads the keys
// as the API server gives them, and so does a second pass.
func stripper(labels *attribution.LabelAllowlist) cache.TransformFunc {
	return func(obj any) (any, error) { return stripPod(obj, labels) }
}

func stripPod(obj any, labels *attribution.LabelAllowlist) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones and anything else pass through
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      p.Name,
			Namespace: p.Namespace,
			UID:       p.UID,
			// The reflector resumes its watch from the last object's
			// resource version.
			ResourceVersion: p.ResourceVersion,
		},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{
			Phase:                      p.Status.Phase,
			PodIP:                      p.Status.PodIP,
			InitContainerStatuses:      stripStatuses(p.Status.InitContainerStatuses),
			ContainerStatuses:          stripStatuses(p.Status.ContainerStatuses),
			EphemeralContainerStatuses: stripStatuses(p.Status.EphemeralContainerStatuses),
		},
	}
	opted := false // a gpu-agent.io/ annotation: app discovery reads the ports
	for k, v := range p.Annotations {
		if k == ConfigHashAnnotation || strings.HasPrefix(k, app.AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string)
			}
			out.Annotations[k] = v
			opted = opted || k != ConfigHashAnnotation
		}
	}
	if opted {
		// Most pods have ports and few opt in: a kept container is
		// 400 bytes before its ports, three a pod.
		out.Spec.Containers = stripContainers(p.Spec.Containers)
	}
	if labels != nil {
		out.Labels = labels.Filter(p.Labels)
	}
	return out, nil
}

// meta is a pod's PodMeta as the options ask: its UID, its allowed labels.
func (w *Watcher) meta(p *corev1.Pod) *attribution.PodMeta {
	var uid string
	if w.uid {
		uid = string(p.UID)
	}
	var labels map[string]string
	if w.labels != nil {
		// The transform has filtered them already, but upsert also
		// takes pods that did not pass through it.
		labels = w.labels.Filter(p.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
	}
	return attribution.NewPodMeta(uid, labels)
}

func nameKey(namespace, name string) string { return namespace + "/" + name }

var _ attribution.PodMetas = (*Watcher)(nil)

// PodMeta returns the UID and labels of the pod with this namespace and
// name (attribution.PodMetas), as Options asked for them; nil for a pod not
// known (yet), and when neither was asked for.
func (w *Watcher) PodMeta(namespace, name string) *attribution.PodMeta {
	if w.byName == nil {
		return nil
	}
	w.mu.RLock()
	e, ok := w.byName[nameKey(namespace, name)]
	w.mu.RUnlock()
	if !ok {
		return nil
	}
	return e.meta
}

// stripContainers keeps each container's name and ports (name, number,
// protocol): gpu-agent.io/port may name one.
func stripContainers(in []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range in {
		if len(c.Ports) == 0 {
			continue
		}
		ports := make([]corev1.ContainerPort, len(c.Ports))
		for i, pt := range c.Ports {
			ports[i] = corev1.ContainerPort{Name: pt.Name, ContainerPort: pt.ContainerPort, Protocol: pt.Protocol}
		}
		out = append(out, corev1.Container{Name: c.Name, Ports: ports})
	}
	return out
}

// appInfo is what app discovery reads of a (stripped) pod: the ports of a
// pod with gpu-agent.io/ annotations only, as strip keeps them.
func appInfo(p *corev1.Pod) app.PodInfo {
	info := app.PodInfo{
		Namespace: p.Namespace,
		Name:      p.Name,
		UID:       string(p.UID),
		Phase:     string(p.Status.Phase),
		IP:        p.Status.PodIP,
	}
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, app.AnnotationPrefix) {
			if info.Annotations == nil {
				info.Annotations = make(map[string]string)
			}
			info.Annotations[k] = v
		}
	}
	for _, c := range p.Spec.Containers {
		if info.Annotations == nil {
			break
		}
		for _, pt := range c.Ports {
			info.Ports = append(info.Ports, app.Port{Container: c.Name, Name: pt.Name, Number: pt.ContainerPort, Protocol: string(pt.Protocol)})
		}
	}
	return info
}

var _ app.Pods = (*Watcher)(nil)

// AppPods lists the node's pods as app discovery reads them (app.Pods).
// The entries are shared, not copied: they are never modified once
// indexed (an update replaces the entry).
//
// Only pods with a gpu-agent.io/ annotation are listed: no other can be a
// target or a misconfigured one, and discovery runs every --app.interval
// over what is listed (on a node of 500 pods, listing and parsing them all
// each second was 5% of the agent's CPU).
func (w *Watcher) AppPods() []app.PodInfo {
	w.mu.RLock()
	defer w.mu.RUnlock()
	var out []app.PodInfo
	for _, e := range w.pods {
		if e.app.Annotations != nil {
			out = append(out, e.app)
		}
	}
	return out
}

func stripStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, 0, len(in))
	for _, s := range in {
		out = append(out, corev1.ContainerStatus{Name: s.Name, ContainerID: s.ContainerID})
	}
	return out
}

var _ attribution.Names = (*Watcher)(nil)

// Ready reports whether the watch has listed the node's pods
// (attribution.Names): before, a PID's miss means "not known yet".
func (w *Watcher) Ready() bool { return w.HasSynced() }

// Name names the pod of a cgroup's owner (attribution.Names): by container
// ID first (it names the container too), then by pod UID (a process in the
// pod's cgroup but no container's, or a container the watch has not seen
// yet).
func (w *Watcher) Name(o cgroup.Owner) (attribution.Pod, bool) {
	if o.ContainerID != "" {
		if p, c, ok := w.Container(o.ContainerID); ok {
			return attribution.Pod{Namespace: p.Namespace, Name: p.Name, Container: c}, true
		}
	}
	if p, ok := w.Lookup(o.PodUID); ok {
		return attribution.Pod{Namespace: p.Namespace, Name: p.Name}, true
	}
	return attribution.Pod{}, false
}

// quiet is a slog.Handler that passes client-go's log lines on at debug
// level, errors included: they repeat on every retry, and watchError
// reports each failure once. klog's verbosity 5 and up (logr's V(5) is
// slog's level -5), such as the REST client's request and response
// bodies, is dropped.
type quiet struct{ h slog.Handler }

func (q quiet) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelDebug && q.h.Enabled(ctx, slog.LevelDebug)
}

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return q.h.Handle(ctx, r)
}

func (q quiet) WithAttrs(as []slog.Attr) slog.Handler { return quiet{q.h.WithAttrs(as)} }
func (q quiet) WithGroup(name string) slog.Handler    { return quiet{q.h.WithGroup(name)} }
