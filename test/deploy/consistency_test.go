package deploy

import (
	"io"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/gpu-telemetry/agent/internal/agent"
	"github.com/gpu-telemetry/agent/internal/scaler"
)

// Measured resident memory (BENCHMARKS.md): the agent on a simulated
// 8-GPU node with 64 pods and 20 scrapers, steady and peak; the scaler fed
// by 1,000 agents of 8 GPUs at 4 Hz. Limits must leave headroom over
// these; requests must cover the agent's steady use.
var (
	agentRSS     = resource.MustParse("43Mi")
	agentPeakRSS = resource.MustParse("51Mi")
	scalerRSS    = resource.MustParse("225Mi")
)

// deployment is what a consistency check needs of one rendered set.
type deployment struct {
	name      string // for messages: "kustomize deploy", "helm defaults", ...
	objs      []object
	scaler    bool // the scaler is expected
	migOn     bool // the MIG monitor capability is expected
	webConfig bool // --web.config.file is expected

	noServiceMonitor bool // the ServiceMonitors are off
}

// container returns the named container of a pod spec.
func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func envMap(t *testing.T, c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			t.Errorf("container %s: env %s set twice", c.Name, e.Name)
		}
		m[e.Name] = e
	}
	return m
}

// portOf resolves a probe's or Service's port (a number or a container
// port's name) to a number.
func portOf(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return -1
}

func namedPort(c corev1.Container, name string) int32 {
	return portOf(c, intstr.FromString(name))
}

// listenPort is the port of a flag's host:port address.
func listenPort(t *testing.T, flag, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s=%q: %v", flag, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s=%q: %v", flag, addr, err)
	}
	return int32(n)
}

// mountFor returns the volume mount under which a file path lies and its
// volume.
func mountFor(spec corev1.PodSpec, c corev1.Container, p string) (corev1.VolumeMount, corev1.Volume, bool) {
	var best corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
			best = m
		}
	}
	if best.Name == "" {
		return best, corev1.Volume{}, false
	}
	for _, v := range spec.Volumes {
		if v.Name == best.Name {
			return best, v, true
		}
	}
	return best, corev1.Volume{}, false
}

// selects reports whether a Service's selector picks a pod template's
// labels.
func selects(sel map[string]string, podLabels map[string]string) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(podLabels))
}

// checkAgent checks the DaemonSet against the agent's own flag set and
// the hardening list. It returns the agent's parsed config.
func checkAgent(t *testing.T, d deployment) (*appsv1.DaemonSet, *agent.Config) {
	t.Helper()
	ds := one[*appsv1.DaemonSet](t, d.objs, "DaemonSet", "")
	spec := ds.Spec.Template.Spec
	c := container(t, spec, "gpu-agent")
	env := envMap(t, c)

	cfg := agentConfig(t, c)
	checkAgentPorts(t, c, cfg)
	checkAgentProbes(t, d, c)
	checkAgentPaths(t, d, spec, c, cfg)
	checkAgentEnv(t, env)
	checkAgentHardening(t, d, spec, c, env)
	checkAgentScheduling(t, ds)
	checkAgentResources(t, c)
	if cfg.PodWatch {
		checkAgentRBAC(t, d, ds)
	}
	return ds, cfg
}

