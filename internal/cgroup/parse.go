// Package cgroup maps a host PID to the Kubernetes pod and container it runs
// in, from /proc/<pid>/cgroup.
//
// NVML reports per-process figures by host PID; the kubelet names pods by UID
// in the cgroup path it creates, and the runtime names the container by its ID
// in the scope below that. This package reads those names and nothing else: it
// calls neither the kubelet nor the API server, so turning a UID into a
// namespace and name is the caller's job (a node-scoped pod informer).
package cgroup

import (
	"strings"
)

// Runtime names the container runtime that created a container's cgroup, as
// told by the scope's prefix. It is empty where the path does not say (the
// cgroupfs driver names containerd's and Docker's cgroups by bare ID).
type Runtime string

// The runtimes whose cgroup names carry a prefix.
const (
	RuntimeContainerd Runtime = "containerd"
	RuntimeCRIO       Runtime = "cri-o"
	RuntimeDocker     Runtime = "docker"
)

// Owner is the pod, and where the path names it the container, that a process
// belongs to. PodUID is in its canonical form with dashes (or the 32-hex hash
// of a static pod). ContainerID is 64 lowercase hex characters, or empty for a
// process in the pod's cgroup but in no container's (rare: the runtime's
// monitor, such as CRI-O's conmon).
type Owner struct {
	PodUID      string
	ContainerID string
	Runtime     Runtime
}

// containerPrefixes maps each runtime's scope prefix to the runtime. The
// systemd driver appends ".scope"; CRI-O under the cgroupfs driver uses the
// prefix without it, so the suffix is optional.
var containerPrefixes = [...]struct {
	prefix  string
	runtime Runtime
}{
	{"cri-containerd-", RuntimeContainerd},
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker},
}

// Parse reads the contents of a /proc/<pid>/cgroup file, cgroup v1 (one line
// per hierarchy, "<id>:<controllers>:<path>") or v2 ("0::<path>") or both
// (hybrid mode), and returns the pod the process is in. ok is false for a
// process in no pod: a host service, a user session, a container that
// Kubernetes did not start, or input that is not a cgroup file.
//
// Where lines disagree the one that names a container wins over one that
// names only a pod, and among equals memory wins, then cpu or cpuacct, then
// name=systemd, then the v2 line: in hybrid mode with the cgroupfs driver the
// v2 line can show the runtime's service while the v1 lines show the pod.
func Parse(b []byte) (o Owner, ok bool) {
	s := string(b)
	bestRank := -1
	for len(s) > 0 {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		controllers, path, found := splitLine(line)
		if !found {
			continue
		}
		lo, lok := parsePath(path)
		if !lok {
			continue
		}
		rank := hierarchyRank(controllers)
		if lo.ContainerID != "" {
			rank += 100
		}
		if rank > bestRank {
			o, ok, bestRank = lo, true, rank
		}
	}
	if ok {
		// Only the winner is normalized, and copied so that the
		// Resolver's cache does not pin the whole file's text.
		if strings.Contains(o.PodUID, "_") {
			o.PodUID = strings.ReplaceAll(o.PodUID, "_", "-")
		} else {
			o.PodUID = strings.Clone(o.PodUID)
		}
		o.ContainerID = strings.Clone(o.ContainerID)
	}
	return o, ok
}

// splitLine splits "<id>:<controllers>:<path>" and returns the last two. The
// path may itself hold colons, so only the first two separate fields.
func splitLine(line string) (controllers, path string, ok bool) {
	i := strings.IndexByte(line, ':')
	if i < 0 {
		return "", "", false
	}
	rest := line[i+1:]
	j := strings.IndexByte(rest, ':')
	if j < 0 {
		return "", "", false
	}
	return rest[:j], rest[j+1:], true
}

