package agent

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/nvml"
)

// dcgm-exporter's command line and environment, accepted so that a
// DaemonSet written for it runs the agent with only its image swapped.
//
// The names, short aliases, environment variables and value kinds are
// dcgm-exporter's own, from its pkg/cmd/app.go (NewApp's c.Flags, urfave/cli
// v2, which parses with Go's flag package as we do: "-f x", "--collectors=x"
// and "-collectors x" all work, and a bool flag takes no separate value).
// Its Helm chart (deployment/templates/daemonset.yaml) passes
// `arguments` (by default "-f /etc/dcgm-exporter/dcp-metrics-included.csv")
// and sets DCGM_EXPORTER_KUBERNETES=true, DCGM_EXPORTER_LISTEN, and
// DCGM_EXPORTER_WEB_CONFIG_FILE or KUBERNETES_ENABLE_DRA when enabled.
//
// Precedence is dcgm-exporter's: a command-line flag wins over its
// environment variable. Where the agent has a dotted flag saying the same
// thing, that flag wins over the environment too, and giving both flags
// with different values is an error naming both.

// dcgmOption is one of dcgm-exporter's flags.
type dcgmOption struct {
	name   string // its long name
	short  string // its alias, "" if none
	env    string // its environment variable
	isBool bool
	slice  bool // repeated flags and commas add values, as a cli.StringSliceFlag
	// native is the agent's own flag saying the same thing; toNative turns
	// dcgm-exporter's value into that flag's, as its Value.String() prints
	// it (so that two spellings of one value do not conflict).
	native   string
	toNative func(v string, c *Config) (string, error)
	// set applies an option the agent has no dotted flag for.
	set func(v string, c *Config) error
	// ignored says why the option has no meaning here: it is accepted with
	// one warning, so that a DaemonSet carrying it still starts.
	ignored string
}

// dcgmIntervalUnit is the unit of dcgm-exporter's -c: a whole number of
// milliseconds (a cli.IntFlag, default 30000).
const dcgmIntervalUnit = time.Millisecond

