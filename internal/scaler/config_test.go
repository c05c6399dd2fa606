package scaler

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

func TestConfigDefaultsValidate(t *testing.T) {
	c, err := ParseFlags([]string{"--agents=10.0.0.1:9401, 10.0.0.2:9401"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.GRPCListenAddress != ":9500" || c.WebListenAddress != ":9501" || len(c.Agents) != 2 || c.Agents[1] != "10.0.0.2:9401" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestConfigErrorsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{}, "--agents="},
		{[]string{"--agents=nohost"}, "--agents=nohost"},
		{[]string{"--agents.dns=gpu-agent-stream"}, "--agents.dns=gpu-agent-stream"},
		{[]string{"--agents=a:1", "--agents.dns-refresh=10ms"}, "--agents.dns-refresh=10ms"},
		{[]string{"--agents=a:1", "--agents.idle-timeout=0s"}, "--agents.idle-timeout=0s"},
		{[]string{"--agents=a:1", "--agents.backoff-max=1ms"}, "--agents.backoff-max=1ms"},
		{[]string{"--agents=a:1", "--agents.tls-cert-file=c.pem"}, "--agents.tls-cert-file=c.pem"},
		{[]string{"--agents=a:1", "--agents.tls-cert-file=c.pem", "--agents.tls-key-file=k.pem"}, "--agents.tls-ca-file="},
		{[]string{"--agents=a:1", "--agents.tls-server-name=x"}, "--agents.tls-server-name=x"},
		{[]string{"--agents=a:1", "--grpc.listen-address="}, "--grpc.listen-address="},
		{[]string{"--agents=a:1", "--grpc.tls-key-file=k.pem"}, "--grpc.tls-cert-file="},
		{[]string{"--agents=a:1", "--grpc.tls-client-ca-file=ca.pem"}, "--grpc.tls-client-ca-file=ca.pem"},
		{[]string{"--agents=a:1", "--web.listen-address="}, "--web.listen-address="},
		{[]string{"--agents=a:1", "--web.max-connections=-1"}, "--web.max-connections=-1"},
		{[]string{"--agents=a:1", "--web.max-requests=-1"}, "--web.max-requests=-1"},
		{[]string{"--agents=a:1", "--stale-after=1ms"}, "--stale-after=1ms"},
		{[]string{"--agents=a:1", "--pod-share.max-unattributed=0"}, "--pod-share.max-unattributed=0"},
		{[]string{"--agents=a:1", "--pod-share.max-unattributed=101"}, "--pod-share.max-unattributed=101"},
		{[]string{"--agents=a:1", "--stale-after=1m", "--forget-after=30s"}, "--forget-after=30s"},
		{[]string{"--agents=a:1", "--window.max=1h"}, "--window.max=1h0m0s"},
		{[]string{"--agents=a:1", "--log.level=loud"}, "--log.level=loud"},
		{[]string{"--agents=a:1", "--log.format=xml"}, "--log.format=xml"},
	} {
		c, err := ParseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		err = c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%v: error %v, want one naming %s", tc.args, err, tc.flag)
		}
	}
}

func TestMainExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"--log.format=xml"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--log.format=xml") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errOut.String())
	}
	out.Reset()
	if code := Main(context.Background(), []string{"--version"}, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "gpu-scaler ") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
	// Missing TLS files fail the start with the flag named.
	errOut.Reset()
	if code := Main(context.Background(), []string{"--agents=a:1", "--grpc.tls-cert-file=/nonexistent.pem", "--grpc.tls-key-file=/nonexistent.key"}, io.Discard, &errOut); code != 1 || !strings.Contains(errOut.String(), "grpc.tls-cert-file") {
		t.Errorf("missing cert: exit %d, %q", code, errOut.String())
	}
}
