// Package fakeapi serves the little of the Kubernetes API server that a
// node-scoped pod informer uses: GET /api/v1/pods as a list and as a
// watch, filtered by a spec.nodeName field selector, in JSON. client-go
// talks to it through a kubeconfig (Kubeconfig), so the agent's real
// client (internal/podwatch.NewClient: its REST client, content negotiation,
// reflector and watch decoding) runs end to end without a cluster.
//
// Both ways a reflector fills its cache are served: the watch-list stream
// (sendInitialEvents=true: the pods as ADDED events, then a BOOKMARK
// annotated k8s.io/initial-events-end, as client-go 1.35+ asks by default)
// and the classic list followed by a watch from its resource version. The
// pods are set at start and replaced by SetPods, each time under a new
// resource version; watches stay open and quiet until the client leaves,
// Close, or a fault (SetFaults) ends them, and learn nothing of SetPods:
// a client finds the new pods when it lists again.
//
// Faults make it an API server that drops every watch after a while and
// answers a watch resuming from a resource version with 410 Gone, as one
// behind a proxy with a short timeout, whose etcd compacts often, does.
package fakeapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// firstResourceVersion is the version of the pods given to Start; each
// SetPods adds one.
const firstResourceVersion = 100

// Gone is how a watch that resumes from a resource version is told it is
// too old (Faults.Gone).
type Gone int

const (
	// NotGone serves the watch.
	NotGone Gone = iota
	// GoneStatus answers 410 with a Status of reason Expired, as the API
	// server's watch cache does when it no longer holds the version.
	GoneStatus
	// GoneEvent answers 200 and then one ERROR event holding that
	// Status, as a watch served from etcd does.
	GoneEvent
)

// Faults are the ways the server misbehaves; the zero value is none.
type Faults struct {
	// DropWatchesAfter ends every watch this long after it began, with a
	// bookmark where the client allows them; 0 keeps them open.
	DropWatchesAfter time.Duration
	// Gone answers a watch that resumes from a resource version: not a
	// watch-list (sendInitialEvents), and from a version other than ""
	// or "0".
	Gone Gone
}

// Request is what the server was asked, for the test to check.
type Request struct {
	Watch              bool
	SendInitialEvents  bool
	FieldSelector      string
	ResourceVersion    string
	AcceptContentTypes string
}

// Server is a fake API server of pods.
type Server struct {
	srv  *httptest.Server
	quit chan struct{}

	mu       sync.Mutex
	pods     []corev1.Pod
	version  int // the pods' resource version
	faults   Faults
	requests []Request
	gone     int // watches answered Gone
	closed   bool
}

// Start serves pods on a loopback port until Close.
func Start(pods ...corev1.Pod) *Server {
	s := &Server{quit: make(chan struct{}), version: firstResourceVersion - 1}
	s.SetPods(pods...)
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// SetPods replaces the pods, under a new resource version. Open watches
// are not told: a client sees the change when it lists again.
func (s *Server) SetPods(pods ...corev1.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version++
	rv := strconv.Itoa(s.version)
	s.pods = make([]corev1.Pod, len(pods))
	for i, p := range pods {
		p.TypeMeta = metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}
		p.ResourceVersion = rv
		s.pods[i] = p
	}
}

// SetFaults sets how the server misbehaves from now on: new watches and
// those open alike.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// Lists returns how many times a client has filled its cache: lists, and
// watches that begin with the initial events (watch-list).
func (s *Server) Lists() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if !r.Watch || r.SendInitialEvents {
			n++
		}
	}
	return n
}

// GoneAnswers returns how many watches were answered Gone.
func (s *Server) GoneAnswers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}

// URL is the server's base URL.
func (s *Server) URL() string { return s.srv.URL }

// Requests returns the pod requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Close ends the open watches and stops the server.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	s.mu.Unlock()
	s.srv.Close()
}

