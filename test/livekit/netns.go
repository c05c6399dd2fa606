package livekit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The SFU, the publishers and the subscribers each run in a network
// namespace of this process's own; the host (Prometheus, and later the
// agent) is a fourth party. The SFU's namespace holds a bridge, br0,
// that carries the SFU's one address; the other three parties join it
// by veth pairs whose bridge-side ends are named after them:
//
//	host glk<k> ─ host ┐
//	pub ns eth0 ─ pub  ├─ br0 (SFU address) in the SFU namespace
//	sub ns eth0 ─ sub  ┘
//
// One subnet and one SFU address for everyone means LiveKit advertises a
// single ICE candidate that every client reaches directly, with no
// routing and no sysctl touched on the host. The bottlenecks are tbf
// qdiscs on veth egress: Down on the bridge's port towards the
// subscribers (everything the SFU forwards to them), Up on the
// publishers' eth0 (everything they send). This kernel has tbf but no
// netem: delay, jitter and loss come from a queue that fills and drains,
// as on a real bottleneck link, rather than from a configured
// distribution.
//
// Addresses come from this process's pid, so two runs at once do not
// collide: a /28 of 10.251.0.0/16 (test/cluster uses 10.250.0.0/16).

const netnsPrefix = "gpu-agent-livekit-"

// Shaper is a tbf token bucket: RateKbit of sustained rate, a bucket of
// BurstBytes that a burst may spend at line rate, and a queue that holds
// at most Latency of traffic at RateKbit (tbf's latency, which sets its
// limit); what does not fit is dropped. A zero RateKbit shapes nothing.
type Shaper struct {
	RateKbit   int
	BurstBytes int
	Latency    time.Duration
}

// Validate reports a shaper tbf would refuse or that would drop every
// full-size packet.
func (s Shaper) Validate() error {
	switch {
	case s.RateKbit == 0:
		return nil
	case s.RateKbit < 0:
		return fmt.Errorf("tbf rate %d kbit/s: want a positive rate", s.RateKbit)
	case s.BurstBytes < 1600:
		return fmt.Errorf("tbf burst %d bytes: want at least 1600, one full-size packet", s.BurstBytes)
	case s.Latency < time.Millisecond:
		return fmt.Errorf("tbf latency %s: want at least 1ms", s.Latency)
	}
	return nil
}

// tcArgs is the tc command line that installs s as dev's root qdisc.
func (s Shaper) tcArgs(dev string) []string {
	return []string{"qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.Itoa(s.RateKbit) + "kbit",
		"burst", strconv.Itoa(s.BurstBytes),
		"latency", strconv.FormatInt(s.Latency.Milliseconds(), 10) + "ms"}
}

func (s Shaper) String() string {
	if s.RateKbit == 0 {
		return "none"
	}
	return fmt.Sprintf("tbf rate %dkbit burst %dB latency %s", s.RateKbit, s.BurstBytes, s.Latency)
}

// Net is the namespaces and links of one run.
type Net struct {
	// SFUNS, PubNS and SubNS are the namespaces' names.
	SFUNS, PubNS, SubNS string
	// SFUIP is the SFU's address, which every party reaches; HostIP,
	// PubIP and SubIP are the others'.
	SFUIP, HostIP, PubIP, SubIP net.IP
	hostIf                      string
	veth                        bool     // hostIf exists
	created                     []string // namespaces to delete
}

// addresses returns the /28 block of pid: the SFU, host, publishers' and
// subscribers' addresses, and the host's veth name.
func addresses(pid int) (sfu, host, pub, sub net.IP, hostIf string) {
	k := pid % 4096
	hi, lo := byte(k>>4), byte(k&15)<<4
	return net.IPv4(10, 251, hi, lo|1), net.IPv4(10, 251, hi, lo|2),
		net.IPv4(10, 251, hi, lo|3), net.IPv4(10, 251, hi, lo|4), fmt.Sprintf("glk%d", k)
}

