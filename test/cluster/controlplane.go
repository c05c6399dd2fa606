package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// HPASyncPeriod is kube-controller-manager's
// --horizontal-pod-autoscaler-sync-period here (the default is 15 s): how
// often the HPA controller polls the external metrics, hence KEDA and the
// scaler's GetMetrics, on the scale-out path.
const HPASyncPeriod = time.Second

// serviceCIDR is the API server's --service-cluster-ip-range; serviceIP is
// the kubernetes Service's address in it.
const (
	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1"
)

// KEDANamespace is where KEDA's operator and adapter "run" (POD_NAMESPACE)
// and where the adapter's Service lives.
const KEDANamespace = "keda"

// ControlPlane is a running etcd, kube-apiserver, kube-controller-manager,
// KEDA operator and KEDA metrics adapter.
type ControlPlane struct {
	dir  string
	logf func(string, ...any)
	pki  *pki
	ns   *netns
	port int // the API server's

	procs                             []*testutil.Proc
	etcd, apiserver, kcm, op, adapter *testutil.Proc

	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	// OperatorMetricsService is the KEDA operator's metrics gRPC address,
	// which the adapter calls on every external metrics request.
	OperatorMetricsService string
}

// StartControlPlane starts everything in dir, which must outlive it. Call
// Stop, even after an error (it stops what did start).
func StartControlPlane(ctx context.Context, dir string, bins *Binaries, logf func(string, ...any)) (*ControlPlane, error) {
	c := &ControlPlane{dir: dir, logf: logf}
	var err error
	if c.ns, err = newNetns(); err != nil {
		return c, err
	}
	if c.pki, err = newPKI(filepath.Join(dir, "pki"), c.ns.HostIP, c.ns.NSIP); err != nil {
		return c, err
	}
	steps := []struct {
		name string
		fn   func(context.Context, *Binaries) error
	}{
		{"etcd", c.startEtcd},
		{"kube-apiserver", c.startAPIServer},
		{"kube-controller-manager", c.startControllerManager},
		{"KEDA's CRDs", c.installKEDACRDs},
		{"KEDA operator", c.startOperator},
		{"KEDA metrics adapter", c.startAdapter},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.fn(ctx, bins); err != nil {
			return c, fmt.Errorf("%s: %w", s.name, err)
		}
		logf("%s up in %s", s.name, time.Since(start).Round(time.Millisecond))
	}
	return c, nil
}

// Stop stops every process, newest first, and removes the namespace.
func (c *ControlPlane) Stop() error {
	for i := len(c.procs) - 1; i >= 0; i-- {
		_ = c.procs[i].Stop(stopGrace)
	}
	if c.ns != nil {
		return c.ns.Close()
	}
	return nil
}

// Alive returns an error naming the first component that exited.
func (c *ControlPlane) Alive() error {
	for _, p := range c.procs {
		if err := p.Alive(); err != nil {
			return err
		}
	}
	return nil
}