func dcgmOptions() []dcgmOption {
	const noDCGM = "the agent reads NVML directly, without DCGM or its host engine"
	return []dcgmOption{
		{name: "collectors", short: "f", env: "DCGM_EXPORTER_COLLECTORS", set: func(v string, c *Config) error {
			c.CollectorsFile = v
			return nil
		}},
		{name: "address", short: "a", env: "DCGM_EXPORTER_LISTEN", native: "web.listen-address",
			toNative: func(v string, _ *Config) (string, error) { return v, nil }},
		{name: "collect-interval", short: "c", env: "DCGM_EXPORTER_INTERVAL", native: "interval", toNative: collectInterval},
		{name: "kubernetes", short: "k", env: "DCGM_EXPORTER_KUBERNETES", isBool: true, set: func(v string, c *Config) error {
			on, err := parseBool(v)
			if err != nil {
				return err
			}
			if !on {
				// dcgm-exporter's default; the agent has no switch for
				// attribution: pod labels come whenever the kubelet answers.
				c.notices = append(c.notices, notice{warn: true, msg: "--kubernetes=false has no effect: the agent adds pod labels whenever the kubelet's pod-resources socket answers"})
			}
			return nil
		}},
		{name: "use-old-namespace", short: "o", env: "DCGM_EXPORTER_USE_OLD_NAMESPACE", isBool: true, set: func(v string, c *Config) error {
			var err error
			c.UseOldNamespace, err = parseBool(v)
			return err
		}},
		{name: "kubernetes-gpu-id-type", env: "DCGM_EXPORTER_KUBERNETES_GPU_ID_TYPE", set: func(v string, _ *Config) error {
			// dcgm-exporter needs to be told which spelling the device
			// plugin uses; the agent's resolver knows both (GPU-<uuid> and
			// nvidia<minor>), so the value is checked and needs no more.
			if v != "uid" && v != "device-name" {
				return errors.New(`must be "uid" or "device-name"`)
			}
			return nil
		}},
		{name: "nvidia-resource-names", env: "NVIDIA_RESOURCE_NAMES", slice: true, set: func(v string, c *Config) error {
			// A string slice in dcgm-exporter: repeated or comma-separated.
			for _, n := range strings.Split(v, ",") {
				if n = strings.TrimSpace(n); n != "" && !slices.Contains(c.GPUResourceNames, n) {
					c.GPUResourceNames = append(c.GPUResourceNames, n)
				}
			}
			return nil
		}},
		{name: "pod-resources-kubelet-socket", env: "DCGM_POD_RESOURCES_KUBELET_SOCKET", native: "kubelet.pod-resources-socket",
			toNative: func(v string, _ *Config) (string, error) { return v, nil }},
		// 4.8.4: off by default, go_*, process_* and promhttp_* together
		// (dcgm-exporter's deployment/README.md, "Exporter metrics").
		{name: "enable-exporter-metrics", env: "DCGM_EXPORTER_ENABLE_EXPORTER_METRICS", isBool: true, native: "web.enable-exporter-metrics",
			toNative: func(v string, _ *Config) (string, error) {
				on, err := parseBool(v)
				return strconv.FormatBool(on), err
			}},
		{name: "web-config-file", env: "DCGM_EXPORTER_WEB_CONFIG_FILE", native: "web.config.file",
			toNative: func(v string, _ *Config) (string, error) { return v, nil }},
		{name: "no-hostname", short: "n", env: "DCGM_EXPORTER_NO_HOSTNAME", isBool: true, set: func(v string, c *Config) error {
			var err error
			c.NoHostname, err = parseBool(v)
			return err
		}},
		// The window of DCGM_EXP_XID_ERRORS_COUNT: milliseconds, a
		// cli.IntFlag, default 300000 (5 minutes).
		{name: "xid-count-window-size", short: "x", env: "DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE", set: func(v string, c *Config) error {
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return errors.New("want a whole number of milliseconds")
			}
			if ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
				return errors.New("must be a positive number of milliseconds")
			}
			c.XIDCountWindow = time.Duration(ms) * time.Millisecond
			return nil
		}},
		{name: "log-format", env: "DCGM_EXPORTER_LOG_FORMAT", native: "log.format", toNative: func(v string, _ *Config) (string, error) {
			switch v {
			case "text": // slog's text handler: logfmt
				return "logfmt", nil
			case "json":
				return v, nil
			}
			return "", errors.New(`must be "text" or "json"`)
		}},

		// Pods' labels and UIDs on their series, from the pod watch
		// (--kubernetes.pod-watch; internal/exporter/podlabels.go).
		{name: "kubernetes-enable-pod-labels", env: "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS", isBool: true, set: func(v string, c *Config) error {
			var err error
			c.PodLabels, err = parseBool(v)
			return err
		}},
		{name: "kubernetes-pod-label-allowlist-regex", env: "DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX", slice: true, set: podLabelAllowlist},
		{name: "kubernetes-enable-pod-uid", env: "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID", isBool: true, set: func(v string, c *Config) error {
			var err error
			c.PodUID, err = parseBool(v)
			return err
		}},

		// Options with no meaning here: accepted, each with a warning.
		{name: "config-file", env: "DCGM_EXPORTER_CONFIG_FILE", ignored: "dcgm-exporter's YAML configuration is not read; pass its settings as flags"},
		{name: "web-read-timeout", env: "DCGM_EXPORTER_WEB_READ_TIMEOUT", ignored: "the agent's HTTP server sets its own timeouts"},
		{name: "web-write-timeout", env: "DCGM_EXPORTER_WEB_WRITE_TIMEOUT", ignored: "the agent's HTTP server sets its own timeouts"},
		{name: "web-systemd-socket", env: "DCGM_EXPORTER_SYSTEMD_SOCKET", isBool: true, ignored: "the agent listens on --web.listen-address"},
		{name: "cpu-devices", short: "p", env: "DCGM_EXPORTER_CPU_DEVICES_STR", ignored: "the agent monitors GPUs only"},
		{name: "configmap-data", short: "m", env: "DCGM_EXPORTER_CONFIGMAP_DATA", ignored: "the field list is read from --collectors only"},
		// The host engine to connect to: selects --dcgm=standalone
		// (applyRemoteHostengine).
		{name: "remote-hostengine-info", short: "r", env: "DCGM_REMOTE_HOSTENGINE_INFO", set: func(v string, c *Config) error {
			if strings.TrimSpace(v) == "" {
				return errors.New("must be host:port or a unix socket path")
			}
			c.dcgmRemote = v
			return nil
		}},
		{name: "devices", short: "d", env: "DCGM_EXPORTER_DEVICES_STR", ignored: "the agent monitors every GPU and MIG instance"},
		{name: "switch-devices", short: "s", env: "DCGM_EXPORTER_OTHER_DEVICES_STR", ignored: "the agent monitors GPUs only, not NVSwitches"},
		{name: "fake-gpus", env: "DCGM_EXPORTER_USE_FAKE_GPUS", isBool: true, ignored: "use --simulate N for GPUs that are not there"},
		{name: "replace-blanks-in-model-name", short: "rbmn", env: "DCGM_EXPORTER_REPLACE_BLANKS_IN_MODEL_NAME", isBool: true, ignored: "modelName is NVML's name as it is"},
		{name: "debug", env: "DCGM_EXPORTER_DEBUG", isBool: true, ignored: "use --log.level=debug"},
		{name: "clock-events-count-window-size", env: "DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE", ignored: "DCGM_EXP_CLOCK_EVENTS_COUNT is not served"},
		{name: "enable-dcgm-log", env: "DCGM_EXPORTER_ENABLE_DCGM_LOG", isBool: true, ignored: noDCGM},
		{name: "dcgm-log-level", env: "DCGM_EXPORTER_DCGM_LOG_LEVEL", ignored: noDCGM},
		{name: "hpc-job-mapping-dir", env: "DCGM_HPC_JOB_MAPPING_DIR", ignored: "HPC job labels are not supported"},
		{name: "container-labels", env: "DCGM_EXPORTER_CONTAINER_LABELS", isBool: true, ignored: "container runtime labels are not supported"},
		{name: "container-runtime-socket", env: "DCGM_CONTAINER_RUNTIME_SOCKET", ignored: "container runtime labels are not supported"},
		{name: "kubernetes-virtual-gpus", env: "KUBERNETES_VIRTUAL_GPUS", isBool: true, ignored: "a GPU several pods share (time-slicing, MPS) always has its device series plus one series per pod, each with that pod's own share where GPU processes are mapped to pods (docs/metrics.md, What a pod reads)"},
		{name: "kubernetes-enable-dra", env: "KUBERNETES_ENABLE_DRA", isBool: true, ignored: "GPUs allocated through DRA claims (driver gpu.nvidia.com) are always attributed to their pods, from the kubelet's pod-resources List; no flag is needed"},
		{name: "dump-enabled", env: "DCGM_EXPORTER_DUMP_ENABLED", isBool: true, ignored: "debug dumps are not written"},
		{name: "dump-directory", env: "DCGM_EXPORTER_DUMP_DIRECTORY", ignored: "debug dumps are not written"},
		{name: "dump-retention", env: "DCGM_EXPORTER_DUMP_RETENTION", ignored: "debug dumps are not written"},
		{name: "dump-compression", env: "DCGM_EXPORTER_DUMP_COMPRESSION", isBool: true, ignored: "debug dumps are not written"},
		{name: "disable-startup-validate", env: "DISABLE_STARTUP_VALIDATE", isBool: true, ignored: "the agent validates only its flags at start"},
		{name: "enable-gpu-bind-unbind-watch", env: "DCGM_EXPORTER_ENABLE_GPU_BIND_UNBIND_WATCH", isBool: true, ignored: noDCGM},
		{name: "gpu-bind-unbind-poll-interval", env: "DCGM_EXPORTER_GPU_BIND_UNBIND_POLL_INTERVAL", ignored: noDCGM},
		{name: "enable-pprof", env: "DCGM_EXPORTER_ENABLE_PPROF", isBool: true, ignored: "the agent's --web.enable-pprof serves Go's profiles under /debug/pprof/ on the web port"},
	}
}

