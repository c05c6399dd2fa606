package scaler

import (
	"io"
	"strings"
	"testing"
)

// The scaler's command line, whatever it says, parses and validates to a
// Config or an error with a text; never a panic.
func FuzzScalerFlags(f *testing.F) {
	f.Add("--agents=a:9401,b:9401\x00--grpc.listen-address=:9500")
	f.Add("--agents.dns=gpu-agent.gpu-agent.svc:9401\x00--agents.dns-refresh=0s")
	f.Add("--window.max=-1s\x00--pod-share.max-unattributed=NaN\x00--stale-after=1ns")
	f.Add("--agents=,,,\x00--web.max-connections=-5\x00extra")
	f.Add("--grpc.tls-cert-file=/nonexistent\x00--agents.tls-key-file=x")
	f.Fuzz(func(t *testing.T, args string) {
		var argv []string
		if args != "" {
			argv = strings.Split(args, "\x00")
		}
		c, err := ParseFlags(argv, io.Discard)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no text")
			}
			return
		}
		if err := c.Validate(); err != nil && err.Error() == "" {
			t.Fatal("a validation error with no text")
		}
	})
}