// agentConfig reads the container's arguments with the agent's own flag
// set, NODE_NAME as the Downward API sets it: they must be flags the
// agent accepts and validates.
func agentConfig(t *testing.T, c corev1.Container) *agent.Config {
	t.Helper()
	if len(c.Command) > 0 {
		t.Errorf("agent container overrides the image's ENTRYPOINT with command %v", c.Command)
	}
	cfg, err := agent.ParseFlags(c.Args, func(k string) string {
		if k == "NODE_NAME" {
			return "node-1"
		}
		return ""
	}, io.Discard)
	if err != nil {
		t.Fatalf("agent args %v: %v", c.Args, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("agent args %v: %v", c.Args, err)
	}
	if cfg.Simulate != 0 {
		t.Errorf("agent runs --simulate=%d", cfg.Simulate)
	}
	return cfg
}

// checkAgentPorts checks that the flags' ports are the container's named
// ports.
func checkAgentPorts(t *testing.T, c corev1.Container, cfg *agent.Config) {
	t.Helper()
	if got, want := namedPort(c, "metrics"), listenPort(t, "--web.listen-address", cfg.ListenAddress); got != want {
		t.Errorf("agent containerPort metrics=%d, --web.listen-address=%s", got, cfg.ListenAddress)
	}
	if cfg.GRPCListenAddress == "" {
		t.Error("agent runs without --grpc.listen-address: no push stream for the scaler")
	} else if got, want := namedPort(c, "grpc"), listenPort(t, "--grpc.listen-address", cfg.GRPCListenAddress); got != want {
		t.Errorf("agent containerPort grpc=%d, --grpc.listen-address=%s", got, cfg.GRPCListenAddress)
	}
}

// checkAgentProbes checks the probes: on the web port, on the agent's
// liveness and readiness paths (TestProbesHitEndpoints asks the real
// agent), short delays, HTTPS where the agent serves TLS.
func checkAgentProbes(t *testing.T, d deployment, c corev1.Container) {
	t.Helper()
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("agent %s probe: want an httpGet, got %+v", name, p)
			continue
		}
		if portOf(c, p.HTTPGet.Port) != namedPort(c, "metrics") {
			t.Errorf("agent %s probe on port %s, not the web port", name, p.HTTPGet.Port.String())
		}
		if p.InitialDelaySeconds > 5 {
			t.Errorf("agent %s probe waits %d s: the endpoints answer from the start", name, p.InitialDelaySeconds)
		}
		wantScheme := corev1.URISchemeHTTP
		if d.webConfig && tlsWebConfig(d) {
			wantScheme = corev1.URISchemeHTTPS
		}
		if s := p.HTTPGet.Scheme; s != wantScheme && !(s == "" && wantScheme == corev1.URISchemeHTTP) {
			t.Errorf("agent %s probe scheme %s, want %s", name, s, wantScheme)
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("agent liveness probe on %s, want /healthz", c.LivenessProbe.HTTPGet.Path)
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("agent readiness probe on %s, want /readyz", c.ReadinessProbe.HTTPGet.Path)
	}
}

// checkAgentPaths checks the mounts: the socket's and /proc's are
// read-only host mounts of the right host paths, every file flag lies
// under a mount, and no other host path is mounted.
func checkAgentPaths(t *testing.T, d deployment, spec corev1.PodSpec, c corev1.Container, cfg *agent.Config) {
	t.Helper()
	for _, f := range []struct{ flag, path, host string }{
		{"--kubelet.pod-resources-socket", cfg.PodResourcesSocket, "/var/lib/kubelet/pod-resources"},
		{"--path.procfs", cfg.ProcFS, "/proc"},
	} {
		m, v, ok := mountFor(spec, c, f.path)
		switch {
		case !ok:
			t.Errorf("%s=%s: under no volume mount", f.flag, f.path)
		case v.HostPath == nil || path.Clean(v.HostPath.Path) != f.host:
			t.Errorf("%s=%s: volume %s is not the host's %s", f.flag, f.path, v.Name, f.host)
		case !m.ReadOnly:
			t.Errorf("%s=%s: mount %s is writable", f.flag, f.path, m.MountPath)
		default:
			if rel := strings.TrimPrefix(f.path, m.MountPath); f.flag == "--path.procfs" && rel != "" {
				t.Errorf("--path.procfs=%s is not the mount of the host's /proc (%s)", f.path, m.MountPath)
			}
		}
	}
	for _, f := range []struct{ flag, path string }{
		{"--web.config.file", cfg.WebConfigFile},
		{"--grpc.tls-cert-file", cfg.GRPCTLSCertFile},
		{"--grpc.tls-key-file", cfg.GRPCTLSKeyFile},
		{"--grpc.tls-client-ca-file", cfg.GRPCTLSClientCAFile},
		{"--collectors", cfg.CollectorsFile},
	} {
		if f.path == "" {
			continue
		}
		if _, _, ok := mountFor(spec, c, f.path); !ok && !strings.HasPrefix(f.path, "/etc/dcgm-exporter/") {
			t.Errorf("%s=%s: under no volume mount (nor in the image)", f.flag, f.path)
		}
	}
	if d.webConfig != (cfg.WebConfigFile != "") {
		t.Errorf("--web.config.file=%q, want it set: %v", cfg.WebConfigFile, d.webConfig)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil && !slices.Contains([]string{"/var/lib/kubelet/pod-resources", "/proc"}, path.Clean(v.HostPath.Path)) {
			t.Errorf("agent mounts the host's %s", v.HostPath.Path)
		}
	}
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && !m.ReadOnly {
				t.Errorf("host path %s mounted writable at %s", v.HostPath.Path, m.MountPath)
			}
		}
	}
}