// NewNet creates the namespaces, the bridge and the links, and shapes
// the links with down and up. It first removes the namespaces of runs
// that were killed before their cleanup.
func NewNet(down, up Shaper) (*Net, error) {
	if err := errors.Join(down.Validate(), up.Validate()); err != nil {
		return nil, err
	}
	removeStaleNetns()
	pid := os.Getpid()
	n := &Net{
		SFUNS: fmt.Sprintf("%s%d-sfu", netnsPrefix, pid),
		PubNS: fmt.Sprintf("%s%d-pub", netnsPrefix, pid),
		SubNS: fmt.Sprintf("%s%d-sub", netnsPrefix, pid),
	}
	n.SFUIP, n.HostIP, n.PubIP, n.SubIP, n.hostIf = addresses(pid)
	for _, ns := range []string{n.SFUNS, n.PubNS, n.SubNS} {
		if err := run("ip", "netns", "add", ns); err != nil {
			n.Close()
			return nil, err
		}
		n.created = append(n.created, ns)
	}
	cidr := func(ip net.IP) string { return ip.String() + "/28" }
	steps := [][]string{
		{"ip", "-n", n.SFUNS, "link", "set", "lo", "up"},
		{"ip", "-n", n.SFUNS, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", n.SFUNS, "addr", "add", cidr(n.SFUIP), "dev", "br0"},
		{"ip", "-n", n.SFUNS, "link", "set", "br0", "up"},
		// The host's end is the only one created in the host's namespace,
		// so the only name that must be unique machine-wide.
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "host", "netns", n.SFUNS},
		{"ip", "-n", n.SFUNS, "link", "set", "host", "master", "br0", "up"},
		{"ip", "addr", "add", cidr(n.HostIP), "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
	}
	for _, c := range []struct {
		ns, port string
		ip       net.IP
	}{{n.PubNS, "pub", n.PubIP}, {n.SubNS, "sub", n.SubIP}} {
		steps = append(steps,
			[]string{"ip", "-n", n.SFUNS, "link", "add", c.port, "type", "veth", "peer", "name", "eth0", "netns", c.ns},
			[]string{"ip", "-n", n.SFUNS, "link", "set", c.port, "master", "br0", "up"},
			[]string{"ip", "-n", c.ns, "link", "set", "lo", "up"},
			[]string{"ip", "-n", c.ns, "addr", "add", cidr(c.ip), "dev", "eth0"},
			[]string{"ip", "-n", c.ns, "link", "set", "eth0", "up"},
		)
	}
	if down.RateKbit > 0 {
		steps = append(steps, append([]string{"tc", "-n", n.SFUNS}, down.tcArgs("sub")...))
	}
	if up.RateKbit > 0 {
		steps = append(steps, append([]string{"tc", "-n", n.PubNS}, up.tcArgs("eth0")...))
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			n.Close()
			return nil, err
		}
		if s[1] == "link" && s[2] == "add" && s[3] == n.hostIf {
			n.veth = true
		}
	}
	return n, nil
}

// Command returns the argv that runs argv inside namespace ns.
func (n *Net) Command(ns string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// QdiscStats returns tc's statistics of the shaped links (sent, dropped,
// overlimits, backlog), for a run's report.
func (n *Net) QdiscStats() string {
	var b strings.Builder
	for _, l := range []struct{ what, ns, dev string }{{"down (SFU to subscribers)", n.SFUNS, "sub"}, {"up (publishers to SFU)", n.PubNS, "eth0"}} {
		out, err := exec.Command("tc", "-n", l.ns, "-s", "qdisc", "show", "dev", l.dev).CombinedOutput()
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", l.what, err)
			continue
		}
		fmt.Fprintf(&b, "%s:\n%s", l.what, out)
	}
	return b.String()
}

// Close removes the host's veth, then the namespaces and with them every
// other link; it is safe to call twice. The host's veth goes first and by
// name because the kernel tears a deleted namespace down asynchronously,
// which on a busy machine takes a minute or more: until then the
// namespace's end of the pair, and so the host's, would live on.
func (n *Net) Close() error {
	var errs []error
	if n.veth {
		if err := run("ip", "link", "del", n.hostIf); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
		n.veth = false
	}
	for _, ns := range n.created {
		if err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	n.created = nil
	return errors.Join(errs...)
}

// removeStaleNetns deletes this harness's namespaces whose process is
// gone (a run killed by a timeout or SIGKILL).
func removeStaleNetns() { testutil.RemoveStaleNetns(netnsPrefix) }

func run(bin string, args ...string) error {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
