package kedatls

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	v2 "k8s.io/api/autoscaling/v2"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/scaler"
	"github.com/gpu-telemetry/agent/internal/testutil"
	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// startScaler runs the scaler with mutual TLS towards KEDA, its files
// from vol (a cert-manager Secret: tls.crt, tls.key, ca.crt), fed by a
// plaintext fake agent.
func startScaler(t *testing.T, vol *tlstest.SecretVolume, agent string) string {
	t.Helper()
	cfg, err := scaler.ParseFlags([]string{"--agents=" + agent,
		"--grpc.tls-cert-file=" + vol.Path("tls.crt"), "--grpc.tls-key-file=" + vol.Path("tls.key"),
		"--grpc.tls-client-ca-file=" + vol.Path("ca.crt")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	go func() { done <- scaler.Run(ctx, cfg, log, scaler.Listeners{GRPC: grpcLn, Web: webLn}) }()
	t.Cleanup(func() { cancel(); <-done })
	return grpcLn.Addr().String()
}

// trigger is the ScaledObject's external trigger as KEDA's operator hands
// it to the scaler's constructor: metadata, and the TriggerAuthentication's
// parameters (the contents of a Secret's keys, not paths).
func trigger(addr string, ca *tlstest.CA, leaf *tlstest.Leaf) *scalersconfig.ScalerConfig {
	auth := map[string]string{}
	if ca != nil {
		auth["caCert"] = string(ca.PEM)
	}
	if leaf != nil {
		auth["tlsClientCert"], auth["tlsClientKey"] = string(leaf.CertPEM), string(leaf.KeyPEM)
	}
	return &scalersconfig.ScalerConfig{
		ScalableObjectName: "inference", ScalableObjectNamespace: "default", ScalableObjectType: "ScaledObject",
		TriggerType: "external-push", MetricType: v2.AverageValueMetricType,
		TriggerMetadata: map[string]string{"scalerAddress": addr, "enableTLS": "true",
			"metric": "gpu_util", "podPattern": "inference-.*", "target": "70", "activationTarget": "50"},
		AuthParams: auth,
	}
}

// metric asks as the HPA's poll does: GetMetricSpec for the name, then
// GetMetrics and IsActive.
func metric(t *testing.T, c *scalersconfig.ScalerConfig) (float64, error) {
	t.Helper()
	s, err := scalers.NewExternalScaler(c)
	if err != nil {
		t.Fatalf("NewExternalScaler: %v", err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	name := "s0-gpu" // GetMetricSpecForScaling logs and returns nothing on an error
	if specs := s.GetMetricSpecForScaling(ctx); len(specs) == 1 {
		name = specs[0].External.Metric.Name
	}
	values, _, err := s.GetMetricsAndActivity(ctx, name)
	if err != nil {
		return 0, err
	}
	return values[0].Value.AsApproximateFloat64(), nil
}

// KEDA's external scaler client against the scaler's mutual TLS, the
// scaler's Secret rotated under it: the right Secret is served, a wrong
// CA, an expired client certificate, no client certificate and plaintext
// are refused; after the rotation (new CA, new leaves, no restart) the
// new Secret is served, the StreamIsActive stream KEDA opened before the
// rotation goes on (KEDA reconnecting with the old CA would be refused,
// so a message after the rotation is from the first stream), and a new
// connection with the old Secret is refused.
func TestKEDAClientThroughARotation(t *testing.T) {
	ca1, ca2, other := tlstest.NewCA(t, "ca-1"), tlstest.NewCA(t, "ca-2"), tlstest.NewCA(t, "other")
	vol := tlstest.NewSecretVolume(t, tlstest.Secret(ca1, ca1.Issue(t, "gpu-scaler")))
	agent, err := scalertest.StartAgent("n1", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	util := publish(t, agent, 42)
	addr := startScaler(t, vol, agent.Addr())

	keda1 := ca1.Issue(t, "keda")
	testutil.Eventually(t, 10*time.Second, "KEDA's answer 42 with the first Secret", func() bool {
		v, err := metric(t, trigger(addr, ca1, keda1))
		return err == nil && v == 42
	})
	for name, c := range map[string]*scalersconfig.ScalerConfig{
		"trusting another CA":             trigger(addr, other, keda1),
		"with another CA's certificate":   trigger(addr, ca1, other.Issue(t, "keda")),
		"with an expired certificate":     trigger(addr, ca1, ca1.Issue(t, "keda", tlstest.Expired)),
		"without a client certificate":    trigger(addr, ca1, nil),
		"in plaintext (enableTLS absent)": plaintext(addr),
	} {
		if _, err := metric(t, c); err == nil {
			t.Errorf("KEDA %s was served", name)
		}
	}

	// KEDA's push stream, opened before the rotation.
	push, err := scalers.NewExternalPushScaler(trigger(addr, ca1, keda1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	active := make(chan bool, 16)
	pushDone := make(chan struct{})
	go func() { push.Run(ctx, active); close(pushDone) }()
	t.Cleanup(func() { cancel(); <-pushDone; push.Close(context.Background()) })
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-active:
			if got != want {
				t.Fatalf("StreamIsActive sent %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no StreamIsActive %v within 10s", want)
		}
	}
	expect(false) // 42 is under the activation target

	vol.Update(tlstest.Secret(ca2, ca2.Issue(t, "gpu-scaler")))
	keda2 := ca2.Issue(t, "keda")
	// The scaler reads its files at most once a second.
	testutil.Eventually(t, 10*time.Second, "KEDA's answer 42 with the rotated Secret", func() bool {
		v, err := metric(t, trigger(addr, ca2, keda2))
		return err == nil && v == 42
	})
	util.Store(75)
	expect(true)

	// KEDA pools one connection per trigger's address and TLS parameters:
	// with the push stream gone the old Secret's connection closes, and a
	// new one is refused.
	cancel()
	<-pushDone
	push.Close(context.Background())
	if _, err := metric(t, trigger(addr, ca1, keda1)); err == nil {
		t.Error("KEDA with the old Secret was served after the rotation")
	}
}

// publish sends a snapshot with the GPU's utilization every 100ms, as an
// agent samples, until the test ends: the scaler holds a silent node's
// pods stale. The value returned sets the utilization.
func publish(t *testing.T, agent *scalertest.Agent, util int64) *atomic.Int64 {
	var v atomic.Int64
	v.Store(util)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			agent.Publish(scalertest.Device("GPU-1", float64(v.Load()), "default/inference-0"))
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &v
}

func plaintext(addr string) *scalersconfig.ScalerConfig {
	c := trigger(addr, nil, nil)
	delete(c.TriggerMetadata, "enableTLS")
	c.AuthParams = map[string]string{}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
