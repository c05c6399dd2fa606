package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/logging"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/cgroup"
	"github.com/gpu-telemetry/agent/internal/dcgm"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/nvml"
	"github.com/gpu-telemetry/agent/internal/podresources"
	"github.com/gpu-telemetry/agent/internal/podwatch"
	"github.com/gpu-telemetry/agent/internal/tlsfiles"
	"github.com/gpu-telemetry/agent/internal/webserver"
)

// DefaultPodResourcesSocket is where the kubelet serves the pod-resources API.
const DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// DefaultMaxProcs is --runtime.gomaxprocs's default.
const DefaultMaxProcs = 1

// MaxSimulatedGPUs bounds --simulate; no node has more.
const MaxSimulatedGPUs = 64

// Config is every setting of the agent, filled from flags and validated
// in one place.
type Config struct {
	ListenAddress string
	WebConfigFile string
	// ExporterMetrics serves the Go runtime, process and promhttp
	// families (dcgm-exporter's --enable-exporter-metrics).
	ExporterMetrics bool
	// Pprof serves Go's profiles under /debug/pprof/ (--web.enable-pprof).
	Pprof bool
	// MaxProcs is GOMAXPROCS (--runtime.gomaxprocs, $GOMAXPROCS); 0 leaves
	// Go's own (the CPUs, or the container's CPU limit).
	MaxProcs int
	// WebLimits caps the HTTP server's connections and concurrent
	// scrapes (--web.max-connections, --web.max-requests).
	WebLimits webserver.Flags

	GRPCListenAddress   string // empty: no gRPC server
	GRPCTLSCertFile     string
	GRPCTLSKeyFile      string
	GRPCTLSClientCAFile string // set: mutual TLS, clients must present a certificate it signed

	Interval time.Duration
	Window   time.Duration

	PodResourcesSocket string
	KubeletPeriod      time.Duration
	KubeletMaxStale    time.Duration // 0: keep the last good pod map forever
	GPUResourceNames   []string      // extra GPU resource names, beyond nvidia.com/gpu, gpu.shared, mig-*
	NodeName           string

	// Per-process attribution: /proc to read GPU processes' cgroups from,
	// and the pod watch that names the pods they are in.
	ProcFS     string
	Kubeconfig string // empty: in-cluster
	PodWatch   bool

	// App scraping: the node's opted-in pods' own metrics, on the stream.
	App AppConfig

	NVMLLibraryPath string

	// DCGM: the profiling fields, from an embedded host engine or a
	// standalone nv-hostengine (--dcgm; dcgm-exporter's -r selects
	// standalone), served beside NVML's fields.
	DCGM            dcgm.Mode
	DCGMAddress     string // standalone: host:port or a unix socket path
	dcgmRemote      string // dcgm-exporter's -r, as given
	Simulate        int
	SimulateSeed    int64
	SimulateStatic  bool
	SimulateLoad    string // the load-step file, polled
	SimulateLatency bool
	SimulateHangGPU int
	SimulateHangAt  time.Duration

	LogLevel  string
	LogFormat string

	ShowVersion bool

	// dcgm-exporter's options with no dotted flag of the agent's (see
	// dcgmflags.go).
	CollectorsFile string // -f: its CSV of fields to export; empty: the default set
	// Compat is the dcgm-exporter generation /metrics imitates
	// (--compat.dcgm-exporter).
	Compat          exporter.Generation
	UseOldNamespace bool          // -o: pod_name, pod_namespace, container_name (its source)
	NoHostname      bool          // --no-hostname: no Hostname label
	XIDCountWindow  time.Duration // -x: the window of DCGM_EXP_XID_ERRORS_COUNT; 0: the exporter default
	// --kubernetes-enable-pod-labels, --kubernetes-pod-label-allowlist-regex
	// and --kubernetes-enable-pod-uid: the pods' labels and UIDs, from the
	// pod watch, on their series.
	PodLabels         bool
	PodLabelAllowlist *attribution.LabelAllowlist // nil: every label
	PodUID            bool

	counters []dcgmcsv.Field // CollectorsFile, once read

	// notices are log lines about the flags, written once the logger
	// exists (ParseFlags runs before it).
	notices []notice
}

