package cluster

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

// deployed is what Deploy/Apply stored, for Deploy/RBAC.
type deployed struct {
	objs []*unstructured.Unstructured
	ok   bool // every object was applied
}

// find returns the applied object of kind and name.
func (d *deployed) find(kind, name string) *unstructured.Unstructured {
	for _, o := range d.objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// deploy applies deploy/ to the API server as a user would (kubectl apply
// -k deploy/, server-side), then proves that the agent's ServiceAccount
// can do what its pod watch needs and nothing else. What it leaves behind
// is deleted at the end, except the namespace: without the namespace
// controller (kube-controller-manager runs three controllers) it would
// stay Terminating, which nothing after this needs.
func (e *env) deploy(ctx context.Context, t *testing.T) {
	d := &deployed{}
	t.Cleanup(func() {
		for _, o := range slices.Backward(d.objs) {
			if o.GetKind() == "Namespace" {
				continue
			}
			if err := e.cp.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	})
	t.Run("Apply", func(t *testing.T) { e.applyDeploy(ctx, t, d) })
	t.Run("Helm", func(t *testing.T) {
		if !d.ok {
			t.Fatal("deploy/ was not applied (see Deploy/Apply): the chart's objects need its namespace and CRDs")
		}
		e.applyHelm(ctx, t)
	})
	t.Run("RBAC", func(t *testing.T) {
		if !d.ok {
			t.Fatal("deploy/ was not applied (see Deploy/Apply)")
		}
		e.agentRBAC(ctx, t, d)
	})
	t.Run("AgentPodWatch", func(t *testing.T) {
		if !d.ok {
			t.Fatal("deploy/ was not applied (see Deploy/Apply)")
		}
		e.agentPodWatch(ctx, t, d)
	})
}

// applyDeploy installs the Prometheus Operator's CRDs from its module
// (KEDA's are in already), then server-side applies every object of the
// kustomize build of deploy/, one by one and in its order (the
// Namespace first), with strict field validation: the API server's own
// schemas, CRDs' included, judge every field.
func (e *env) applyDeploy(ctx context.Context, t *testing.T, d *deployed) {
	start := time.Now()
	crds, err := PrometheusOperatorCRDs(ctx)
	if err != nil {
		skipOrFail(t, err)
	}
	if err := e.cp.InstallCRDs(ctx, crds...); err != nil {
		t.Fatalf("the Prometheus Operator's CRDs (%s): %v", PrometheusOperatorVersion, err)
	}
	crdTime := time.Since(start)

	objs, err := Objects(deployBuild)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	var kinds map[string]int
	d.objs, kinds = e.applyAll(ctx, t, deployBuild, objs, false)
	if t.Failed() {
		return
	}
	d.ok = true
	// The namespaced objects are in the namespace the manifests name.
	if ns := d.find("Namespace", "gpu-agent"); ns == nil {
		t.Error("deploy/ has no Namespace gpu-agent")
	}
	for _, o := range d.objs {
		if o.GetNamespace() != "" && o.GetNamespace() != "gpu-agent" {
			t.Errorf("%s %s applied in namespace %s, want gpu-agent", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	t.Logf("the API server accepted all %d objects of deploy/ (%v), server-side applied with fieldValidation=Strict, in %s (the Prometheus Operator %s CRDs in %s)",
		len(d.objs), kinds, time.Since(start).Round(time.Millisecond), PrometheusOperatorVersion, crdTime.Round(time.Millisecond))

	// The validation is live: one unknown field, in a built-in kind and in
	// a CRD's, and the same apply is refused. (Server-side apply refuses a
	// field outside the schema whatever fieldValidation says, and answers
	// 500, not 400: the message is what tells it.)
	for _, kind := range []string{"DaemonSet", "ServiceMonitor"} {
		o := d.find(kind, "gpu-agent")
		if o == nil {
			t.Fatalf("deploy/ has no %s gpu-agent", kind)
		}
		bad := source(objs, o).DeepCopy()
		if err := unstructured.SetNestedField(bad.Object, "1", "spec", "notAField"); err != nil {
			t.Fatal(err)
		}
		_, _, err := e.cp.ApplyStrict(ctx, bad, true)
		if err == nil || !strings.Contains(err.Error(), ".spec.notAField: field not declared in schema") {
			t.Errorf("%s with spec.notAField: the API server answered %v (code %d), want the field refused", kind, err, statusCode(err))
		}
	}
}

// applyAll server-side applies objs (from file) one by one in their
// order, strictly, and returns what the API server stored and how many of
// each kind. Any refusal or warning fails t, except the one PodSecurity
// warning namespace.yaml asks for.
func (e *env) applyAll(ctx context.Context, t *testing.T, file string, objs []*unstructured.Unstructured, dryRun bool) ([]*unstructured.Unstructured, map[string]int) {
	t.Helper()
	var stored []*unstructured.Unstructured
	kinds := map[string]int{}
	for _, o := range objs {
		got, warnings, err := e.cp.ApplyStrict(ctx, o, dryRun)
		if err != nil {
			t.Errorf("the API server refused %s %s/%s from %s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), file, err)
			continue
		}
		for _, w := range warnings {
			// namespace.yaml asks for it: enforce privileged, warn
			// baseline, which refuses the agent's hostPaths.
			if o.GetKind() == "DaemonSet" && strings.HasPrefix(w, `would violate PodSecurity "baseline:latest": hostPath volumes`) {
				t.Logf("the API server warned, as namespace.yaml intends (warn: baseline), on %s %s: %s", o.GetKind(), o.GetName(), w)
				continue
			}
			t.Errorf("the API server warned on %s %s/%s from %s: %s", o.GetKind(), o.GetNamespace(), o.GetName(), file, w)
		}
		if got.GetUID() == "" || got.GetNamespace() != o.GetNamespace() {
			t.Errorf("%s %s: stored as %s/%s (uid %q)", o.GetKind(), o.GetName(), got.GetNamespace(), got.GetName(), got.GetUID())
		}
		stored = append(stored, got)
		kinds[o.GetKind()]++
	}
	return stored, kinds
}

// helmDefault is the chart's default render, which test/deploy's
// TestHelmDefaultCommitted keeps equal to helm template's (helm cannot be
// linked into this module either).
const helmDefault = "../deploy/testdata/helm/default.yaml"

// helmOrder is the order helm install creates these kinds in
// (helm.sh/helm/v4/pkg/release/v1/util.InstallOrder); kinds it does not
// know, custom resources among them, come last.
var helmOrder = []string{"Namespace", "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap",
	"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet", "Deployment"}

// applyHelm server-side applies the chart's default render in helm
// install's order, strictly and as a dry run: the API server validates
// and admits every object without storing it, since the chart's defaults
// are deploy/'s objects under the same names (test/deploy checks that),
// applied already.
func (e *env) applyHelm(ctx context.Context, t *testing.T) {
	objs, err := Objects(helmDefault)
	if err != nil {
		t.Fatal(err)
	}
	rank := func(o *unstructured.Unstructured) int {
		if i := slices.Index(helmOrder, o.GetKind()); i >= 0 {
			return i
		}
		return len(helmOrder)
	}
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int { return rank(a) - rank(b) })
	start := time.Now()
	stored, kinds := e.applyAll(ctx, t, helmDefault, objs, true)
	if !t.Failed() {
		t.Logf("the API server accepted all %d objects of the chart's default render (%v), server-side applied with fieldValidation=Strict as a dry run, in %s",
			len(stored), kinds, time.Since(start).Round(time.Millisecond))
	}
}

// source is the manifest o was applied from.
func source(objs []*unstructured.Unstructured, o *unstructured.Unstructured) *unstructured.Unstructured {
	for _, s := range objs {
		if s.GetKind() == o.GetKind() && s.GetName() == o.GetName() && s.GetNamespace() == o.GetNamespace() {
			return s
		}
	}
	return nil
}

// rbacNode is the node name the RBAC test's pods are bound to; no agent
// of the other tests has it.
const rbacNode = "node-rbac"

// agentRBAC: a token of the agent's ServiceAccount, minted as the
// kubelet mints a pod's, lists and watches the pods of a node, as the
// agent's pod watch does, and is refused everything else.
func (e *env) agentRBAC(ctx context.Context, t *testing.T, d *deployed) {
	ds := d.find("DaemonSet", "gpu-agent")
	if ds == nil {
		t.Fatal("deploy/ has no DaemonSet gpu-agent")
	}
	saName, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName")
	if sa := d.find("ServiceAccount", saName); sa == nil || sa.GetNamespace() != ds.GetNamespace() {
		t.Fatalf("the DaemonSet runs as serviceaccount %q, which deploy/ does not create in %s", saName, ds.GetNamespace())
	}
	agentNS := ds.GetNamespace()
	start := time.Now()
	cfg, err := e.cp.TokenConfig(ctx, agentNS, saName)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	user := "system:serviceaccount:" + agentNS + ":" + saName
	if r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the token does not authenticate: %v", err)
	} else if r.Status.UserInfo.Username != user {
		t.Fatalf("the token authenticates as %q, want %q", r.Status.UserInfo.Username, user)
	}

	// What the RBAC grants, as the API server sums it up for a token in
	// two namespaces, beyond what any ServiceAccount is granted (the
	// default one of the default namespace, which no binding names, as
	// the baseline): get, list and watch of pods, and nothing else.
	baseCfg, err := e.cp.TokenConfig(ctx, "default", "default")
	if err != nil {
		t.Fatal(err)
	}
	base, err := kubernetes.NewForConfig(baseCfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"get pods", "list pods", "watch pods"}
	for _, ns := range []string{agentNS, "default"} {
		granted, baseline := rules(ctx, t, client, ns), rules(ctx, t, base, ns)
		var extra, missing []string
		for r := range granted {
			if !baseline[r] {
				extra = append(extra, r)
			}
		}
		for r := range baseline {
			if !granted[r] {
				missing = append(missing, r)
			}
		}
		slices.Sort(extra)
		if !slices.Equal(extra, want) || len(missing) > 0 {
			t.Errorf("in namespace %s the agent's token may, beyond any serviceaccount, %q (want %q), and lacks %q", ns, extra, want, missing)
		}
	}

	// The pod watch's own calls, for real: the list and watch of one
	// node's pods across namespaces (internal/podwatch), which sees a pod bound
	// to the node after the watch began and not one of another node.
	pods := client.CoreV1().Pods("")
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + rbacNode}
	list, err := pods.List(ctx, sel)
	if err != nil {
		t.Fatalf("the agent's token cannot list its node's pods: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sel.ResourceVersion = list.ResourceVersion
	w, err := pods.Watch(wctx, sel)
	if err != nil {
		t.Fatalf("the agent's token cannot watch its node's pods: %v", err)
	}
	defer w.Stop()
	other := e.createPod(ctx, t, "rbac-other-node", "node-elsewhere")
	mine := e.createPod(ctx, t, "rbac-on-node", rbacNode)
	for seen := false; !seen; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch ended before the pod on the node came")
			}
			p, isPod := ev.Object.(*corev1.Pod)
			switch {
			case ev.Type == watch.Error || !isPod:
				t.Fatalf("watch: %v %v", ev.Type, ev.Object)
			case p.UID == other.UID:
				t.Fatalf("the watch of %s delivered %s of node %s", rbacNode, p.Name, p.Spec.NodeName)
			case ev.Type == watch.Added && p.UID == mine.UID:
				seen = true
			}
		case <-wctx.Done():
			t.Fatalf("the watch of %s's pods never delivered %s", rbacNode, mine.Name)
		}
	}
	// A ClusterRole, as deploy/rbac.yaml says: the field selector, not
	// RBAC, keeps an agent to its node; any pod may be read.
	if _, err := client.CoreV1().Pods(other.Namespace).Get(ctx, other.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("get of a pod of another node: %v (deploy/rbac.yaml grants get on every pod)", err)
	}

	// Everything else is refused with 403 by the API server, each asked
	// for real.
	raw := client.CoreV1().RESTClient()
	forbidden := []struct {
		what string
		do   func() error
	}{
		{"list secrets in " + agentNS, func() error {
			_, err := client.CoreV1().Secrets(agentNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list secrets in every namespace", func() error {
			_, err := client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"get a secret", func() error {
			_, err := client.CoreV1().Secrets("default").Get(ctx, "any", metav1.GetOptions{})
			return err
		}},
		{"watch secrets", func() error {
			w, err := client.CoreV1().Secrets("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"get pods/log", func() error {
			return raw.Get().Namespace(mine.Namespace).Resource("pods").Name(mine.Name).SubResource("log").Do(ctx).Error()
		}},
		{"create pods/exec", func() error {
			return raw.Post().Namespace(mine.Namespace).Resource("pods").Name(mine.Name).SubResource("exec").Param("command", "true").Do(ctx).Error()
		}},
		{"create pods/eviction", func() error {
			return raw.Post().Namespace(mine.Namespace).Resource("pods").Name(mine.Name).SubResource("eviction").Body([]byte(`{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"` + mine.Name + `"}}`)).Do(ctx).Error()
		}},
		{"create a pod", func() error {
			_, err := client.CoreV1().Pods("default").Create(ctx, testPod("rbac-by-agent", rbacNode), metav1.CreateOptions{})
			return err
		}},
		{"delete a pod", func() error {
			return client.CoreV1().Pods(mine.Namespace).Delete(ctx, mine.Name, metav1.DeleteOptions{})
		}},
		{"patch a pod", func() error {
			_, err := client.CoreV1().Pods(mine.Namespace).Patch(ctx, mine.Name, types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"patch pods/status", func() error {
			_, err := client.CoreV1().Pods(mine.Namespace).Patch(ctx, mine.Name, types.MergePatchType, []byte(`{"status":{"message":"x"}}`), metav1.PatchOptions{}, "status")
			return err
		}},
		{"list configmaps", func() error {
			_, err := client.CoreV1().ConfigMaps(agentNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list nodes", func() error {
			_, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list deployments", func() error {
			_, err := client.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"mint a token of its own serviceaccount", func() error {
			_, err := client.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, saName, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("%s with the agent's token: %v, want 403 Forbidden", f.what, err)
		}
	}
	// And the same answers from the authorizer, for the log.
	for _, a := range []struct {
		attrs authorizationv1.ResourceAttributes
		allow bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "kube-system"}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: agentNS}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods", Subresource: "log", Namespace: "default"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: "default"}, false},
		{authorizationv1.ResourceAttributes{Verb: "delete", Resource: "pods", Namespace: "default"}, false},
	} {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &a.attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != a.allow {
			t.Errorf("access review %+v: allowed %v, want %v (%s)", a.attrs, r.Status.Allowed, a.allow, r.Status.Reason)
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("the agent's token (%s): lists and watches the pods of a node across namespaces; 403 on %d other requests (secrets, pods/log, exec, eviction, pod writes, configmaps, nodes, deployments, tokens); %s",
		user, len(forbidden), time.Since(start).Round(time.Millisecond))
}

// createPod creates a pod bound to node in the default namespace (no
// kubelet runs it: it stays Pending), deleted when the test ends.
func (e *env) createPod(ctx context.Context, t *testing.T, name, node string) *corev1.Pod {
	t.Helper()
	p, err := e.cp.Client.CoreV1().Pods("default").Create(ctx, testPod(name, node), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.cp.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
			t.Errorf("deleting pod %s: %v", p.Name, err)
		}
	})
	return p
}

func testPod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "server", Image: "registry.invalid/gpu-workload:0"}},
		},
	}
}

func statusCode(err error) int32 {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Code
	}
	return 0
}

// rules is what the API server says client may do in ns (a
// SelfSubjectRulesReview), one "verb resource" entry per pair, the group
// and names appended when not empty; non-resource URLs as "verb URL".
func rules(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string) map[string]bool {
	t.Helper()
	r, err := client.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.Incomplete {
		t.Fatalf("rules review in %s incomplete: %s", ns, r.Status.EvaluationError)
	}
	out := map[string]bool{}
	for _, rule := range r.Status.ResourceRules {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					k := v + " " + res
					if g != "" {
						k += "." + g
					}
					if len(rule.ResourceNames) > 0 {
						k += " " + strings.Join(rule.ResourceNames, ",")
					}
					out[k] = true
				}
			}
		}
	}
	for _, rule := range r.Status.NonResourceRules {
		for _, u := range rule.NonResourceURLs {
			for _, v := range rule.Verbs {
				out[v+" "+u] = true
			}
		}
	}
	return out
}