// checkAgentEnv checks the environment: the node's name from the
// Downward API, every GPU.
func checkAgentEnv(t *testing.T, env map[string]corev1.EnvVar) {
	t.Helper()
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME is not the Downward API's spec.nodeName: %+v", e)
	}
	if env["NVIDIA_VISIBLE_DEVICES"].Value != "all" {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want all", env["NVIDIA_VISIBLE_DEVICES"].Value)
	}
}

// checkAgentHardening checks the security context: read-only root, no
// escalation, no host namespaces, every capability dropped but
// SYS_ADMIN where (and only where) MIG monitoring needs it, the
// RuntimeDefault seccomp profile.
func checkAgentHardening(t *testing.T, d deployment, spec corev1.PodSpec, c corev1.Container, env map[string]corev1.EnvVar) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("agent root filesystem is not read-only")
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("agent may escalate privileges")
	}
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		t.Error("agent is privileged")
	}
	if spec.HostPID || spec.HostNetwork || spec.HostIPC {
		t.Errorf("agent shares host namespaces: pid %v, network %v, ipc %v", spec.HostPID, spec.HostNetwork, spec.HostIPC)
	}
	var drop, add []corev1.Capability
	if sc != nil && sc.Capabilities != nil {
		drop, add = sc.Capabilities.Drop, sc.Capabilities.Add
	}
	if !slices.Contains(drop, "ALL") {
		t.Errorf("agent drops %v, want ALL", drop)
	}
	_, migEnv := env["NVIDIA_MIG_MONITOR_DEVICES"]
	hasSysAdmin := slices.Contains(add, "SYS_ADMIN")
	// The container toolkit refuses NVIDIA_MIG_MONITOR_DEVICES without
	// CAP_SYS_ADMIN, and SYS_ADMIN has no other use here.
	if migEnv != hasSysAdmin || migEnv != d.migOn {
		t.Errorf("NVIDIA_MIG_MONITOR_DEVICES set: %v, SYS_ADMIN added: %v; want both %v", migEnv, hasSysAdmin, d.migOn)
	}
	for _, cp := range add {
		if cp != "SYS_ADMIN" {
			t.Errorf("agent adds capability %s, which nothing needs", cp)
		}
	}
	if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("agent pod without the RuntimeDefault seccomp profile")
	}
}

// checkAgentScheduling checks the agent runs on GPU nodes only, past
// their taint, last to be evicted, and rolls out a few nodes at a time.
func checkAgentScheduling(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if spec.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Errorf("nodeSelector %v: not the GPU nodes", spec.NodeSelector)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "nvidia.com/gpu" && tl.Operator == corev1.TolerationOpExists
	}) {
		t.Errorf("tolerations %v: not nvidia.com/gpu", spec.Tolerations)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil {
		t.Errorf("updateStrategy %+v: want RollingUpdate with maxUnavailable", u)
	}
}

// checkAgentResources checks the resources against the measured RSS,
// with headroom, and that no CPU limit throttles the ticks.
func checkAgentResources(t *testing.T, c corev1.Container) {
	t.Helper()
	req, lim := c.Resources.Requests.Memory(), c.Resources.Limits.Memory()
	if req.Cmp(agentRSS) < 0 {
		t.Errorf("agent memory request %s below the measured %s RSS", req, &agentRSS)
	}
	peak3 := agentPeakRSS.DeepCopy()
	peak3.Mul(3)
	if lim.Cmp(peak3) < 0 {
		t.Errorf("agent memory limit %s under 3x the measured peak %s", lim, &agentPeakRSS)
	}
	if c.Resources.Requests.Cpu().IsZero() {
		t.Error("agent requests no CPU")
	}
	if !c.Resources.Limits.Cpu().IsZero() {
		t.Errorf("agent CPU limit %s: throttling makes ticks late", c.Resources.Limits.Cpu())
	}
}