func (c *ControlPlane) start(name string, env []string, argv ...string) (*testutil.Proc, error) {
	p, err := startProcess(c.dir, name, env, argv[0], argv[1:]...)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

func (c *ControlPlane) startEtcd(ctx context.Context, _ *Binaries) error {
	bin, err := lookTool("etcd", "etcd-server")
	if err != nil {
		return err
	}
	client, err := testutil.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	peer, err := testutil.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	cu := "http://127.0.0.1:" + strconv.Itoa(client)
	pu := "http://127.0.0.1:" + strconv.Itoa(peer)
	c.etcd, err = c.start("etcd", nil, bin,
		"--name=test", "--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+cu, "--advertise-client-urls="+cu,
		"--listen-peer-urls="+pu, "--initial-advertise-peer-urls="+pu,
		"--initial-cluster=test="+pu, "--log-level=warn")
	if err != nil {
		return err
	}
	return c.etcd.WaitHTTP(ctx, nil, cu+"/health", 30*time.Second)
}

func (c *ControlPlane) etcdURL() string {
	for _, a := range c.etcd.Args() {
		if u, ok := strings.CutPrefix(a, "--advertise-client-urls="); ok {
			return u
		}
	}
	return ""
}

func (c *ControlPlane) startAPIServer(ctx context.Context, bins *Binaries) error {
	var err error
	// Bound on every address: loopback for the tests and the host-side
	// processes, the veth address for the adapter in its namespace.
	if c.port, err = testutil.FreePort("0.0.0.0"); err != nil {
		return err
	}
	p := c.pki
	c.apiserver, err = c.start("kube-apiserver", nil, bins.APIServer,
		"--etcd-servers="+c.etcdURL(),
		"--bind-address=0.0.0.0",
		"--secure-port="+strconv.Itoa(c.port),
		"--advertise-address="+c.ns.HostIP.String(),
		"--tls-cert-file="+p.ServingCert, "--tls-private-key-file="+p.ServingKey,
		"--client-ca-file="+p.CA.path,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range="+serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.ServiceAccountPub,
		"--service-account-signing-key-file="+p.ServiceAccountKey,
		// The aggregation layer, with its own front-proxy CA.
		"--requestheader-client-ca-file="+p.FrontProxyCA.path,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+p.ProxyClientCert, "--proxy-client-key-file="+p.ProxyCK,
		"--enable-aggregator-routing=true",
		"--cert-dir="+filepath.Join(c.dir, "apiserver-certs"),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	c.Config = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(c.port),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: p.CA.path, CertFile: p.AdminCert, KeyFile: p.AdminKey,
		},
		QPS: 100, Burst: 200,
	}
	hc, err := rest.HTTPClientFor(c.Config)
	if err != nil {
		return err
	}
	if err := c.apiserver.WaitHTTP(ctx, hc, c.Config.Host+"/readyz", 90*time.Second); err != nil {
		return err
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return err
	}
	for _, f := range []struct{ name, host string }{
		{"admin.kubeconfig", "127.0.0.1"},
		{"admin-netns.kubeconfig", c.ns.HostIP.String()},
	} {
		if err := c.writeKubeconfig(f.name, f.host); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes the admin's kubeconfig for the API server at
// host.
func (c *ControlPlane) writeKubeconfig(name, host string) error {
	p := c.pki
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://%s
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, net.JoinHostPort(host, strconv.Itoa(c.port)), p.CA.path, p.AdminCert, p.AdminKey)
	return os.WriteFile(filepath.Join(c.dir, name), []byte(cfg), 0o600)
}

// Kubeconfig is the admin's kubeconfig for processes on the host.
func (c *ControlPlane) Kubeconfig() string { return filepath.Join(c.dir, "admin.kubeconfig") }

func (c *ControlPlane) startControllerManager(ctx context.Context, bins *Binaries) error {
	var err error
	c.kcm, err = c.start("kube-controller-manager", nil, bins.ControllerManager,
		"--kubeconfig="+c.Kubeconfig(),
		"--controllers=horizontalpodautoscaling,deployment,replicaset",
		"--horizontal-pod-autoscaler-sync-period="+HPASyncPeriod.String(),
		"--leader-elect=false",
		"--secure-port=0",
	)
	if err != nil {
		return err
	}
	// It serves nothing: up is still running a moment later with the
	// default ServiceAccount the ReplicaSet controller's pods need.
	if _, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx, serviceAccount("default"), metav1.CreateOptions{}); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	return c.kcm.Alive()
}

// installKEDACRDs applies KEDA's CRDs from its module, as its release
// manifests carry them, and waits until each is established.
func (c *ControlPlane) installKEDACRDs(ctx context.Context, bins *Binaries) error {
	files, err := filepath.Glob(filepath.Join(bins.KEDACRDsDir, "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no CRDs in %s", bins.KEDACRDsDir)
	}
	if err := c.InstallCRDs(ctx, files...); err != nil {
		return err
	}
	_, err = c.Client.CoreV1().Namespaces().Create(ctx, namespace(KEDANamespace), metav1.CreateOptions{})
	return err
}