// podLabelAllowlist compiles --kubernetes-pod-label-allowlist-regex, a
// cli.StringSliceFlag in dcgm-exporter: repeated or comma-separated (so a
// pattern cannot hold a comma, there as here), each pattern trimmed of
// spaces as urfave/cli trims those of the environment. A pattern that does
// not compile fails the start, where dcgm-exporter logs it and goes on.
func podLabelAllowlist(v string, c *Config) error {
	patterns := strings.Split(v, ",")
	for i := range patterns {
		patterns[i] = strings.TrimSpace(patterns[i])
	}
	a, err := attribution.NewLabelAllowlist(patterns)
	if err != nil {
		return err
	}
	if slices.Contains(patterns, "") {
		c.notices = append(c.notices, notice{warn: true, msg: "an empty pattern in --kubernetes-pod-label-allowlist-regex matches every pod label (as in dcgm-exporter): every label is kept",
			args: []any{"patterns", v}})
	}
	c.PodLabelAllowlist = a
	return nil
}

// collectInterval turns dcgm-exporter's -c (milliseconds) into --interval,
// raised to the agent's minimum with a log line rather than a failed start:
// dcgm-exporter accepts any positive value.
func collectInterval(v string, c *Config) (string, error) {
	ms, err := strconv.Atoi(v)
	if err != nil {
		return "", errors.New("must be a whole number of milliseconds")
	}
	if ms <= 0 {
		return "", errors.New("must be positive")
	}
	d := time.Duration(ms) * dcgmIntervalUnit
	if d < nvml.MinInterval {
		c.notices = append(c.notices, notice{msg: "dcgm-exporter's collect interval is below the agent's minimum; sampling at the minimum",
			args: []any{"collect_interval_ms", ms, "interval", nvml.MinInterval}})
		d = nvml.MinInterval
	}
	return d.String(), nil
}