// checkAgentRBAC checks the agent's service account may do the pod watch
// and nothing more.
func checkAgentRBAC(t *testing.T, d deployment, ds *appsv1.DaemonSet) {
	t.Helper()
	sa := ds.Spec.Template.Spec.ServiceAccountName
	var bound bool
	for _, b := range d.objs {
		crb, ok := b.Obj.(*rbacv1.ClusterRoleBinding)
		if !ok || !slices.ContainsFunc(crb.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == ds.Namespace
		}) {
			continue
		}
		bound = true
		role := one[*rbacv1.ClusterRole](t, d.objs, "ClusterRole", crb.RoleRef.Name)
		for _, r := range role.Rules {
			if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"pods"}) ||
				!slices.Equal(slices.Sorted(slices.Values(r.Verbs)), []string{"get", "list", "watch"}) || len(r.ResourceNames) > 0 {
				t.Errorf("ClusterRole %s grants %+v; want get, list, watch on pods only", role.Name, r)
			}
		}
	}
	if !bound {
		t.Errorf("service account %s/%s is bound to no role: the pod watch would be forbidden", ds.Namespace, sa)
	}
	one[*corev1.ServiceAccount](t, d.objs, "ServiceAccount", sa)
}

// service returns the Service whose selector picks the pods and has a
// port targeting the named container port.
func serviceFor(t *testing.T, objs []object, podLabels map[string]string, c corev1.Container, portName string) (*corev1.Service, corev1.ServicePort) {
	t.Helper()
	for _, o := range objs {
		svc, ok := o.Obj.(*corev1.Service)
		if !ok || !selects(svc.Spec.Selector, podLabels) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if portOf(c, p.TargetPort) == namedPort(c, portName) {
				return svc, p
			}
		}
	}
	t.Fatalf("no Service selects %v on container port %s", podLabels, portName)
	return nil, corev1.ServicePort{}
}

func tlsWebConfig(d deployment) bool {
	for _, o := range d.objs {
		if s, ok := o.Obj.(*corev1.Secret); ok {
			if strings.Contains(s.StringData["web-config.yml"], "tls_server_config") || strings.Contains(string(s.Data["web-config.yml"]), "tls_server_config") {
				return true
			}
		}
	}
	return false
}