// agentPodWatch runs the real agent with the ServiceAccount token as its
// --kubeconfig, on NVIDIA's mock NVML (the pod watch is off with
// --simulate), and proves its pod watch names pods through that token:
// one GPU time-sliced between two pods bound to the agent's node, each
// running a process whose cgroup names the pod's UID, which only the API
// server can turn into a pod name. The agent exposes no metric of its pod
// watch; what shows that it works is each pod's series carrying its own
// process's utilization instead of the device's. Pod A exists before the
// agent starts (its list), pod B comes after (its watch). The same agent
// with a token that RBAC grants nothing logs the 403 and cannot do it.
func (e *env) agentPodWatch(ctx context.Context, t *testing.T, d *deployed) {
	start := time.Now()
	lib, configs, err := mockNVML()
	if err != nil {
		skipOrFail(t, err)
	}
	ds := d.find("DaemonSet", "gpu-agent")
	saName, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName")
	procs := []gpuProc{{pid: 5001, sm: 20}, {pid: 5002, sm: 45}}
	profile, uuid, err := sharedGPUProfile(configs, procs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	profileFile, procfs := filepath.Join(dir, "profile.yaml"), filepath.Join(dir, "proc")
	if err := os.WriteFile(profileFile, profile, 0o644); err != nil {
		t.Fatal(err)
	}
	// The kubelet's view: both pods hold a replica of GPU 0 (NVIDIA's
	// device plugin with time-slicing).
	names := []string{"rbac-shared-a", "rbac-shared-b"}
	kubelet, err := fk.Start(fk.TempSocketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kubelet.Stop)
	kubelet.SetPods([]*podresourcesv1.PodResources{
		fk.Pod("default", names[0], fk.Container("server", fk.Devices("nvidia.com/gpu.shared", uuid+"::0"))),
		fk.Pod("default", names[1], fk.Container("server", fk.Devices("nvidia.com/gpu.shared", uuid+"::1"))),
	})
	a := e.createPod(ctx, t, names[0], rbacNode)
	if err := writeCgroup(procfs, procs[0].pid, string(a.UID), strings.Repeat("a1", 32)); err != nil {
		t.Fatal(err)
	}

	agent := func(name string, cfg *rest.Config) (metrics func() string, p *testutil.Proc) {
		t.Helper()
		kc, err := e.cp.WriteTokenKubeconfig(cfg, name+".kubeconfig")
		if err != nil {
			t.Fatal(err)
		}
		port, err := testutil.FreePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		web := "127.0.0.1:" + strconv.Itoa(port)
		p, err = startProcess(e.dir, name, []string{"MOCK_NVML_CONFIG=" + profileFile, "NODE_NAME=" + rbacNode}, e.agentBin,
			"--nvml.library-path="+lib, "--interval=100ms",
			"--kubelet.pod-resources-socket="+kubelet.Path(), "--kubelet.poll-interval=100ms",
			"--path.procfs="+procfs, "--kubeconfig="+kc,
			"--web.listen-address="+web, "--grpc.listen-address=")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = p.Stop(stopGrace)
			if t.Failed() {
				t.Logf("--- the end of %s's log (%s):\n%s", name, p.LogFile(), p.Tail(25))
			}
		})
		if err := p.WaitHTTP(ctx, nil, "http://"+web+"/readyz", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		return func() string {
			resp, err := http.Get("http://" + web + "/metrics")
			if err != nil {
				return ""
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}, p
	}
	util := func(body, pod string) (float64, bool) {
		return series(body, "DCGM_FI_DEV_GPU_UTIL", map[string]string{"UUID": uuid, "pod": pod})
	}
	waitShares := func(metrics func() string, pods int) {
		t.Helper()
		var body string
		if err := testutil.Poll(ctx, 20*time.Second, func() (bool, error) {
			body = metrics()
			for i := range pods {
				if v, ok := util(body, names[i]); !ok || v != float64(procs[i].sm) {
					return false, nil
				}
			}
			return true, nil
		}); err != nil {
			a, _ := util(body, names[0])
			b, _ := util(body, names[1])
			t.Fatalf("pods' own shares of GPU 0 never served (%v): %s %v, %s %v; want %d and %d", err, names[0], a, names[1], b, procs[0].sm, procs[1].sm)
		}
	}

	cfg, err := e.cp.TokenConfig(ctx, ds.GetNamespace(), saName)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	metrics, p := agent("agent-token", cfg)
	waitShares(metrics, 1) // listed
	listed := time.Since(started)
	b := e.createPod(ctx, t, names[1], rbacNode)
	created := time.Now()
	if err := writeCgroup(procfs, procs[1].pid, string(b.UID), strings.Repeat("b2", 32)); err != nil {
		t.Fatal(err)
	}
	waitShares(metrics, 2) // watched
	watched := time.Since(created)
	log := p.Output()
	if !regexp.MustCompile(`msg="pod watch synced" .*node=`+rbacNode+` pods=1\n`).MatchString(log) || strings.Contains(log, "pod watch failed") {
		t.Errorf("the agent's log does not say its pod watch synced without failing:\n%s", p.Tail(25))
	}

	// The control: a token RBAC grants nothing (the default
	// serviceaccount of the default namespace). The agent logs the 403
	// once, and its pods see the device's utilization, not their own.
	baseCfg, err := e.cp.TokenConfig(ctx, "default", "default")
	if err != nil {
		t.Fatal(err)
	}
	denied, dp := agent("agent-no-rbac", baseCfg)
	if err := testutil.Poll(ctx, 10*time.Second, func() (bool, error) {
		l := dp.Output()
		return strings.Contains(l, "pod watch failed") && strings.Contains(l, "forbidden"), nil
	}); err != nil {
		t.Fatalf("the agent without RBAC never logged a forbidden pod watch:\n%s", dp.Tail(25))
	}
	time.Sleep(500 * time.Millisecond) // five ticks
	body := denied()
	if v, ok := util(body, names[0]); !ok || v != float64(procs[0].sm+procs[1].sm) {
		t.Errorf("without RBAC, pod %s's GPU 0 utilization is %v (present %v), want the device's %d", names[0], v, ok, procs[0].sm+procs[1].sm)
	}
	t.Logf("the agent on the token (--kubeconfig, --node-name=%s, mock NVML) named its node's pods: one listed (its share served %s after the agent started), one created later watched (its share served %s after its creation); without RBAC it logged the 403 and its pods saw the GPU's utilization; %s",
		rbacNode, listed.Round(time.Millisecond), watched.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
