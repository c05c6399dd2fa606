package livekit

import (
	"math"
	"net"
	"strings"
	"testing"
	"time"
)

// These run without the opt-in: the harness's pure parts.

func TestPerBucketAndSpread(t *testing.T) {
	cum := []Bucket{{math.Inf(1), 10}, {1000, 2}, {30000, 9.6}, {10000, 2.2}}
	got := perBucket(cum)
	want := []Bucket{{1000, 2}, {10000, 0.2}, {30000, 7.4}, {math.Inf(1), 0.4}}
	for i := range want {
		if got[i].LE != want[i].LE || math.Abs(got[i].Count-want[i].Count) > 1e-9 {
			t.Fatalf("perBucket = %v, want %v", got, want)
		}
	}
	// 0.2 and 0.4 are extrapolation, not observations.
	if n := Spread(got); n != 2 {
		t.Errorf("Spread = %d, want 2 (%s)", n, FormatBuckets(got))
	}
}

func TestQuantileQuery(t *testing.T) {
	got := QuantileQuery(0.95, "livekit_rtt_ms", 10*time.Second)
	want := "histogram_quantile(0.95, sum by (le) (rate(livekit_rtt_ms_bucket[10s])))"
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if d := promDuration(1500 * time.Millisecond); d != "1500ms" {
		t.Errorf("promDuration(1.5s) = %s", d)
	}
}

func TestAddresses(t *testing.T) {
	ours := &net.IPNet{IP: net.IPv4(10, 251, 0, 0), Mask: net.CIDRMask(16, 32)} // test/cluster: 10.250.0.0/16
	for _, pid := range []int{1, 4095, 4096, 31996, 4194304} {
		sfu, host, pub, sub, hostIf := addresses(pid)
		block := &net.IPNet{IP: sfu.Mask(net.CIDRMask(28, 32)), Mask: net.CIDRMask(28, 32)}
		distinct := map[string]bool{}
		for _, ip := range []net.IP{sfu, host, pub, sub} {
			if !ours.Contains(ip) || !block.Contains(ip) {
				t.Errorf("pid %d: %s outside %s or its /28 %s", pid, ip, ours, block)
			}
			distinct[ip.String()] = true
		}
		if len(distinct) != 4 {
			t.Errorf("pid %d: addresses collide: %v", pid, distinct)
		}
		// At most 15 bytes, and not test/cluster's gah/gan.
		if len(hostIf) > 15 || strings.HasPrefix(hostIf, "ga") {
			t.Errorf("pid %d: host interface %q", pid, hostIf)
		}
	}
}

func TestShaper(t *testing.T) {
	s := Shaper{RateKbit: 3000, BurstBytes: 6000, Latency: 200 * time.Millisecond}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	want := "qdisc replace dev sub root tbf rate 3000kbit burst 6000 latency 200ms"
	if got := strings.Join(s.tcArgs("sub"), " "); got != want {
		t.Errorf("tc %s, want tc %s", got, want)
	}
	for _, bad := range []Shaper{{RateKbit: -1}, {RateKbit: 100, BurstBytes: 1000, Latency: time.Second}, {RateKbit: 100, BurstBytes: 6000}} {
		if bad.Validate() == nil {
			t.Errorf("%+v: valid, want an error", bad)
		}
	}
	if (Shaper{}).Validate() != nil {
		t.Error("the zero Shaper (no shaping) is invalid")
	}
	if err := DefaultOptions().Down.Validate(); err != nil {
		t.Error(err)
	}
	if err := DefaultOptions().Up.Validate(); err != nil {
		t.Error(err)
	}
}

func TestLoadArgs(t *testing.T) {
	got := strings.Join(DefaultOptions().Load.args(), " ")
	for _, want := range []string{"-loads=0.4,0.8,1.1,1.4", "-skips=0,0.003,0.02,0.08", "-gaps=0s,60ms,150ms,300ms,600ms", "-bitrate=200000"} {
		if !strings.Contains(got, want) {
			t.Errorf("loadgen flags %q lack %s", got, want)
		}
	}
}