// checkConsistent checks a rendered set: the agent, its Services and
// ServiceMonitor, and the scaler against the agents' stream Service.
func checkConsistent(t *testing.T, d deployment) {
	ds, cfg := checkAgent(t, d)
	podLabels := ds.Spec.Template.Labels
	c := container(t, ds.Spec.Template.Spec, "gpu-agent")

	// The metrics Service and the ServiceMonitor that scrapes it.
	metrics, mp := serviceFor(t, d.objs, podLabels, c, "metrics")
	var sm *monitoringv1.ServiceMonitor
	for _, o := range d.objs {
		if s, ok := o.Obj.(*monitoringv1.ServiceMonitor); ok && selects(s.Spec.Selector.MatchLabels, metrics.Labels) {
			if sm != nil {
				t.Errorf("ServiceMonitors %s and %s both scrape the agents", sm.Name, s.Name)
			}
			sm = s
		}
	}
	switch {
	case sm == nil && !d.noServiceMonitor:
		t.Error("no ServiceMonitor selects the agents' metrics Service")
	case sm != nil && d.noServiceMonitor:
		t.Errorf("ServiceMonitor %s with the ServiceMonitors off", sm.Name)
	case sm != nil:
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != mp.Name {
			t.Errorf("ServiceMonitor %s endpoints %+v: want the Service's port %q", sm.Name, sm.Spec.Endpoints, mp.Name)
		} else {
			ep := sm.Spec.Endpoints[0]
			if !ep.HonorLabels {
				t.Errorf("ServiceMonitor %s: honorLabels false renames the agent's pod labels to exported_pod", sm.Name)
			}
			if ep.Interval != "5s" {
				t.Errorf("ServiceMonitor %s: interval %q, want 5s", sm.Name, ep.Interval)
			}
			if want := monitoringv1.Scheme("https"); tlsWebConfig(d) && (ep.Scheme == nil || *ep.Scheme != want) {
				t.Errorf("ServiceMonitor %s: the agent serves TLS, the scrape is %v", sm.Name, ep.Scheme)
			}
			if ep.Path != "" && ep.Path != "/metrics" {
				t.Errorf("ServiceMonitor %s: path %s", sm.Name, ep.Path)
			}
		}
		if len(sm.Spec.NamespaceSelector.MatchNames) > 0 && !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, metrics.Namespace) {
			t.Errorf("ServiceMonitor %s looks in %v, the Service is in %s", sm.Name, sm.Spec.NamespaceSelector.MatchNames, metrics.Namespace)
		}
	}

	// The headless stream Service, one record per agent.
	stream, sp := serviceFor(t, d.objs, podLabels, c, "grpc")
	if stream.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("stream Service %s is not headless: the scaler resolves one record per agent", stream.Name)
	}

	deps := byKind(d.objs)["Deployment"]
	if !d.scaler {
		if len(deps) > 0 {
			t.Errorf("scaler off, yet Deployments %v", deps)
		}
		return
	}
	dep := one[*appsv1.Deployment](t, d.objs, "Deployment", "")
	sc := container(t, dep.Spec.Template.Spec, "gpu-scaler")
	scfg, err := scaler.ParseFlags(sc.Args, io.Discard)
	if err != nil {
		t.Fatalf("scaler args %v: %v", sc.Args, err)
	}
	if err := scfg.Validate(); err != nil {
		t.Errorf("scaler args %v: %v", sc.Args, err)
	}
	host, port, _ := net.SplitHostPort(scfg.AgentsDNS)
	if want := stream.Name + "." + stream.Namespace + ".svc"; host != want && host != want+".cluster.local" {
		t.Errorf("--agents.dns=%s: not the stream Service %s", scfg.AgentsDNS, want)
	}
	if port != strconv.Itoa(int(sp.Port)) {
		t.Errorf("--agents.dns port %s, the stream Service's %d", port, sp.Port)
	}
	if sp.Port != listenPort(t, "--grpc.listen-address", cfg.GRPCListenAddress) {
		t.Errorf("stream Service port %d; the agent listens on %s (a headless Service does not remap ports)", sp.Port, cfg.GRPCListenAddress)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("scaler replicas %v, want 2", dep.Spec.Replicas)
	}
	if got, want := namedPort(sc, "grpc"), listenPort(t, "--grpc.listen-address", scfg.GRPCListenAddress); got != want {
		t.Errorf("scaler containerPort grpc=%d, --grpc.listen-address=%s", got, scfg.GRPCListenAddress)
	}
	if got, want := namedPort(sc, "metrics"), listenPort(t, "--web.listen-address", scfg.WebListenAddress); got != want {
		t.Errorf("scaler containerPort metrics=%d, --web.listen-address=%s", got, scfg.WebListenAddress)
	}
	if p := sc.ReadinessProbe; p == nil || p.GRPC == nil || p.GRPC.Port != namedPort(sc, "grpc") {
		t.Errorf("scaler readiness probe %+v: want gRPC health on the gRPC port", p)
	}
	if p := sc.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || portOf(sc, p.HTTPGet.Port) != namedPort(sc, "metrics") {
		t.Errorf("scaler liveness probe %+v: want /healthz on the web port", p)
	}
	if ssc := dep.Spec.Template.Spec.SecurityContext; ssc == nil || ssc.RunAsNonRoot == nil || !*ssc.RunAsNonRoot {
		t.Error("scaler may run as root")
	}
	if s := sc.SecurityContext; s == nil || s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(s.Capabilities.Add) > 0 ||
		s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
		t.Errorf("scaler securityContext %+v: want no capabilities, read-only root, no escalation", s)
	}
	if lim := sc.Resources.Limits.Memory(); lim.Cmp(scalerRSS) <= 0 {
		t.Errorf("scaler memory limit %s: the scaler uses %s at 1,000 nodes", lim, &scalerRSS)
	}
	pdb := one[*policyv1.PodDisruptionBudget](t, d.objs, "PodDisruptionBudget", "")
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, dep.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget %s selects %v, not the scaler's pods %v", pdb.Name, pdb.Spec.Selector, dep.Spec.Template.Labels)
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() < 1 || pdb.Spec.MinAvailable.IntValue() >= 2 {
		t.Errorf("PodDisruptionBudget minAvailable %v: want 1 of the 2", pdb.Spec.MinAvailable)
	}
	svc, gp := serviceFor(t, d.objs, dep.Spec.Template.Labels, sc, "grpc")
	if gp.AppProtocol == nil || *gp.AppProtocol != "grpc" {
		t.Errorf("scaler Service %s port %s: appProtocol %v, want grpc", svc.Name, gp.Name, gp.AppProtocol)
	}
}

// The kustomization's objects are consistent with the binaries, with and
// without the MIG component.
func TestKustomizeConsistent(t *testing.T) {
	t.Run("deploy", func(t *testing.T) {
		checkConsistent(t, deployment{name: "kustomize deploy", objs: kustomized(t, "deploy"), scaler: true})
	})
	t.Run("mig", func(t *testing.T) {
		checkConsistent(t, deployment{name: "kustomize mig", objs: kustomized(t, "mig"), scaler: true, migOn: true})
	})
}
