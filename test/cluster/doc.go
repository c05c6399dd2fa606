// Package cluster runs a real control plane on this machine and scales
// Deployments on the agents' data through it: etcd, kube-apiserver (RBAC,
// the aggregation layer), kube-controller-manager (the HPA, Deployment and
// ReplicaSet controllers only), the KEDA operator and its metrics adapter,
// a real Prometheus, the scaler and agents on simulated nodes. There is no
// scheduler and no kubelet: Deployments scale (spec.replicas, their
// ReplicaSets and Pending pods) without pods running, which is what the
// tests observe.
//
// Opt in: the tests skip unless GPU_AGENT_CLUSTER=1 (make e2e-cluster sets
// it), because the first run builds kube-apiserver, kube-controller-manager
// and KEDA from their Go modules (7-15 minutes on 2 cores; cached after,
// see Versions) and every run starts a dozen processes.
//
//	make e2e-cluster
//	GPU_AGENT_CLUSTER=1 go test -count=1 -timeout 60m -v ./test/cluster/
//
// What it needs: root (the metrics adapter runs in a network namespace of
// its own, see netns.go), iproute2's ip, Debian's etcd-server (etcd) and
// prometheus, the Go module proxy for the first build (and for the
// Prometheus Operator's CRDs), and NVIDIA's mock NVML source for the
// agent whose pod watch runs on a ServiceAccount token (see mockNVML).
// When opted in, a missing tool skips the tests on a laptop and fails them
// under CI=true.
package cluster