// InstallCRDs applies CRD files and waits until each is established.
func (c *ControlPlane) InstallCRDs(ctx context.Context, files ...string) error {
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		obj, err := c.Apply(ctx, string(b))
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		names = append(names, obj.GetName())
	}
	crds := c.Dynamic.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, n := range names {
		if err := testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
			o, err := crds.Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return hasCondition(o, "Established"), nil
		}); err != nil {
			return fmt.Errorf("CRD %s not established: %w", n, err)
		}
	}
	return nil
}

// kedaEnv is the environment both KEDA binaries read besides flags.
func kedaEnv(kubeconfig string) []string {
	return []string{"KUBECONFIG=" + kubeconfig, "WATCH_NAMESPACE=", "POD_NAMESPACE=" + KEDANamespace, "KEDA_CLUSTER_OBJECT_NAMESPACE=" + KEDANamespace, "KEDA_HTTP_DEFAULT_TIMEOUT=3000"}
}

func (c *ControlPlane) startOperator(ctx context.Context, bins *Binaries) error {
	metrics, err := testutil.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	probe, err := testutil.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	grpcPort, err := testutil.FreePort(c.ns.HostIP.String())
	if err != nil {
		return err
	}
	c.OperatorMetricsService = net.JoinHostPort(c.ns.HostIP.String(), strconv.Itoa(grpcPort))
	c.op, err = c.start("keda-operator", kedaEnv(c.Kubeconfig()), bins.KEDAOperator,
		"--leader-elect=false",
		"--cert-dir="+c.pki.KEDADir,
		"--enable-cert-rotation=false",
		"--enable-webhook-patching=false",
		"--enable-apiservice-patching=false",
		"--metrics-bind-address=127.0.0.1:"+strconv.Itoa(metrics),
		"--health-probe-bind-address=127.0.0.1:"+strconv.Itoa(probe),
		"--metrics-service-bind-address="+c.OperatorMetricsService,
		"--ca-dir="+c.pki.KEDADir,
		"--zap-log-level=info",
	)
	if err != nil {
		return err
	}
	return c.op.WaitHTTP(ctx, nil, "http://127.0.0.1:"+strconv.Itoa(probe)+"/readyz", 60*time.Second)
}

// adapterPort is the adapter's HTTPS port inside its namespace.
const adapterPort = 6443

func (c *ControlPlane) startAdapter(ctx context.Context, bins *Binaries) error {
	kc := filepath.Join(c.dir, "admin-netns.kubeconfig")
	d := c.pki.KEDADir
	var err error
	c.adapter, err = c.start("keda-adapter", kedaEnv(kc), c.ns.Command(bins.KEDAAdapter,
		"--secure-port="+strconv.Itoa(adapterPort),
		"--cert-dir="+d,
		"--tls-cert-file="+filepath.Join(d, "tls.crt"),
		"--tls-private-key-file="+filepath.Join(d, "tls.key"),
		"--kubeconfig="+kc,
		"--authentication-kubeconfig="+kc,
		"--authorization-kubeconfig="+kc,
		"--lister-kubeconfig="+kc,
		"--metrics-service-address="+c.OperatorMetricsService,
		"--metrics-service-grpc-authority="+KEDAAuthority,
		"--zap-log-level=info",
	)...)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.pki.KEDACA.cert)
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: "keda-metrics-apiserver.keda.svc",
	}}}
	url := "https://" + net.JoinHostPort(c.ns.NSIP.String(), strconv.Itoa(adapterPort)) + "/readyz"
	if err := c.adapter.WaitHTTP(ctx, hc, url, 60*time.Second); err != nil {
		return err
	}
	// Registered as KEDA's release manifests register it, except that the
	// Service has no selector (there are no pods) and an EndpointSlice
	// names the adapter's address in its namespace.
	caBundle := pemCert(c.pki.KEDACA.cert)
	for _, m := range []string{
		fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: %s}