// Kubeconfig writes a kubeconfig of the server into dir and returns its
// path.
func (s *Server) Kubeconfig(dir string) (string, error) {
	path := filepath.Join(dir, "kubeconfig")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: %s
contexts:
- name: fake
  context:
    cluster: fake
    user: agent
users:
- name: agent
  user:
    token: fake-token
current-context: fake
`, s.srv.URL)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		return "", fmt.Errorf("fakeapi: %w", err)
	}
	return path, nil
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/api/v1/pods" {
		status(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the fake API server serves GET /api/v1/pods only, not %s %s", r.Method, r.URL.Path))
		return
	}
	q := r.URL.Query()
	req := Request{
		Watch:              q.Get("watch") == "true" || q.Get("watch") == "1",
		SendInitialEvents:  q.Get("sendInitialEvents") == "true",
		FieldSelector:      q.Get("fieldSelector"),
		ResourceVersion:    q.Get("resourceVersion"),
		AcceptContentTypes: r.Header.Get("Accept"),
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	all, version, faults := s.pods, s.version, s.faults
	resume := req.Watch && !req.SendInitialEvents && req.ResourceVersion != "" && req.ResourceVersion != "0"
	gone := resume && faults.Gone != NotGone
	if gone {
		s.gone++
	}
	s.mu.Unlock()
	resourceVersion := strconv.Itoa(version)
	// The version the compaction passed, in the API server's words.
	expired := fmt.Sprintf("too old resource version: %s (%d)", req.ResourceVersion, version)
	if gone && faults.Gone == GoneStatus {
		status(w, http.StatusGone, string(metav1.StatusReasonExpired), expired)
		return
	}
	sel, err := fields.ParseSelector(req.FieldSelector)
	if err != nil {
		status(w, http.StatusBadRequest, "BadRequest", "fieldSelector: "+err.Error())
		return
	}
	var pods []corev1.Pod
	for _, p := range all {
		if sel.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName, "metadata.name": p.Name, "metadata.namespace": p.Namespace}) {
			pods = append(pods, p)
		}
	}
	if !req.Watch {
		list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: resourceVersion}, Items: pods}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ string, obj any) {
		_ = enc.Encode(struct {
			Type   string `json:"type"`
			Object any    `json:"object"`
		}{typ, obj})
	}
	if gone { // GoneEvent
		send("ERROR", statusOf(http.StatusGone, string(metav1.StatusReasonExpired), expired))
		return
	}
	if req.SendInitialEvents {
		for _, p := range pods {
			send("ADDED", p)
		}
		send("BOOKMARK", corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{ResourceVersion: resourceVersion,
				Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}})
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	var drop <-chan time.Time
	if faults.DropWatchesAfter > 0 {
		t := time.NewTimer(faults.DropWatchesAfter)
		defer t.Stop()
		drop = t.C
	}
	select { // nothing is sent: hold the watch open
	case <-r.Context().Done():
	case <-s.quit:
	case <-drop:
		// As the API server does before it ends a watch on its
		// timeout: a bookmark of the version the watch is at, so that
		// the client resumes from it (and is not told of a "very short
		// watch" that had no event, which client-go lists again for).
		if q.Get("allowWatchBookmarks") == "true" {
			send("BOOKMARK", corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
				ObjectMeta: metav1.ObjectMeta{ResourceVersion: resourceVersion}})
		}
	}
}

// status answers a metav1.Status error, as the API server does.
func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(statusOf(code, reason, msg))
}

func statusOf(code int, reason, msg string) metav1.Status {
	return metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Code: int32(code), Reason: metav1.StatusReason(reason), Message: msg}
}

// Pod is a running pod of node with one container per name in
// containers, "name=<64 hex container ID>", as the kubelet reports it
// (containerd://...).
func Pod(node, namespace, name, uid string, containers ...string) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, c := range containers {
		cname, id, _ := strings.Cut(c, "=")
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: cname})
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: cname, ContainerID: "containerd://" + id, Ready: true})
	}
	return p
}
