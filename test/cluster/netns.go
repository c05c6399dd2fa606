package cluster

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/gpu-telemetry/agent/internal/testutil"
)

// The API server refuses loopback addresses in Endpoints and
// EndpointSlices, so its aggregator cannot reach an extension API server
// (KEDA's metrics adapter) on 127.0.0.1. The adapter runs in a network
// namespace of this process's own instead, joined to the host by a veth
// pair on a /30 of 10.250.0.0/16; the API server listens on the host side
// too. Nothing leaves the machine: the pair has no route elsewhere.

const netnsPrefix = "gpu-agent-cluster-"

// netns is a network namespace with a veth pair to the host.
type netns struct {
	Name          string
	HostIP, NSIP  net.IP
	hostIf, nsIf  string
	created, veth bool
}

// newNetns creates the namespace and the pair, addressed from this
// process's pid so that two runs at once do not collide. It first removes
// namespaces left by runs that were killed before their cleanup.
func newNetns() (*netns, error) {
	removeStaleNetns()
	pid := os.Getpid()
	k := pid % 16384
	n := &netns{
		Name:   netnsPrefix + strconv.Itoa(pid),
		HostIP: net.IPv4(10, 250, byte(k>>6), byte(k&63)<<2|1),
		NSIP:   net.IPv4(10, 250, byte(k>>6), byte(k&63)<<2|2),
		hostIf: fmt.Sprintf("gah%d", k),
		nsIf:   fmt.Sprintf("gan%d", k),
	}
	if err := ip("netns", "add", n.Name); err != nil {
		return nil, err
	}
	n.created = true
	steps := [][]string{
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", n.nsIf},
		{"link", "set", n.nsIf, "netns", n.Name},
		{"addr", "add", n.HostIP.String() + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.Name, "addr", "add", n.NSIP.String() + "/30", "dev", n.nsIf},
		{"-n", n.Name, "link", "set", n.nsIf, "up"},
		{"-n", n.Name, "link", "set", "lo", "up"},
	}
	for i, s := range steps {
		if err := ip(s...); err != nil {
			n.Close()
			return nil, err
		}
		if i == 0 {
			n.veth = true
		}
	}
	return n, nil
}

// Command returns the argv that runs argv inside the namespace.
func (n *netns) Command(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", n.Name}, argv...)
}

// Close removes the pair and the namespace; it is safe to call twice.
func (n *netns) Close() error {
	var errs []string
	if n.veth {
		if err := ip("link", "del", n.hostIf); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err.Error())
		}
		n.veth = false
	}
	if n.created {
		if err := ip("netns", "del", n.Name); err != nil {
			errs = append(errs, err.Error())
		}
		n.created = false
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing netns %s: %s", n.Name, strings.Join(errs, "; "))
	}
	return nil
}

// removeStaleNetns deletes this harness's namespaces whose process is
// gone (a run killed by a timeout or SIGKILL).
func removeStaleNetns() { testutil.RemoveStaleNetns(netnsPrefix) }

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