spec:
  ports: [{name: https, port: 443, targetPort: %d, protocol: TCP}]
`, KEDANamespace, adapterPort),
		fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: keda-metrics-apiserver-1
  namespace: %s
  labels: {kubernetes.io/service-name: keda-metrics-apiserver}
addressType: IPv4
ports: [{name: https, port: %d, protocol: TCP}]
endpoints: [{addresses: [%q], conditions: {ready: true}}]
`, KEDANamespace, adapterPort, c.ns.NSIP.String()),
		fmt.Sprintf(`apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: %s
  service: {name: keda-metrics-apiserver, namespace: %s, port: 443}
`, caBundle, KEDANamespace),
	} {
		if _, err := c.Apply(ctx, m); err != nil {
			return err
		}
	}
	apisvc := c.Dynamic.Resource(schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"})
	err = testutil.Poll(ctx, 60*time.Second, func() (bool, error) {
		o, err := apisvc.Get(ctx, "v1beta1.external.metrics.k8s.io", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return hasCondition(o, "Available"), nil
	})
	if err != nil {
		return fmt.Errorf("APIService v1beta1.external.metrics.k8s.io not Available: %w\nthe end of the adapter's log:\n%s", err, c.adapter.Tail(20))
	}
	// And through the aggregator, as the HPA controller will ask.
	return testutil.Poll(ctx, 30*time.Second, func() (bool, error) {
		err := c.Client.Discovery().RESTClient().Get().AbsPath("/apis/external.metrics.k8s.io/v1beta1").Do(ctx).Error()
		return err == nil, nil
	})
}

// Apply server-side applies one YAML object (cluster-scoped or with its
// namespace in metadata) and returns what the API server stored.
func (c *ControlPlane) Apply(ctx context.Context, manifest string) (*unstructured.Unstructured, error) {
	var m map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &m); err != nil {
		return nil, err
	}
	obj := &unstructured.Unstructured{Object: m}
	gvk := obj.GroupVersionKind()
	gvr, namespaced, err := c.resourceFor(gvk)
	if err != nil {
		return nil, err
	}
	var ri dynamic.ResourceInterface = c.Dynamic.Resource(gvr)
	if namespaced {
		ri = c.Dynamic.Resource(gvr).Namespace(obj.GetNamespace())
	}
	out, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "gpu-agent-cluster-test", Force: true})
	if err != nil {
		return nil, fmt.Errorf("applying %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	return out, nil
}

// resourceFor asks discovery for the resource of gvk (CRDs included).
func (c *ControlPlane) resourceFor(gvk schema.GroupVersionKind) (schema.GroupVersionResource, bool, error) {
	var last error
	for range 50 {
		list, err := c.Client.Discovery().ServerResourcesForGroupVersion(gvk.GroupVersion().String())
		if err == nil {
			for _, r := range list.APIResources {
				if r.Kind == gvk.Kind && !strings.Contains(r.Name, "/") {
					return gvk.GroupVersion().WithResource(r.Name), r.Namespaced, nil
				}
			}
			err = fmt.Errorf("no resource of kind %s in %s", gvk.Kind, gvk.GroupVersion())
		}
		last = err
		time.Sleep(100 * time.Millisecond) // a CRD just established
	}
	return schema.GroupVersionResource{}, false, last
}

func hasCondition(o *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// lookTool finds an outside tool on PATH; its absence is errSkip.
func lookTool(name, debianPackage string) (string, error) {
	p, err := execLookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not on PATH (Debian: apt-get install %s)", errSkip, name, debianPackage)
	}
	return p, nil
}
