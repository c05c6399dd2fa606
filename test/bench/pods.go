package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
)

// benchNode is the node the agent is told it runs on (--node-name).
const benchNode = "bench-node"

// gpuPodName names the p-th pod of a shared GPU, on the kubelet and in the
// API server alike.
func gpuPodName(p int) (namespace, name string) { return "media", fmt.Sprintf("webrtc-sfu-%02d", p) }

// sharedPods time-slices the GPUs with these UUIDs between n pods, as the
// NVIDIA device plugin's replicas (<uuid>::<n>) spell it.
func sharedPods(uuids []string, n int) []*podresourcesv1.PodResources {
	pods := make([]*podresourcesv1.PodResources, n)
	for p := range pods {
		ns, name := gpuPodName(p)
		pods[p] = fk.Pod(ns, name, fk.Container("sfu",
			fk.Devices("nvidia.com/gpu.shared", fmt.Sprintf("%s::%d", uuids[p%len(uuids)], p/len(uuids)))))
	}
	return pods
}

// apiPods are n pods of node as the API server serves them, the first
// gpuPods of them the kubelet's pods of shared GPUs (same namespace and
// name). Each is the size of a pod of a Deployment applied with kubectl:
// ten labels, five annotations (one of them the 3 KiB
// last-applied-configuration), three containers with ten environment
// variables, resources, ports, probes and volume mounts each, the
// managed fields of three writers, and a running status with conditions:
// about 17 kB of JSON. Everything is derived from the index, so runs
// serve the same bytes.
func apiPods(node string, n, gpuPods int) []corev1.Pod {
	pods := make([]corev1.Pod, n)
	for i := range pods {
		ns, name := fmt.Sprintf("team-%d", i%12), fmt.Sprintf("svc-%d-7d9f8b6c5-%05d", i%40, i)
		if i < gpuPods {
			ns, name = gpuPodName(i)
		}
		pods[i] = apiPod(node, ns, name, i)
	}
	return pods
}

func apiPod(node, ns, name string, i int) corev1.Pod {
	uid := types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i))
	app := strings.TrimSuffix(name, fmt.Sprintf("-%05d", i))
	if j := strings.LastIndex(app, "-"); j > 0 && strings.HasPrefix(name, "svc-") {
		app = app[:j]
	}
	created := metav1.NewTime(time.Date(2026, 11, 1, 8, 0, i%60, 0, time.UTC))
	labels := map[string]string{
		"app":                          app,
		"app.kubernetes.io/name":       app,
		"app.kubernetes.io/instance":   app + "-prod",
		"app.kubernetes.io/version":    "v1.24.3",
		"app.kubernetes.io/component":  "server",
		"app.kubernetes.io/part-of":    "platform",
		"app.kubernetes.io/managed-by": "Helm",
		"helm.sh/chart":                app + "-1.24.3",
		"pod-template-hash":            "7d9f8b6c5",
		"team":                         ns,
	}
	containers := make([]corev1.Container, 3)
	statuses := make([]corev1.ContainerStatus, 3)
	for c := range containers {
		containers[c] = apiContainer(app, c)
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", ns, name, c)))
		statuses[c] = corev1.ContainerStatus{
			Name:         containers[c].Name,
			Image:        containers[c].Image,
			ImageID:      containers[c].Image + "@sha256:" + hex.EncodeToString(sum[:]),
			ContainerID:  "containerd://" + hex.EncodeToString(sum[:]),
			Ready:        true,
			Started:      new(true),
			RestartCount: int32(i % 3),
			State:        corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: created}},
		}
	}
	spec := corev1.PodSpec{
		NodeName:                      node,
		Containers:                    containers,
		RestartPolicy:                 corev1.RestartPolicyAlways,
		TerminationGracePeriodSeconds: new(int64(30)),
		DNSPolicy:                     corev1.DNSClusterFirst,
		ServiceAccountName:            app,
		SchedulerName:                 "default-scheduler",
		PriorityClassName:             "platform-default",
		Priority:                      new(int32(1000)),
		EnableServiceLinks:            new(true),
		PreemptionPolicy:              new(corev1.PreemptLowerPriority),
		SecurityContext:               &corev1.PodSecurityContext{RunAsNonRoot: new(true), FSGroup: new(int64(2000))},
		Tolerations: []corev1.Toleration{
			{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: new(int64(300))},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: new(int64(300))},
			{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		},
		Volumes: []corev1.Volume{
			{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}, DefaultMode: new(int32(420))}}},
			{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "kube-api-access-" + fmt.Sprintf("%05d", i), VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				DefaultMode: new(int32(420)),
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: new(int64(3607)), Path: "token"}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				}}}},
		},
	}
	// What `kubectl apply` records: the template as applied, its
	// containers without the defaults and the environment.
	short := make([]corev1.Container, len(containers))
	for c, ct := range containers {
		short[c] = corev1.Container{Name: ct.Name, Image: ct.Image, Args: ct.Args, Ports: ct.Ports, Resources: ct.Resources, VolumeMounts: ct.VolumeMounts}
	}
	applied, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": labels}, "spec": map[string]any{"containers": short, "volumes": spec.Volumes}})
	meta := metav1.ObjectMeta{
		Namespace: ns, Name: name, UID: uid,
		GenerateName:      strings.TrimSuffix(name, fmt.Sprintf("%05d", i)),
		CreationTimestamp: created,
		Labels:            labels,
		Annotations: map[string]string{
			"kubectl.kubernetes.io/last-applied-configuration": string(applied),
			"prometheus.io/scrape":                             "true",
			"prometheus.io/port":                               "9090",
			"checksum/config":                                  hex.EncodeToString([]byte(uid[:8])) + strings.Repeat("0", 48),
			"kubectl.kubernetes.io/default-container":          containers[0].Name,
		},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-7d9f8b6c5",
			UID: types.UID(fmt.Sprintf("11111111-0000-4000-8000-%012d", i%40)), Controller: new(true), BlockOwnerDeletion: new(true)}},
		ManagedFields: []metav1.ManagedFieldsEntry{
			{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &created, FieldsType: "FieldsV1", FieldsV1: fieldsV1("spec", containers)},
			{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &created, FieldsType: "FieldsV1", FieldsV1: fieldsV1("status", containers), Subresource: "status"},
		},
	}
	conds := make([]corev1.PodCondition, 0, 5)
	for _, t := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		conds = append(conds, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: created})
	}
	ip := fmt.Sprintf("10.244.%d.%d", i/250, i%250+2)
	return corev1.Pod{ObjectMeta: meta, Spec: spec, Status: corev1.PodStatus{
		Phase: corev1.PodRunning, Conditions: conds, HostIP: "10.0.0.17", HostIPs: []corev1.HostIP{{IP: "10.0.0.17"}},
		PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &created, QOSClass: corev1.PodQOSBurstable,
		ContainerStatuses: statuses,
	}}
}

