package cluster

import "strings"

// Every outside version the harness runs, in one place. The Go modules
// are pinned by the tool-only wrapper modules under build/ (their go.mod
// and go.sum are the pin; these constants name them for the report and
// are checked against the wrappers by TestVersionsPinned); etcd and
// Prometheus come from Debian (bookworm: etcd-server 3.4, which the API
// server accepts, and prometheus 2.42).
const (
	// KubernetesVersion is k8s.io/kubernetes, whose kube-apiserver and
	// kube-controller-manager build/kubernetes builds, with every k8s.io
	// staging module replaced by StagingVersion.
	KubernetesVersion = "v1.37.2"
	StagingVersion    = "v0.37.2"
	// KEDAVersion is github.com/kedacore/keda/v2, whose operator, metrics
	// adapter and CRDs (config/crd/bases) build/keda provides.
	KEDAVersion = "v2.21.0"
	// PrometheusOperatorVersion is github.com/prometheus-operator/prometheus-operator,
	// whose example/prometheus-operator-crd holds the ServiceMonitor and
	// PrometheusRule CRDs deploy/monitoring needs. Not a build input: it is
	// fetched with go mod download when the manifests are applied. It is
	// older than the monitoring API types test/deploy decodes with
	// (pkg/apis/monitoring, see test/deploy/go.mod) because the module
	// proxy serves no later version of the root module: v0.86.0 and up,
	// v0.95.2 included, answer 403 "This module version is not available".
	PrometheusOperatorVersion = "v0.85.0"
)

// tool is one binary built from a wrapper module.
type tool struct {
	name   string // file name in the cache directory
	module string // wrapper directory under build/
	pkg    string // main package
	// ldflags as the project's release builds set them: the Kubernetes
	// binaries report their version from these (without them they are
	// v0.0.0-master, which clients such as KEDA read from discovery).
	ldflags string
}

var kubeLDFlags = func() string {
	var fs []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		fs = append(fs, "-X "+pkg+".gitVersion="+KubernetesVersion,
			"-X "+pkg+".gitMajor=1",
			"-X "+pkg+".gitMinor="+strings.Split(KubernetesVersion, ".")[1],
			"-X "+pkg+".gitTreeState=clean")
	}
	return strings.Join(fs, " ")
}()

var tools = []tool{
	{"kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver", kubeLDFlags},
	{"kube-controller-manager", "kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager", kubeLDFlags},
	{"keda-operator", "keda", "github.com/kedacore/keda/v2/cmd/operator", ""},
	{"keda-adapter", "keda", "github.com/kedacore/keda/v2/cmd/adapter", ""},
}