// errReported marks a ParseFlags error the flag package has already
// printed, with the usage.
var errReported = errors.New("flag error")

// LogNotices writes the log lines ParseFlags left for the logger: options
// of dcgm-exporter's that are ignored, values that were adjusted.
func (c *Config) LogNotices(log *slog.Logger) {
	for _, n := range c.notices {
		if n.warn {
			log.Warn(n.msg, n.args...)
		} else {
			log.Info(n.msg, n.args...)
		}
	}
}

// ParseFlags parses args (without the program name) into a Config.
// getenv supplies $NODE_NAME, the Downward API's way to name the node.
func ParseFlags(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("gpu-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.ListenAddress, "web.listen-address", ":9400", "Address to serve /metrics, /healthz and /readyz on.")
	fs.StringVar(&c.WebConfigFile, "web.config.file", "", "Path to an exporter-toolkit web config file (TLS, basic auth).")
	fs.BoolVar(&c.Pprof, "web.enable-pprof", false, "Serve Go's runtime profiles (CPU, heap, allocations, goroutines) under /debug/pprof/ on the web port, behind --web.config.file's TLS and authentication.")
	fs.BoolVar(&c.ExporterMetrics, "web.enable-exporter-metrics", false, "Also serve the agent process's Go runtime, process and HTTP handler metrics (go_*, process_*, promhttp_*); the gpu_agent_* families are always served.")
	c.WebLimits.Register(fs)
	c.MaxProcs = DefaultMaxProcs
	if v := getenv("GOMAXPROCS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			c.MaxProcs = n
		}
	}
	fs.IntVar(&c.MaxProcs, "runtime.gomaxprocs", c.MaxProcs, "The most CPUs that run the agent's Go code at once (GOMAXPROCS; defaults to $GOMAXPROCS when set); 0: Go's own, the node's CPUs or the container's CPU limit. One, as node_exporter's default: the agent's work is small and mostly waits on NVML, and fewer threads handing work to each other cost less CPU.")
	fs.StringVar(&c.GRPCListenAddress, "grpc.listen-address", ":9401", "Address of the gRPC push API (Watch) and gRPC health; empty disables it.")
	fs.StringVar(&c.GRPCTLSCertFile, "grpc.tls-cert-file", "", "Serve gRPC over TLS with this certificate (PEM); needs --grpc.tls-key-file.")
	fs.StringVar(&c.GRPCTLSKeyFile, "grpc.tls-key-file", "", "Private key (PEM) of --grpc.tls-cert-file.")
	fs.StringVar(&c.GRPCTLSClientCAFile, "grpc.tls-client-ca-file", "", "Require gRPC clients to present a certificate signed by these CAs (PEM): mutual TLS.")
	fs.DurationVar(&c.Interval, "interval", 250*time.Millisecond, "Time between two samples of every GPU; at least 100ms.")
	fs.DurationVar(&c.Window, "utilization.window", 15*time.Second, "Span of the utilization window metrics (max and mean of the driver's samples); set it to your scrape interval.")
	fs.StringVar(&c.PodResourcesSocket, "kubelet.pod-resources-socket", DefaultPodResourcesSocket, "Kubelet pod-resources gRPC socket, for pod labels.")
	fs.DurationVar(&c.KubeletPeriod, "kubelet.poll-interval", time.Second, "Time between two pod-resources List calls; the kubelet rate-limits this API.")
	fs.DurationVar(&c.KubeletMaxStale, "kubelet.max-stale", podresources.DefaultMaxStale, "How long the last good pod map is served while the kubelet does not answer; past it pod labels are dropped until it answers. 0 keeps it forever.")
	fs.Func("kubelet.gpu-resource-names", "Comma-separated extra resource names that are GPUs (exact names, e.g. a renamed nvidia.com/t4), beyond nvidia.com/gpu, nvidia.com/gpu.shared and nvidia.com/mig-*; may be repeated.", func(v string) error {
		c.GPUResourceNames = append(c.GPUResourceNames, splitList(v)...)
		return nil
	})
	c.Compat = exporter.DefaultGeneration
	fs.Func("compat.dcgm-exporter", "The dcgm-exporter generation whose /metrics to imitate: 4.8.2 (Hostname label, DCGM_FI_DEV_GPU_UTIL, ...), 4.8 (4.8.3 and 4.8.4: hostname), 4.9 (DCGM 4.7's field names and base units, DCGM_FI_SYSTEM_DRIVER_VERSION) or 4.10 (default "+exporter.DefaultGeneration.String()+").", func(v string) error {
		g, err := exporter.ParseGeneration(v)
		c.Compat = g
		return err
	})
	fs.StringVar(&c.NodeName, "node-name", getenv("NODE_NAME"), "Value of the host label (Hostname, or hostname from --compat.dcgm-exporter=4.8 on); defaults to $NODE_NAME, else the host name.")
	fs.StringVar(&c.ProcFS, "path.procfs", cgroup.DefaultProcFS, "The host's procfs, to map GPU processes to pods through their cgroups (the DaemonSet mounts the host's /proc at /host/proc).")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "Kubeconfig file of the pod watch outside a cluster; empty: the pod's service account.")
	fs.BoolVar(&c.PodWatch, "kubernetes.pod-watch", true, "Watch this node's pods (get/list/watch pods) to name the pods of GPU processes, for each pod's own share of a shared GPU; off with --simulate, which names its own.")
	c.App.register(fs)
	fs.Func("dcgm", `Read DCGM's profiling fields: "off", "embedded" (a host engine in the agent) or "standalone" (nv-hostengine at --dcgm.hostengine-address). Default off: the DCGM_FI_PROF_* fields are absent.`, func(v string) error {
		m, err := dcgm.ParseMode(v)
		c.DCGM = m
		return err
	})
	fs.StringVar(&c.DCGMAddress, "dcgm.hostengine-address", DefaultHostengineAddress, "Address of nv-hostengine with --dcgm=standalone: host:port, or a unix socket path (absolute or unix://).")
	fs.StringVar(&c.NVMLLibraryPath, "nvml.library-path", "", "Path to libnvidia-ml.so.1; empty uses the dynamic loader's search path.")
	fs.IntVar(&c.Simulate, "simulate", 0, "Simulate N T4-like GPUs instead of using NVML (and their pods, when no kubelet socket exists).")
	fs.Int64Var(&c.SimulateSeed, "simulate.seed", 1, "Seed of the simulated GPUs' UUIDs and load curves.")
	fs.BoolVar(&c.SimulateStatic, "simulate.static", false, "Hold every simulated load at its seeded mean.")
	fs.StringVar(&c.SimulateLoad, "simulate.load-file", "", `With --simulate: poll this JSON or YAML file (every 50ms) and step the simulated load to it, e.g. {"gpu_util": 90, "enc_util": 80, "gpus": {"1": {"gpu_util": 10}}}.`)
	fs.IntVar(&c.SimulateHangGPU, "simulate.hang-gpu", -1, "Index of a simulated GPU whose NVML calls stop returning (as a GPU off the bus), to see it reported stalled; -1: none.")
	fs.DurationVar(&c.SimulateHangAt, "simulate.hang-after", 0, "Time after start when --simulate.hang-gpu stops answering.")
	fs.BoolVar(&c.SimulateLatency, "simulate.call-latency", true, "Make each simulated NVML call take as long as on a real GPU (GetPcieThroughput 20ms, ...); false answers at once.")
	fs.StringVar(&c.LogLevel, "log.level", "info", "Log level: debug, info, warn or error.")
	fs.StringVar(&c.LogFormat, "log.format", "logfmt", "Log format: logfmt or json.")
	fs.BoolVar(&c.ShowVersion, "version", false, "Print the version and exit.")
	dcgm := registerDCGMFlags(fs)
	fs.Usage = func() { dcgm.printDefaults(fs) }
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %w", errReported, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: the agent takes flags only", fs.Arg(0))
	}
	if err := dcgm.apply(fs, c, getenv); err != nil {
		return nil, err
	}
	if err := c.applyRemoteHostengine(fs); err != nil {
		return nil, err
	}
	if c.PodLabelAllowlist != nil && !c.PodLabels {
		c.notices = append(c.notices, notice{warn: true, msg: "--kubernetes-pod-label-allowlist-regex has no effect without --kubernetes-enable-pod-labels"})
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	return c, nil
}

