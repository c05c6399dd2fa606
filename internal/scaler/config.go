package scaler

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet"
	"github.com/gpu-telemetry/agent/internal/logging"
	"github.com/gpu-telemetry/agent/internal/webserver"
)

// Config is every setting of the scaler, filled from flags and validated in
// one place.
type Config struct {
	Agents          []string
	AgentsDNS       string
	DNSRefresh      time.Duration
	IdleTimeout     time.Duration
	BackoffMax      time.Duration
	AgentsTLSCA     string
	AgentsTLSCert   string
	AgentsTLSKey    string
	AgentsTLSServer string

	GRPCListenAddress string
	GRPCTLSCert       string
	GRPCTLSKey        string
	GRPCTLSClientCA   string

	WebListenAddress string
	// WebLimits caps the HTTP server's connections and concurrent
	// scrapes (--web.max-connections, --web.max-requests).
	WebLimits webserver.Flags

	StaleAfter  time.Duration
	ForgetAfter time.Duration
	WindowMax   time.Duration

	MaxUnattributedLoad float64

	LogLevel  string
	LogFormat string

	ShowVersion bool
}

// ParseFlags parses args (without the program name) into a Config.
func ParseFlags(args []string, stderr io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("gpu-scaler", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Func("agents", "Comma-separated agent stream addresses, host:port (each agent's --grpc.listen-address).", func(s string) error {
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.Agents = append(c.Agents, a)
			}
		}
		return nil
	})
	fs.StringVar(&c.AgentsDNS, "agents.dns", "", "Headless Service NAME:PORT of the agents; every A/AAAA record is subscribed to.")
	fs.DurationVar(&c.DNSRefresh, "agents.dns-refresh", 10*time.Second, "Time between two resolutions of --agents.dns.")
	fs.DurationVar(&c.IdleTimeout, "agents.idle-timeout", 10*time.Second, "Reconnect to an agent whose stream sent nothing for this long.")
	fs.DurationVar(&c.BackoffMax, "agents.backoff-max", 30*time.Second, "Longest wait between two reconnection attempts to one agent.")
	fs.StringVar(&c.AgentsTLSCA, "agents.tls-ca-file", "", "CA bundle that signs the agents' certificates; enables TLS to the agents.")
	fs.StringVar(&c.AgentsTLSCert, "agents.tls-cert-file", "", "Client certificate for mutual TLS with the agents.")
	fs.StringVar(&c.AgentsTLSKey, "agents.tls-key-file", "", "Key of --agents.tls-cert-file.")
	fs.StringVar(&c.AgentsTLSServer, "agents.tls-server-name", "", "Name expected in the agents' certificates (their addresses are pod IPs); empty: the address's host.")
	fs.StringVar(&c.GRPCListenAddress, "grpc.listen-address", ":9500", "Address of the KEDA external scaler gRPC service.")
	fs.StringVar(&c.GRPCTLSCert, "grpc.tls-cert-file", "", "Server certificate of the gRPC service; enables TLS.")
	fs.StringVar(&c.GRPCTLSKey, "grpc.tls-key-file", "", "Key of --grpc.tls-cert-file.")
	fs.StringVar(&c.GRPCTLSClientCA, "grpc.tls-client-ca-file", "", "CA of the client certificates KEDA must present (mutual TLS).")
	fs.StringVar(&c.WebListenAddress, "web.listen-address", ":9501", "Address of the scaler's own /metrics and /healthz.")
	c.WebLimits.Register(fs)
	fs.DurationVar(&c.StaleAfter, "stale-after", 0, "Silence after which a node's pods leave the aggregate, at least two of its message periods; 0: four of its message periods (interval, the slower period asked, or heartbeat), at least 1s.")
	fs.DurationVar(&c.ForgetAfter, "forget-after", 5*time.Minute, "Silence after which a node is forgotten: until then, a trigger whose pods are all on silent nodes is Unavailable, not 0.")
	fs.DurationVar(&c.WindowMax, "window.max", 15*time.Second, "Longest `window` a trigger may ask for; bounds the history kept per device.")
	fs.Float64Var(&c.MaxUnattributedLoad, "pod-share.max-unattributed", fleet.DefaultMaxUnattributedLoad,
		"Percentage points of a shared GPU's utilization that its pods' processes may leave unexplained before each pod reads the GPU's value instead of its own share; 100: always the shares.")
	fs.StringVar(&c.LogLevel, "log.level", "info", "Log level: debug, info, warn or error.")
	fs.StringVar(&c.LogFormat, "log.format", "logfmt", "Log format: logfmt or json.")
	fs.BoolVar(&c.ShowVersion, "version", false, "Print the version and exit.")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: the scaler takes flags only", fs.Arg(0))
	}
	return c, nil
}