// parseBool reads a bool as urfave/cli does (strconv.ParseBool), with an
// error that says what is wanted.
func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.New("must be true or false")
	}
	return b, nil
}

// notice is a log line ParseFlags wants written once the logger exists.
type notice struct {
	warn bool
	msg  string
	args []any
}

// dcgmValue records one dcgm-exporter option as given on the command line.
type dcgmValue struct {
	isBool bool
	slice  bool
	value  string
	set    bool
}

func (v *dcgmValue) String() string   { return v.value }
func (v *dcgmValue) IsBoolFlag() bool { return v.isBool }

func (v *dcgmValue) Set(s string) error {
	if v.isBool {
		if _, err := parseBool(s); err != nil {
			return err
		}
	}
	if v.slice && v.value != "" {
		s = v.value + "," + s
	}
	v.value, v.set = s, true
	return nil
}

// dcgmFlags are dcgm-exporter's options registered on a flag set.
type dcgmFlags struct {
	opts   []dcgmOption
	values []*dcgmValue
	hidden map[string]bool // left out of -help: the ignored ones
}

func registerDCGMFlags(fs *flag.FlagSet) *dcgmFlags {
	d := &dcgmFlags{opts: dcgmOptions(), hidden: map[string]bool{}}
	for _, o := range d.opts {
		v := &dcgmValue{isBool: o.isBool, slice: o.slice}
		d.values = append(d.values, v)
		usage := "dcgm-exporter's --" + o.name + " ($" + o.env + ")"
		if o.native != "" {
			usage += ": as --" + o.native
		}
		for _, n := range []string{o.name, o.short} {
			if n == "" {
				continue
			}
			fs.Var(v, n, usage)
			if o.ignored != "" {
				d.hidden[n] = true
			}
		}
	}
	return d
}

// apply applies the options given on the command line or, failing that,
// in the environment, after fs has parsed.
func (d *dcgmFlags) apply(fs *flag.FlagSet, c *Config, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	for i, o := range d.opts {
		v, src, fromFlag := d.values[i].value, "--"+o.name, d.values[i].set
		if !fromFlag {
			if v = getenv(o.env); v == "" {
				continue
			}
			src = "$" + o.env
		}
		if err := d.applyOne(fs, c, o, v, src, fromFlag, given); err != nil {
			errs = append(errs, err)
		}
		if o.native == "interval" && !given["utilization.window"] && c.Window < c.Interval {
			// dcgm-exporter's default of 30 s is longer than the window's
			// default; a window shorter than the interval is refused, and
			// its flag is not one a dcgm-exporter user would know to set.
			c.notices = append(c.notices, notice{msg: "raising --utilization.window to dcgm-exporter's collect interval",
				args: []any{"utilization_window", c.Interval}})
			c.Window = c.Interval
		}
	}
	return errors.Join(errs...)
}

func (d *dcgmFlags) applyOne(fs *flag.FlagSet, c *Config, o dcgmOption, v, src string, fromFlag bool, given map[string]bool) error {
	bad := func(err error) error { return fmt.Errorf("%s=%s (dcgm-exporter's): %w", src, v, err) }
	switch {
	case o.ignored != "":
		if o.isBool {
			on, err := parseBool(v)
			if err != nil {
				return bad(err)
			}
			if !on {
				return nil // off is dcgm-exporter's default: nothing to ignore
			}
		}
		c.notices = append(c.notices, notice{warn: true, msg: "ignoring a dcgm-exporter option that has no meaning here",
			args: []any{"option", src, "value", v, "why", o.ignored}})
		return nil
	case o.set != nil:
		if err := o.set(v, c); err != nil {
			return bad(err)
		}
		return nil
	}
	nv, err := o.toNative(v, c)
	if err != nil {
		return bad(err)
	}
	native := fs.Lookup(o.native)
	if given[o.native] {
		if fromFlag && native.Value.String() != nv {
			return fmt.Errorf("--%s=%s and dcgm-exporter's --%s=%s say different things: give one of them", o.native, native.Value.String(), o.name, v)
		}
		return nil // the agent's own flag wins over the environment
	}
	if err := fs.Set(o.native, nv); err != nil {
		return bad(err)
	}
	return nil
}

// printDefaults is flag's usage without dcgm-exporter's ignored options,
// which would bury the agent's own.
func (d *dcgmFlags) printDefaults(fs *flag.FlagSet) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if !d.hidden[f.Name] {
			shown.Var(f.Value, f.Name, f.Usage)
		}
	})
	fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
	shown.PrintDefaults()
	fmt.Fprintln(fs.Output(), "\ndcgm-exporter's other options are accepted and ignored, each with a warning.")
}
