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
// pods are fixed at start; watches then stay open and quiet until the
// client leaves or Close.
package fakeapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// resourceVersion is the one version of the fixed pod set.
const resourceVersion = "100"

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
	pods []corev1.Pod
	quit chan struct{}

	mu       sync.Mutex
	requests []Request
	closed   bool
}

// Start serves pods on a loopback port until Close.
func Start(pods ...corev1.Pod) *Server {
	s := &Server{pods: pods, quit: make(chan struct{})}
	for i := range s.pods {
		s.pods[i].TypeMeta = metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}
		s.pods[i].ResourceVersion = resourceVersion
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
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
	s.mu.Unlock()
	sel, err := fields.ParseSelector(req.FieldSelector)
	if err != nil {
		status(w, http.StatusBadRequest, "BadRequest", "fieldSelector: "+err.Error())
		return
	}
	var pods []corev1.Pod
	for _, p := range s.pods {
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
	select { // nothing changes: hold the watch open
	case <-r.Context().Done():
	case <-s.quit:
	}
}

// status answers a metav1.Status error, as the API server does.
func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Code: int32(code), Reason: metav1.StatusReason(reason), Message: msg})
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