// Validate reports every bad setting at once, each naming its flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag string, value any, why string) {
		errs = append(errs, fmt.Errorf("--%s=%v: %s", flag, value, why))
	}
	if len(c.Agents) == 0 && c.AgentsDNS == "" {
		bad("agents", `""`, "give --agents or --agents.dns (or both): the scaler needs agents")
	}
	for _, a := range c.Agents {
		if err := hostPort(a); err != nil {
			bad("agents", a, err.Error())
		}
	}
	if c.AgentsDNS != "" {
		if err := hostPort(c.AgentsDNS); err != nil {
			bad("agents.dns", c.AgentsDNS, err.Error())
		}
	}
	if c.DNSRefresh < time.Second {
		bad("agents.dns-refresh", c.DNSRefresh, "must be at least 1s")
	}
	if c.IdleTimeout < time.Second {
		bad("agents.idle-timeout", c.IdleTimeout, "must be at least 1s")
	}
	if c.BackoffMax < time.Second {
		bad("agents.backoff-max", c.BackoffMax, "must be at least 1s")
	}
	if (c.AgentsTLSCert == "") != (c.AgentsTLSKey == "") {
		bad("agents.tls-cert-file", c.AgentsTLSCert, "--agents.tls-cert-file and --agents.tls-key-file go together")
	}
	if c.AgentsTLSCert != "" && c.AgentsTLSCA == "" {
		bad("agents.tls-ca-file", `""`, "mutual TLS (--agents.tls-cert-file) needs the agents' CA")
	}
	if c.AgentsTLSServer != "" && c.AgentsTLSCA == "" {
		bad("agents.tls-server-name", c.AgentsTLSServer, "only meaningful with --agents.tls-ca-file")
	}
	if c.GRPCListenAddress == "" {
		bad("grpc.listen-address", `""`, "must not be empty")
	}
	if (c.GRPCTLSCert == "") != (c.GRPCTLSKey == "") {
		bad("grpc.tls-cert-file", c.GRPCTLSCert, "--grpc.tls-cert-file and --grpc.tls-key-file go together")
	}
	if c.GRPCTLSClientCA != "" && c.GRPCTLSCert == "" {
		bad("grpc.tls-client-ca-file", c.GRPCTLSClientCA, "mutual TLS needs --grpc.tls-cert-file and --grpc.tls-key-file")
	}
	if c.WebListenAddress == "" {
		bad("web.listen-address", `""`, "must not be empty")
	}
	errs = append(errs, c.WebLimits.Validate()...)
	if c.StaleAfter != 0 && c.StaleAfter < 100*time.Millisecond {
		bad("stale-after", c.StaleAfter, "must be 0 (derived) or at least 100ms")
	}
	if c.ForgetAfter <= c.StaleAfter || c.ForgetAfter < 10*time.Second {
		bad("forget-after", c.ForgetAfter, "must be at least 10s and longer than --stale-after")
	}
	if c.WindowMax < 0 || c.WindowMax > 10*time.Minute {
		bad("window.max", c.WindowMax, "must be between 0 and 10m")
	}
	if !(c.MaxUnattributedLoad > 0 && c.MaxUnattributedLoad <= 100) {
		bad("pod-share.max-unattributed", c.MaxUnattributedLoad, "must be above 0 and at most 100 (percentage points)")
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		bad("log.level", c.LogLevel, err.Error())
	}
	if err := logging.CheckFormat(c.LogFormat); err != nil {
		bad("log.format", c.LogFormat, err.Error())
	}
	return errors.Join(errs...)
}

func hostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("must be host:port")
	}
	if host == "" || port == "" {
		return errors.New("must be host:port, both given")
	}
	return nil
}

// NewLogger builds the scaler's logger. Validate first.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	return logging.New(w, c.LogLevel, c.LogFormat)
}
