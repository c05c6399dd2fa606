package cgroup

import (
	"strings"
	"testing"
)

// Fixed identities, so that failures and fuzz corpora are reproducible. The
// UIDs are in the form the API server generates (UUID v4, lowercase); the
// container IDs are SHA-256 hex as every runtime here prints them.
const (
	uidA    = "5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1b"
	uidAEsc = "5f3e7b2a_9c1d_4e8f_a6b0_2d4c6e8f0a1b" // the systemd driver's escaping
	uidB    = "c0ffee00-1234-4abc-8def-0123456789ab"
	uidBEsc = "c0ffee00_1234_4abc_8def_0123456789ab"
	// A static pod's UID: the kubelet's MD5 of the manifest, 32 hex.
	uidStatic = "6c3a9f0e2b7d41d8a5e3c9b1f4d2e8a7"

	cidA    = "4a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b"
	cidB    = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	cidNode = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

// v1Lines builds a cgroup v1 file as a kubelet-managed process sees it: every
// controller at the same path, as on a node where the kubelet creates the
// pod's cgroup in each hierarchy. The order and IDs follow a 5.x kernel's
// /proc/self/cgroup on Ubuntu 20.04 / Amazon Linux 2.
func v1Lines(path string, unified string) string {
	var b strings.Builder
	for _, c := range []string{
		"12:hugetlb", "11:pids", "10:cpuset", "9:perf_event", "8:memory",
		"7:devices", "6:freezer", "5:blkio", "4:net_cls,net_prio",
		"3:rdma:", "2:cpu,cpuacct", "1:name=systemd",
	} {
		if strings.HasSuffix(c, ":") {
			// rdma is not managed by the kubelet: the process stays
			// at the root there.
			b.WriteString(c + "/\n")
			continue
		}
		b.WriteString(c + ":" + path + "\n")
	}
	if unified != "" {
		// systemd's hybrid mode adds the unified hierarchy as 0::.
		b.WriteString("0::" + unified + "\n")
	}
	return b.String()
}

type parseCase struct {
	name string
	in   string
	want Owner
	ok   bool
}

// parseCases is shared by the table test and the fuzz seed corpus.
func parseCases() []parseCase {
	pod := func(uid, cid string, rt Runtime) Owner { return Owner{PodUID: uid, ContainerID: cid, Runtime: rt} }
	return []parseCase{
		// --- cgroup v2, systemd driver (kubeadm default since 1.22;
		// Ubuntu 22.04+, RHEL 9, Bottlerocket, AL2023) ---
		{
			// containerd with SystemdCgroup = true, Burstable pod.
			name: "v2 systemd containerd burstable",
			in:   "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeContainerd), ok: true,
		},
		{
			// Guaranteed pods sit directly under kubepods.slice.
			name: "v2 systemd containerd guaranteed",
			in:   "0::/kubepods.slice/kubepods-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeContainerd), ok: true,
		},
		{
			name: "v2 systemd containerd besteffort",
			in:   "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidBEsc + ".slice/cri-containerd-" + cidB + ".scope\n",
			want: pod(uidB, cidB, RuntimeContainerd), ok: true,
		},
		{
			// CRI-O on OpenShift 4 / RHCOS (systemd cgroup manager).
			name: "v2 systemd crio burstable",
			in:   "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAEsc + ".slice/crio-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeCRIO), ok: true,
		},
		{
			// CRI-O with crun on v2 moves the container's processes
			// into a "container" sub-cgroup of the scope.
			name: "v2 systemd crio crun subgroup",
			in:   "0::/kubepods.slice/kubepods-pod" + uidBEsc + ".slice/crio-" + cidB + ".scope/container\n",
			want: pod(uidB, cidB, RuntimeCRIO), ok: true,
		},
		{
			// CRI-O's conmon runs in the pod slice beside the
			// container, in a scope of its own: the pod, no container.
			name: "v2 systemd crio conmon",
			in:   "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAEsc + ".slice/crio-conmon-" + cidA + ".scope\n",
			want: pod(uidA, "", ""), ok: true,
		},
		{
			// Docker Engine through cri-dockerd (or the old dockershim)
			// with native.cgroupdriver=systemd.
			name: "v2 systemd docker besteffort",
			in:   "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAEsc + ".slice/docker-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeDocker), ok: true,
		},
		{
			// A static pod (kube-apiserver, or a GPU workload from
			// /etc/kubernetes/manifests): its UID is a 32-hex hash.
			name: "v2 systemd static pod",
			in:   "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidStatic + ".slice/cri-containerd-" + cidB + ".scope\n",
			want: pod(uidStatic, cidB, RuntimeContainerd), ok: true,
		},
		{
			// kubelet --cgroup-root=/custom with the systemd driver:
			// every slice name carries the root's prefix.
			name: "v2 systemd custom cgroup root",
			in:   "0::/custom.slice/custom-kubepods.slice/custom-kubepods-burstable.slice/custom-kubepods-burstable-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeContainerd), ok: true,
		},
		{
			// The kernel appends " (deleted)" to the v2 path of a
			// process whose cgroup was removed while it exits.
			name: "v2 systemd deleted cgroup",
			in:   "0::/kubepods.slice/kubepods-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope (deleted)\n",
			want: pod(uidA, cidA, RuntimeContainerd), ok: true,
		},
		{
			// kind: the node is itself a Docker container, so the host
			// sees the node's scope above the kubelet's slices, which
			// kind names kubelet-kubepods-*.
			name: "v2 kind node nested in docker",
			in:   "0::/system.slice/docker-" + cidNode + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidBEsc + ".slice/cri-containerd-" + cidB + ".scope\n",
			want: pod(uidB, cidB, RuntimeContainerd), ok: true,
		},

		// --- cgroup v2, cgroupfs driver (k3s and older kubeadm setups) ---
		{
			// containerd names the container's cgroup by bare ID.
			name: "v2 cgroupfs containerd burstable",
			in:   "0::/kubepods/burstable/pod" + uidA + "/" + cidA + "\n",
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			name: "v2 cgroupfs guaranteed",
			in:   "0::/kubepods/pod" + uidB + "/" + cidB + "\n",
			want: pod(uidB, cidB, ""), ok: true,
		},
		{
			name: "v2 cgroupfs besteffort",
			in:   "0::/kubepods/besteffort/pod" + uidA + "/" + cidA + "\n",
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// CRI-O with cgroup_manager = "cgroupfs" keeps its prefix
			// but has no .scope.
			name: "v2 cgroupfs crio",
			in:   "0::/kubepods/burstable/pod" + uidA + "/crio-" + cidA + "\n",
			want: pod(uidA, cidA, RuntimeCRIO), ok: true,
		},

		// --- private cgroup namespace: the agent's container has its own
		// cgroupns (the default for containers on v2), so other processes'
		// paths are relative to the agent's own cgroup ---
		{
			// The agent in a Burstable pod reads another Burstable
			// pod: up from its scope and pod slice to the QoS slice.
			name: "v2 cgroupns relative same qos",
			in:   "0::/../../kubepods-burstable-pod" + uidAEsc + ".slice/cri-containerd-" + cidA + ".scope\n",
			want: pod(uidA, cidA, RuntimeContainerd), ok: true,
		},
		{
			// ... and a BestEffort pod: up to kubepods.slice.
			name: "v2 cgroupns relative other qos",
			in:   "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod" + uidBEsc + ".slice/cri-containerd-" + cidB + ".scope\n",
			want: pod(uidB, cidB, RuntimeContainerd), ok: true,
		},
		{
			name: "v2 cgroupns relative cgroupfs",
			in:   "0::/../../besteffort/pod" + uidA + "/" + cidA + "\n",
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// A host service seen from the agent's namespace.
			name: "v2 cgroupns relative host service",
			in:   "0::/../../../../system.slice/sshd.service\n",
		},
		{
			// A process in the agent's own cgroup: its namespace root.
			name: "v2 cgroupns own cgroup",
			in:   "0::/\n",
		},

		// --- cgroup v1 (Amazon Linux 2, Ubuntu 20.04, COS before 101) ---
		{
			// Legacy v1, cgroupfs driver, Docker-era kubelet: no 0::
			// line at all.
			name: "v1 cgroupfs docker besteffort",
			in:   v1Lines("/kubepods/besteffort/pod"+uidA+"/"+cidA, ""),
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// EKS on AL2 with containerd and the systemd driver, in
			// systemd's hybrid mode: the unified line mirrors it.
			name: "hybrid systemd containerd",
			in: v1Lines("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidBEsc+".slice/cri-containerd-"+cidB+".scope",
				"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidBEsc+".slice/cri-containerd-"+cidB+".scope"),
			want: pod(uidB, cidB, RuntimeContainerd), ok: true,
		},
		{
			// Hybrid mode with the cgroupfs driver: systemd leaves the
			// unified line at the runtime's service, the v1 lines hold
			// the pod.
			name: "hybrid cgroupfs unified line at service",
			in:   v1Lines("/kubepods/pod"+uidA+"/"+cidA, "/system.slice/containerd.service"),
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// The hierarchies disagree on depth (a controller the
			// runtime did not nest into): the one naming a container
			// wins over a higher-ranked one naming only the pod.
			name: "v1 container beats pod-only line",
			in: "11:memory:/kubepods/burstable/pod" + uidA + "\n" +
				"4:pids:/kubepods/burstable/pod" + uidA + "/" + cidA + "\n" +
				"1:name=systemd:/kubepods/burstable/pod" + uidA + "\n",
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// Contradictory hierarchies (not seen in practice): memory
			// wins over the named systemd hierarchy.
			name: "v1 memory beats name=systemd",
			in: "1:name=systemd:/kubepods/pod" + uidB + "/" + cidB + "\n" +
				"8:memory:/kubepods/pod" + uidA + "/" + cidA + "\n",
			want: pod(uidA, cidA, ""), ok: true,
		},
		{
			// The order of the kernel's output does not matter.
			name: "v1 cpu,cpuacct beats unified line",
			in: "0::/kubepods/pod" + uidB + "/" + cidB + "\n" +
				"3:cpu,cpuacct:/kubepods/pod" + uidA + "/" + cidA,
			want: pod(uidA, cidA, ""), ok: true,
		},

		// --- host processes and containers outside Kubernetes ---
		{name: "v2 host service", in: "0::/system.slice/sshd.service\n"},
		{name: "v2 user session", in: "0::/user.slice/user-1000.slice/session-3.scope\n"},
		{name: "v2 user manager app", in: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope\n"},
		{name: "v2 init", in: "0::/init.scope\n"},
		{name: "v2 nvidia-persistenced", in: "0::/system.slice/nvidia-persistenced.service\n"},
		{name: "v2 containerd itself", in: "0::/system.slice/containerd.service\n"},
		{name: "v1 host service", in: v1Lines("/system.slice/nvidia-dcgm.service", "/system.slice/nvidia-dcgm.service")},
		{
			// `docker run` on the node: a container, but no pod.
			name: "v2 plain docker container",
			in:   "0::/system.slice/docker-" + cidA + ".scope\n",
		},
		{name: "v1 plain docker cgroupfs", in: v1Lines("/docker/"+cidA, "")},
		{name: "v2 podman container", in: "0::/machine.slice/libpod-" + cidA + ".scope/container\n"},
		{
			// A podman pod's slice: "libpod_pod_<id>" is not "pod<uid>".
			name: "v2 podman pod",
			in:   "0::/machine.slice/machine-libpod_pod_" + cidB + ".slice/libpod-" + cidA + ".scope\n",
		},

		// --- garbage ---
		{name: "empty", in: ""},
		{name: "no colons", in: "kubepods/pod" + uidA + "/" + cidA + "\n"},
		{name: "one colon", in: "0:/kubepods/pod" + uidA + "/" + cidA + "\n"},
		{name: "short uid", in: "0::/kubepods/pod5f3e7b2a/" + cidA + "\n"},
		{name: "uppercase uid", in: "0::/kubepods/pod" + strings.ToUpper(uidA) + "/" + cidA + "\n"},
		{name: "mixed separators", in: "0::/kubepods/pod5f3e7b2a-9c1d_4e8f-a6b0-2d4c6e8f0a1b/" + cidA + "\n"},
		{name: "dash in systemd slice", in: "0::/kubepods.slice/kubepods-pod" + uidA + ".slice/cri-containerd-" + cidA + ".scope\n"},
		{
			name: "container id 63 hex",
			in:   "0::/kubepods/pod" + uidA + "/" + cidA[:63] + "\n",
			want: pod(uidA, "", ""), ok: true,
		},
		{
			name: "container id 65 hex",
			in:   "0::/kubepods/pod" + uidA + "/cri-containerd-" + cidA + "0.scope\n",
			want: pod(uidA, "", ""), ok: true,
		},
		{
			name: "uppercase container id",
			in:   "0::/kubepods/pod" + uidA + "/" + strings.ToUpper(cidA) + "\n",
			want: pod(uidA, "", ""), ok: true,
		},
		{
			// A container-shaped component above the pod is not its
			// container.
			name: "container above pod only",
			in:   "0::/" + cidA + "/kubepods/pod" + uidA + "\n",
			want: pod(uidA, "", ""), ok: true,
		},
	}
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Parse([]byte(tc.in))
			if got != tc.want || ok != tc.ok {
				t.Errorf("Parse(%q)\n got %+v, %v\nwant %+v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestValidUID(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{uidA, true},
		{uidAEsc, true},
		{uidStatic, true},
		{"", false},
		{uidA[:35], false},
		{uidA + "0", false},
		{"5f3e7b2a-9c1d-4e8f-a6b0_2d4c6e8f0a1b", false},
		{"5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1g", false},
		{"5f3e7b2a09c1d-4e8f-a6b0-2d4c6e8f0a1b", false},
		{"5f3e7b2a-9c1d-4e8f-a6b0-2d4c6e8f0a1B", false},
		{uidStatic[:31] + "x", false},
	} {
		if got := validUID(tc.in); got != tc.ok {
			t.Errorf("validUID(%q) = %v, want %v", tc.in, got, tc.ok)
		}
	}
}