// hierarchyRank orders the hierarchies of one file. The memory and cpu
// controllers are the ones the kubelet always places pods in under v1; the
// named systemd hierarchy follows the systemd driver; the v2 line (empty
// controllers) ranks below them because in hybrid mode it is the one
// most likely left pointing at a service when the kubelet uses cgroupfs. Any
// of them beats an unknown controller, and any pod beats no pod.
func hierarchyRank(controllers string) int {
	for c := range strings.SplitSeq(controllers, ",") {
		switch c {
		case "memory":
			return 5
		case "cpu", "cpuacct":
			return 4
		case "name=systemd":
			return 3
		}
	}
	if controllers == "" {
		return 2
	}
	return 1
}

// parsePath finds the pod, and the container within it, in one cgroup path.
// It matches path components and assumes no prefix, since the path may be
// under a custom cgroup root, nested in a kind node's own container, or
// relative to a private cgroup namespace ("/../../kubepods-...").
//
// The innermost pod component wins, and the container is the first
// container-shaped component below it: components above the pod can be the
// node's own container (kind), and components below the container are
// sub-cgroups the runtime made inside it (crun's "container").
func parsePath(path string) (o Owner, ok bool) {
	// The kernel marks the v2 cgroup of an exiting process whose cgroup was
	// already removed; the path itself is still good.
	path = strings.TrimSuffix(path, " (deleted)")
	for len(path) > 0 {
		comp := path
		if i := strings.IndexByte(path, '/'); i >= 0 {
			comp, path = path[:i], path[i+1:]
		} else {
			path = ""
		}
		if uid, isPod := podUID(comp); isPod {
			o, ok = Owner{PodUID: uid}, true
			continue
		}
		if ok && o.ContainerID == "" {
			o.ContainerID, o.Runtime = containerID(comp)
		}
	}
	return o, ok
}

// podUID recognizes a pod's cgroup: "pod<uid>" under the cgroupfs driver, and
// "<parent>-pod<uid_with_underscores>.slice" under the systemd driver, where
// systemd's unit naming turns each "-" of the UID into "_" (a "-" there would
// mean a parent slice). The UID comes back as written; Parse normalizes the
// one it keeps.
func podUID(comp string) (string, bool) {
	if s, isSlice := strings.CutSuffix(comp, ".slice"); isSlice {
		// The last "-" separates the parent slices from this one.
		comp = s[strings.LastIndexByte(s, '-')+1:]
	}
	raw, found := strings.CutPrefix(comp, "pod")
	if !found || !validUID(raw) {
		return "", false
	}
	return raw, true
}

// validUID accepts a UUID in its 8-4-4-4-12 lowercase form, with "-" or the
// systemd driver's "_" as separator (but one of them throughout), and the 32
// lowercase hex characters of a static pod's UID, which the kubelet derives
// from an MD5 hash of the manifest rather than generating as a UUID.
func validUID(s string) bool {
	switch len(s) {
	case 32:
		return isHex(s)
	case 36:
		sep := s[8]
		if sep != '-' && sep != '_' {
			return false
		}
		for i := 0; i < len(s); i++ {
			switch i {
			case 8, 13, 18, 23:
				if s[i] != sep {
					return false
				}
			default:
				if !isHexByte(s[i]) {
					return false
				}
			}
		}
		return true
	}
	return false
}

// containerID recognizes a container's cgroup: "<prefix><64hex>[.scope]" for
// the runtimes that prefix it, or a bare 64-hex component (containerd and
// Docker under the cgroupfs driver). Anything else, such as CRI-O's
// "crio-conmon-<id>.scope", is not a container.
func containerID(comp string) (string, Runtime) {
	comp = strings.TrimSuffix(comp, ".scope")
	for _, p := range containerPrefixes {
		if id, found := strings.CutPrefix(comp, p.prefix); found {
			if validContainerID(id) {
				return id, p.runtime
			}
			return "", ""
		}
	}
	if validContainerID(comp) {
		return comp, ""
	}
	return "", ""
}

// validContainerID accepts the 64 lowercase hex characters of a SHA-256, the
// form every runtime here uses for container IDs.
func validContainerID(s string) bool {
	return len(s) == 64 && isHex(s)
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHexByte(s[i]) {
			return false
		}
	}
	return true
}

func isHexByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
}