// PodMaxStale is --kubelet.max-stale as podresources.Options.MaxStale,
// where 0 means the default: on the command line 0 is the operator saying
// "never", as with other bounds that 0 disables.
func (c *Config) PodMaxStale() time.Duration {
	if c.KubeletMaxStale == 0 {
		return podresources.NoMaxStale
	}
	return c.KubeletMaxStale
}

// splitList splits a comma-separated flag value, dropping blanks so that
// "a, b," is two names.
func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Validate reports every bad setting at once, each naming its flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag string, value any, why string) {
		errs = append(errs, fmt.Errorf("--%s=%v: %s", flag, value, why))
	}
	if c.ListenAddress == "" {
		bad("web.listen-address", `""`, "must not be empty")
	}
	errs = append(errs, c.WebLimits.Validate()...)
	if c.MaxProcs < 0 {
		bad("runtime.gomaxprocs", c.MaxProcs, "must be 0 (Go's own) or more")
	}
	if c.GRPCListenAddress != "" && c.GRPCListenAddress == c.ListenAddress && !strings.HasSuffix(c.ListenAddress, ":0") {
		bad("grpc.listen-address", c.GRPCListenAddress, "must differ from --web.listen-address")
	}
	errs = append(errs, c.validateGRPCTLS()...)
	if c.SimulateLoad != "" && c.Simulate == 0 {
		bad("simulate.load-file", c.SimulateLoad, "needs --simulate")
	}
	if c.Interval < nvml.MinInterval {
		bad("interval", c.Interval, fmt.Sprintf("must be at least %s (NVML refreshes utilization every 1/6 s at best)", nvml.MinInterval))
	}
	if c.Window < c.Interval {
		bad("utilization.window", c.Window, fmt.Sprintf("must be at least the sampling interval (%s)", c.Interval))
	}
	if c.Window > time.Hour {
		bad("utilization.window", c.Window, "must be at most 1h")
	}
	if c.KubeletPeriod < 100*time.Millisecond {
		bad("kubelet.poll-interval", c.KubeletPeriod, "must be at least 100ms (the kubelet rate-limits pod-resources)")
	}
	if c.KubeletMaxStale < 0 {
		bad("kubelet.max-stale", c.KubeletMaxStale, "must not be negative (0 keeps the pod map forever)")
	} else if c.KubeletMaxStale > 0 && c.KubeletMaxStale < c.KubeletPeriod {
		// Expiry is checked on each failed poll: a shorter bound would
		// drop labels on the first failure, which 0 cannot express.
		bad("kubelet.max-stale", c.KubeletMaxStale, fmt.Sprintf("must be 0 or at least --kubelet.poll-interval (%s)", c.KubeletPeriod))
	}
	for _, n := range c.GPUResourceNames {
		if err := podresources.ValidResourceName(n); err != nil {
			bad("kubelet.gpu-resource-names", n, "want <domain>/<name>, e.g. nvidia.com/t4")
		}
	}
	if c.PodResourcesSocket != "" && len(c.PodResourcesSocket) > 107 {
		bad("kubelet.pod-resources-socket", c.PodResourcesSocket, "unix socket paths are limited to 107 bytes")
	}
	if c.ProcFS == "" {
		bad("path.procfs", `""`, "must not be empty")
	}
	if c.Kubeconfig != "" && !c.PodWatch {
		bad("kubeconfig", c.Kubeconfig, "needs --kubernetes.pod-watch")
	}
	if f := c.podMetaFlags(); f != "" && !c.PodWatch && c.Simulate == 0 {
		// --simulate names its own pods, unless a kubelet socket exists
		// (simSource.start says so then).
		bad("kubernetes.pod-watch", false, "pod labels and UIDs ("+f+") come from the pod watch")
	}
	errs = append(errs, c.App.validate()...)
	if c.Simulate < 0 || c.Simulate > MaxSimulatedGPUs {
		bad("simulate", c.Simulate, fmt.Sprintf("must be between 0 and %d", MaxSimulatedGPUs))
	}
	if h := c.SimulateHangGPU; h != -1 && (h < 0 || h >= c.Simulate) {
		bad("simulate.hang-gpu", c.SimulateHangGPU, fmt.Sprintf("must be -1 or the index of a simulated GPU (0 to %d)", c.Simulate-1))
	}
	errs = append(errs, c.validateDCGM()...)
	if c.SimulateHangAt < 0 {
		bad("simulate.hang-after", c.SimulateHangAt, "must not be negative")
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		bad("log.level", c.LogLevel, err.Error())
	}
	if err := logging.CheckFormat(c.LogFormat); err != nil {
		bad("log.format", c.LogFormat, err.Error())
	}
	if _, err := c.Counters(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// podMetaFlags names dcgm-exporter's flags that ask for pods' labels or
// UIDs, as given; "" when neither was.
func (c *Config) podMetaFlags() string {
	var fs []string
	if c.PodLabels {
		fs = append(fs, "--kubernetes-enable-pod-labels")
	}
	if c.PodUID {
		fs = append(fs, "--kubernetes-enable-pod-uid")
	}
	return strings.Join(fs, ", ")
}

// podWatchOptions are the pod watch's options of the pod labels and UIDs
// asked for.
func (c *Config) podWatchOptions(log *slog.Logger) podwatch.Options {
	o := podwatch.Options{Logger: log, PodUID: c.PodUID}
	if c.PodLabels {
		o.PodLabels = c.PodLabelAllowlist
		if o.PodLabels == nil {
			o.PodLabels = &attribution.LabelAllowlist{} // every label
		}
	}
	return o
}

// Counters reads the dcgm-exporter field list of --collectors, once: nil
// without one (every field is served).
func (c *Config) Counters() ([]dcgmcsv.Field, error) {
	if c.CollectorsFile == "" {
		return nil, nil
	}
	if c.counters == nil {
		fields, err := dcgmcsv.ReadFile(c.CollectorsFile)
		if err != nil {
			return nil, fmt.Errorf("--collectors=%s: %w", c.CollectorsFile, err)
		}
		c.counters = fields
	}
	return c.counters, nil
}

// validateGRPCTLS checks the TLS flags go together and their files load.
func (c *Config) validateGRPCTLS() []error {
	if c.GRPCTLSCertFile == "" && c.GRPCTLSKeyFile == "" && c.GRPCTLSClientCAFile == "" {
		return nil
	}
	var errs []error
	switch {
	case c.GRPCListenAddress == "":
		errs = append(errs, errors.New(`--grpc.listen-address="": the gRPC TLS flags need the gRPC server enabled`))
	case c.GRPCTLSCertFile == "" || c.GRPCTLSKeyFile == "":
		errs = append(errs, fmt.Errorf("--grpc.tls-cert-file=%q, --grpc.tls-key-file=%q: set both, or neither", c.GRPCTLSCertFile, c.GRPCTLSKeyFile))
	default:
		if _, err := c.GRPCTLSConfig(tlsfiles.NewSet(tlsfiles.Options{})); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// NewLogger builds the agent's logger. Validate first.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	return logging.New(w, c.LogLevel, c.LogFormat)
}
