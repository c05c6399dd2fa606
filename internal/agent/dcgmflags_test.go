package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgm"
)

func parseEnv(args []string, env map[string]string) (*Config, error) {
	return ParseFlags(args, func(k string) string { return env[k] }, &bytes.Buffer{})
}

func notices(c *Config) string {
	var b bytes.Buffer
	c.LogNotices(slog.New(slog.NewTextHandler(&b, nil)))
	return b.String()
}

// dcgm-exporter's options, as its users' DaemonSets pass them, set what
// the agent's own flags set.
func TestDCGMFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(*Config) error
	}{
		{"short forms", []string{"-f", "/etc/dcgm-exporter/dcp-metrics-included.csv", "-a", ":9500", "-c", "3000", "-k", "-o", "-n"}, nil, func(c *Config) error {
			if c.CollectorsFile != "/etc/dcgm-exporter/dcp-metrics-included.csv" || c.ListenAddress != ":9500" || c.Interval != 3*time.Second ||
				!c.UseOldNamespace || !c.NoHostname {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"long forms", []string{"--collectors=testdata/collectors.csv", "--address=:9500", "--collect-interval=30000", "--kubernetes=true", "--use-old-namespace",
			"--kubernetes-gpu-id-type=device-name", "--nvidia-resource-names=nvidia.com/a100", "--nvidia-resource-names", "nvidia.com/a10,nvidia.com/a100",
			"--pod-resources-kubelet-socket=/run/k.sock", "--web-config-file=/etc/web.yaml", "--no-hostname", "--log-format=text"}, nil, func(c *Config) error {
			if c.CollectorsFile != "testdata/collectors.csv" || c.ListenAddress != ":9500" || c.Interval != 30*time.Second || !c.UseOldNamespace ||
				!slices.Equal(c.GPUResourceNames, []string{"nvidia.com/a100", "nvidia.com/a10"}) || c.PodResourcesSocket != "/run/k.sock" ||
				c.WebConfigFile != "/etc/web.yaml" || !c.NoHostname || c.LogFormat != "logfmt" {
				return fmt.Errorf("%+v", c)
			}
			// A 30 s interval needs a window as long, or Validate refuses it.
			if c.Window != 30*time.Second {
				return fmt.Errorf("window %v, want the interval", c.Window)
			}
			return c.Validate()
		}},
		{"environment", nil, map[string]string{
			"DCGM_EXPORTER_COLLECTORS": "/e.csv", "DCGM_EXPORTER_LISTEN": ":9600", "DCGM_EXPORTER_INTERVAL": "1000",
			"DCGM_EXPORTER_KUBERNETES": "true", "DCGM_EXPORTER_USE_OLD_NAMESPACE": "true", "DCGM_EXPORTER_KUBERNETES_GPU_ID_TYPE": "uid",
			"NVIDIA_RESOURCE_NAMES": "nvidia.com/a100,nvidia.com/h100", "DCGM_POD_RESOURCES_KUBELET_SOCKET": "/run/e.sock",
			"DCGM_EXPORTER_WEB_CONFIG_FILE": "/etc/e.yaml", "DCGM_EXPORTER_NO_HOSTNAME": "1", "DCGM_EXPORTER_LOG_FORMAT": "json",
		}, func(c *Config) error {
			if c.CollectorsFile != "/e.csv" || c.ListenAddress != ":9600" || c.Interval != time.Second || !c.UseOldNamespace ||
				!slices.Equal(c.GPUResourceNames, []string{"nvidia.com/a100", "nvidia.com/h100"}) || c.PodResourcesSocket != "/run/e.sock" ||
				c.WebConfigFile != "/etc/e.yaml" || !c.NoHostname || c.LogFormat != "json" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"flag wins over environment", []string{"-a", ":1", "--web.config.file=/flag.yaml"}, map[string]string{
			"DCGM_EXPORTER_LISTEN": ":2", "DCGM_EXPORTER_WEB_CONFIG_FILE": "/env.yaml", "DCGM_EXPORTER_USE_OLD_NAMESPACE": "true",
		}, func(c *Config) error {
			if c.ListenAddress != ":1" || c.WebConfigFile != "/flag.yaml" || !c.UseOldNamespace {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"native and dcgm flag agree", []string{"--interval=2s", "-c", "2000", "--web.listen-address=:7", "--address=:7"}, nil, func(c *Config) error {
			if c.Interval != 2*time.Second || c.ListenAddress != ":7" {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{"xid window", []string{"-x", "60000"}, nil, func(c *Config) error {
			if c.XIDCountWindow != time.Minute {
				return fmt.Errorf("-x 60000: window %v, want 1m", c.XIDCountWindow)
			}
			return nil
		}},
		{"xid window from the environment", nil, map[string]string{"DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE": "86400000"}, func(c *Config) error {
			if c.XIDCountWindow != 24*time.Hour {
				return fmt.Errorf("window %v, want 24h", c.XIDCountWindow)
			}
			return nil
		}},
		{"interval clamped", []string{"-c", "10"}, nil, func(c *Config) error {
			if c.Interval != 100*time.Millisecond {
				return fmt.Errorf("interval %v", c.Interval)
			}
			if n := notices(c); !strings.Contains(n, "below the agent's minimum") || strings.Count(n, "\n") != 1 {
				return fmt.Errorf("notices %q, want one line about the clamp", n)
			}
			return c.Validate()
		}},
		{"remote host engine selects standalone", []string{"-r", "/run/nvidia/hostengine.sock"}, nil, func(c *Config) error {
			if c.DCGM != dcgm.Standalone || c.DCGMAddress != "/run/nvidia/hostengine.sock" {
				return fmt.Errorf("dcgm %v at %q", c.DCGM, c.DCGMAddress)
			}
			return c.Validate()
		}},
		{"remote host engine from the environment", nil, map[string]string{"DCGM_REMOTE_HOSTENGINE_INFO": "10.0.0.1:5555"}, func(c *Config) error {
			if c.DCGM != dcgm.Standalone || c.DCGMAddress != "10.0.0.1:5555" {
				return fmt.Errorf("dcgm %v at %q", c.DCGM, c.DCGMAddress)
			}
			return c.Validate()
		}},
		{"dcgm off by default", nil, nil, func(c *Config) error {
			if c.DCGM != dcgm.Off {
				return fmt.Errorf("dcgm %v", c.DCGM)
			}
			return c.Validate()
		}},
		{"ignored options warn once each", []string{"--fake-gpus", "-d", "f", "--dump-enabled",
			"--dump-directory=/tmp/d", "-rbmn", "--debug", "--enable-dcgm-log=false"}, map[string]string{"KUBERNETES_ENABLE_DRA": "true", "DCGM_EXPORTER_DEBUG": "true"},
			func(c *Config) error {
				n := notices(c)
				for _, want := range []string{"--fake-gpus", "--devices", "--dump-enabled", "--dump-directory",
					"--replace-blanks-in-model-name", "--debug", "$KUBERNETES_ENABLE_DRA"} {
					if strings.Count(n, "option="+want+" ") != 1 {
						return fmt.Errorf("want one warning for %s in:\n%s", want, n)
					}
				}
				if strings.Contains(n, "enable-dcgm-log") || strings.Contains(n, "DCGM_EXPORTER_DEBUG") {
					return fmt.Errorf("an option set off, or an environment variable under its flag, warned:\n%s", n)
				}
				return c.Validate()
			}},
		{"pod labels and UIDs", []string{"--kubernetes-enable-pod-labels", "--kubernetes-enable-pod-uid",
			`--kubernetes-pod-label-allowlist-regex=^app\.kubernetes\.io/`, "--kubernetes-pod-label-allowlist-regex", "team, ^tier$ "}, nil,
			func(c *Config) error {
				if !c.PodLabels || !c.PodUID {
					return fmt.Errorf("labels %v, UIDs %v", c.PodLabels, c.PodUID)
				}
				if err := allows(c.PodLabelAllowlist, []string{"app.kubernetes.io/name", "my-team", "tier"}, []string{"tiers", "app_kubernetes_io_name", "pod-template-hash"}); err != nil {
					return err
				}
				if n := notices(c); n != "" {
					return fmt.Errorf("notices:\n%s", n)
				}
				return c.Validate()
			}},
		{"pod labels and UIDs from the environment", nil, map[string]string{
			"DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS": "true", "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID": "1",
			"DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX": " ^team$ ,^app",
		}, func(c *Config) error {
			if !c.PodLabels || !c.PodUID {
				return fmt.Errorf("labels %v, UIDs %v", c.PodLabels, c.PodUID)
			}
			return allows(c.PodLabelAllowlist, []string{"team", "app"}, []string{"my-team"})
		}},
		{"pod label flags win over the environment", []string{"--kubernetes-enable-pod-labels=false", "--kubernetes-pod-label-allowlist-regex=^a$"}, map[string]string{
			"DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS": "true", "DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX": "^b$",
		}, func(c *Config) error {
			if c.PodLabels || c.PodUID {
				return fmt.Errorf("labels %v, UIDs %v", c.PodLabels, c.PodUID)
			}
			if err := allows(c.PodLabelAllowlist, []string{"a"}, []string{"b"}); err != nil {
				return err
			}
			// An allowlist without labels does nothing, and says so.
			if n := notices(c); strings.Count(n, "has no effect without --kubernetes-enable-pod-labels") != 1 {
				return fmt.Errorf("notices:\n%s", n)
			}
			return nil
		}},
		{"an empty allowlist pattern keeps every label", []string{"--kubernetes-enable-pod-labels", "--kubernetes-pod-label-allowlist-regex=^team$,"}, nil,
			func(c *Config) error {
				if n := notices(c); strings.Count(n, "matches every pod label") != 1 {
					return fmt.Errorf("notices:\n%s", n)
				}
				return allows(c.PodLabelAllowlist, []string{"team", "anything"}, nil)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseEnv(tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(c); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestDCGMFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--interval=1s", "-c", "2000"}, nil, "--interval=1s and dcgm-exporter's --collect-interval=2000"},
		{[]string{"--web.listen-address=:1", "--address=:2"}, nil, "--web.listen-address=:1 and dcgm-exporter's --address=:2"},
		{[]string{"-c", "soon"}, nil, "--collect-interval=soon (dcgm-exporter's): must be a whole number of milliseconds"},
		{nil, map[string]string{"DCGM_EXPORTER_INTERVAL": "-5"}, "$DCGM_EXPORTER_INTERVAL=-5 (dcgm-exporter's): must be positive"},
		{nil, map[string]string{"DCGM_EXPORTER_KUBERNETES": "yes"}, "$DCGM_EXPORTER_KUBERNETES=yes"},
		{[]string{"--kubernetes-gpu-id-type=serial"}, nil, `--kubernetes-gpu-id-type=serial (dcgm-exporter's): must be "uid" or "device-name"`},
		{[]string{"--log-format=xml"}, nil, "--log-format=xml"},
		{[]string{"-x", "5m"}, nil, "--xid-count-window-size=5m (dcgm-exporter's): want a whole number of milliseconds"},
		{[]string{"-x", "0"}, nil, "--xid-count-window-size=0 (dcgm-exporter's): must be a positive number of milliseconds"},
		{nil, map[string]string{"DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE": "-1"}, "must be a positive number of milliseconds"},
		{[]string{"-f", "testdata/malformed.csv"}, nil, "--collectors=testdata/malformed.csv: testdata/malformed.csv:4: 2 fields"},
		{nil, map[string]string{"DCGM_EXPORTER_COLLECTORS": "testdata/none.csv"}, "--collectors=testdata/none.csv: reading dcgm-exporter field list"},
		{[]string{"--kubernetes-pod-label-allowlist-regex=^app,a(b"}, nil,
			`--kubernetes-pod-label-allowlist-regex=^app,a(b (dcgm-exporter's): pattern "a(b": error parsing regexp: missing closing )`},
		{nil, map[string]string{"DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX": "[z-a]"},
			`$DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX=[z-a] (dcgm-exporter's): pattern "[z-a]": error parsing regexp: invalid character class range`},
		{[]string{"--kubernetes-enable-pod-uid=maybe"}, nil, `"maybe" for -kubernetes-enable-pod-uid: must be true or false`},
		{[]string{"--dcgm=on"}, nil, `invalid value "on" for flag -dcgm: must be "off", "embedded" or "standalone"`},
		{[]string{"--dcgm=embedded", "-r", "localhost:5555"}, nil, "--dcgm=embedded and dcgm-exporter's --remote-hostengine-info=localhost:5555 say different things"},
		{[]string{"--dcgm.hostengine-address=h:1"}, map[string]string{"DCGM_REMOTE_HOSTENGINE_INFO": "h:2"}, "--dcgm.hostengine-address=h:1 and dcgm-exporter's --remote-hostengine-info=h:2 say different things"},
		{[]string{"-r", "nv-hostengine"}, nil, "--dcgm.hostengine-address=nv-hostengine: want host:port"},
		{[]string{"--dcgm=standalone", "--dcgm.hostengine-address="}, nil, `--dcgm.hostengine-address="": must be host:port or a unix socket path`},
		{[]string{"--dcgm=embedded", "--simulate=2"}, nil, "--dcgm=embedded: not with --simulate"},
	} {
		c, err := parseEnv(tc.args, tc.env)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: err = %v, want it to contain %q", tc.args, tc.env, err, tc.want)
		}
	}
}

// Unknown options still fail, with status 2 and the option named; ignored
// ones do not; a conflict is printed, not only returned.
func TestDCGMFlagsExitCodes(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx := context.Background()
	if code := Main(ctx, []string{"--no-such-dcgm-flag"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "-no-such-dcgm-flag") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "fake-gpus") {
		t.Errorf("usage lists the ignored options:\n%s", stderr.String())
	}
	stderr.Reset()
	if code := Main(ctx, []string{"--interval=1s", "-c", "2000"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "--collect-interval=2000") {
		t.Errorf("conflict: exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := Main(ctx, []string{"--fake-gpus", "--version"}, &stdout, &stderr); code != 0 {
		t.Errorf("ignored flag: exit %d, stderr %q", code, stderr.String())
	}
}

// allows checks an allowlist keeps the keys in yes and none in no.
func allows(a *attribution.LabelAllowlist, yes, no []string) error {
	if a == nil {
		return fmt.Errorf("no allowlist")
	}
	for _, k := range yes {
		if !a.Allows(k) {
			return fmt.Errorf("%q refused", k)
		}
	}
	for _, k := range no {
		if a.Allows(k) {
			return fmt.Errorf("%q allowed", k)
		}
	}
	return nil
}
