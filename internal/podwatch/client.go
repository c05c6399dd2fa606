package podwatch

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrNoCluster is returned by NewClient outside a cluster when no kubeconfig
// was given: callers can then run without pod names instead of failing.
var ErrNoCluster = errors.New("not in a cluster and no --kubeconfig")

// NewClient returns a client of the pods API from the kubeconfig file, or
// from the pod's service account when kubeconfig is empty.
//
// It is a REST client over a scheme that knows core/v1 only, not client-go's
// kubernetes.Clientset: the watcher needs List and Watch of pods, and the
// clientset's scheme would link every API group into the agent (see
// PodsClient).
func NewClient(kubeconfig string) (PodsClient, error) {
	var cfg *rest.Config
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("podwatch: %w", ErrNoCluster)
		}
		if err != nil {
			return nil, fmt.Errorf("podwatch: in-cluster config: %w", err)
		}
		cfg = c
	} else {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("podwatch: kubeconfig %s: %w", kubeconfig, err)
		}
		cfg = c
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("podwatch: registering core/v1: %w", err)
	}
	// ListOptions and the watch events travel as meta/v1 of the core group,
	// as client-go's own scheme registers them.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})

	cfg = rest.CopyConfig(cfg)
	cfg.APIPath = "/api"
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	cfg.UserAgent = "gpu-telemetry-agent"
	// Protobuf halves the bytes and the decoding time of a pod list next to
	// JSON; JSON stays accepted for servers or proxies that lack it.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("podwatch: building client: %w", err)
	}
	return &podsClient{rc: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

// podsClient lists and watches pods in all namespaces, as client-go's typed
// PodInterface does.
type podsClient struct {
	rc     *rest.RESTClient
	params runtime.ParameterCodec
}

// List and Watch return the API's errors as they come: the reflector tells
// an expired resource version or a closed watch from a real failure by
// their type, and its handler (Watcher.watchError) logs them with context.
func (c *podsClient) List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	list := &corev1.PodList{}
	if err := c.rc.Get().Resource("pods").VersionedParams(&opts, c.params).Do(ctx).Into(list); err != nil {
		return nil, err
	}
	return list, nil
}

func (c *podsClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rc.Get().Resource("pods").VersionedParams(&opts, c.params).Watch(ctx)
}