// apiContainer is the c-th container of an app's pod: the server, a
// sidecar proxy, a log shipper.
func apiContainer(app string, c int) corev1.Container {
	name := []string{"server", "envoy", "fluent-bit"}[c]
	env := make([]corev1.EnvVar, 0, 10)
	for k := range 8 {
		env = append(env, corev1.EnvVar{Name: fmt.Sprintf("%s_SETTING_%d", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), k),
			Value: fmt.Sprintf("https://%s-%d.%s.svc.cluster.local:8443/v1/config?key=%d", app, k, app, k)})
	}
	env = append(env,
		corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
		corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory"}}})
	return corev1.Container{
		Name:  name,
		Image: fmt.Sprintf("registry.example.com/platform/%s/%s:v1.24.3", app, name),
		Args:  []string{"--config=/etc/" + name + "/config.yaml", "--log-level=info", "--metrics-port=9090"},
		Env:   env,
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: int32(8080 + c), Protocol: corev1.ProtocolTCP},
			{Name: "metrics", ContainerPort: int32(9090 + c), Protocol: corev1.ProtocolTCP},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: "/etc/" + name, ReadOnly: true},
			{Name: "cache", MountPath: "/var/cache/" + name},
			{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
		},
		LivenessProbe:            &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10, TimeoutSeconds: 1, FailureThreshold: 3, SuccessThreshold: 1},
		ReadinessProbe:           &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 5, TimeoutSeconds: 1, FailureThreshold: 3, SuccessThreshold: 1},
		TerminationMessagePath:   "/dev/termination-log",
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
		ImagePullPolicy:          corev1.PullIfNotPresent,
		SecurityContext:          &corev1.SecurityContext{AllowPrivilegeEscalation: new(false), ReadOnlyRootFilesystem: new(true)},
	}
}

// fieldsV1 is a managed-fields set of the part of a pod one writer owns,
// shaped as the API server writes it.
func fieldsV1(part string, containers []corev1.Container) *metav1.FieldsV1 {
	set := map[string]any{}
	for _, c := range containers {
		k := fmt.Sprintf(`k:{"name":%q}`, c.Name)
		if part == "status" {
			set[k] = map[string]any{".": map[string]any{}, "f:containerID": map[string]any{}, "f:image": map[string]any{}, "f:imageID": map[string]any{},
				"f:ready": map[string]any{}, "f:restartCount": map[string]any{}, "f:started": map[string]any{}, "f:state": map[string]any{"f:running": map[string]any{".": map[string]any{}, "f:startedAt": map[string]any{}}}}
			continue
		}
		env := map[string]any{".": map[string]any{}}
		for _, e := range c.Env {
			env[fmt.Sprintf(`k:{"name":%q}`, e.Name)] = map[string]any{".": map[string]any{}, "f:name": map[string]any{}, "f:value": map[string]any{}}
		}
		set[k] = map[string]any{".": map[string]any{}, "f:args": map[string]any{}, "f:env": env, "f:image": map[string]any{}, "f:imagePullPolicy": map[string]any{},
			"f:name": map[string]any{}, "f:ports": map[string]any{}, "f:resources": map[string]any{}, "f:volumeMounts": map[string]any{}}
	}
	raw, _ := json.Marshal(map[string]any{"f:" + part: map[string]any{"f:containers": set}})
	if part == "status" {
		raw, _ = json.Marshal(map[string]any{"f:status": map[string]any{"f:containerStatuses": set, "f:conditions": map[string]any{}, "f:podIP": map[string]any{}, "f:startTime": map[string]any{}}})
	}
	return metav1.NewFieldsV1(string(raw))
}
