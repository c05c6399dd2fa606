package app

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func pod(ann map[string]string, ports ...Port) PodInfo {
	a := map[string]string{AnnotationScrape: "true", AnnotationFamilies: "livekit_.*"}
	for k, v := range ann {
		if v == "-" {
			delete(a, k)
			continue
		}
		a[k] = v
	}
	return PodInfo{Namespace: "media", Name: "sfu-0", UID: "u1", Phase: "Running", IP: "10.1.2.3", Annotations: a, Ports: ports}
}

func TestParseTarget(t *testing.T) {
	metrics := Port{Container: "sfu", Name: "metrics", Number: 6789}
	rtc := Port{Container: "sfu", Name: "rtc", Number: 7882, Protocol: "UDP"}
	http := Port{Container: "sfu", Name: "http", Number: 7880, Protocol: "TCP"}
	cases := []struct {
		name     string
		p        PodInfo
		url      string
		interval time.Duration
		err      string // substring; "" ok
		sentinel error
	}{
		{name: "named port", p: pod(map[string]string{AnnotationPort: "metrics"}, metrics, http), url: "http://10.1.2.3:6789/metrics", interval: time.Second},
		{name: "number, path, https, interval", p: pod(map[string]string{AnnotationPort: "9100", AnnotationPath: "/stats?x=1", AnnotationScheme: "https", AnnotationInterval: "250ms"}),
			url: "https://10.1.2.3:9100/stats?x=1", interval: 250 * time.Millisecond},
		{name: "only TCP port", p: pod(nil, metrics, rtc), url: "http://10.1.2.3:6789/metrics", interval: time.Second},
		{name: "IPv6", p: func() PodInfo { p := pod(map[string]string{AnnotationPort: "80"}); p.IP = "fd00::1"; return p }(), url: "http://[fd00::1]:80/metrics", interval: time.Second},
		{name: "not opted in", p: pod(map[string]string{AnnotationScrape: "false"}), sentinel: errNotOptedIn},
		{name: "pending", p: func() PodInfo { p := pod(nil, metrics); p.Phase = "Pending"; return p }(), sentinel: errNotRunning},
		{name: "no IP", p: func() PodInfo { p := pod(nil, metrics); p.IP = ""; return p }(), sentinel: errNotRunning},
		{name: "two ports, none named", p: pod(nil, metrics, http), err: "gpu-agent.io/port"},
		{name: "UDP port by name", p: pod(map[string]string{AnnotationPort: "rtc"}, rtc, metrics), err: "named ports: metrics"},
		{name: "port out of range", p: pod(map[string]string{AnnotationPort: "70000"}), err: "1-65535"},
		{name: "bad scheme", p: pod(map[string]string{AnnotationScheme: "ftp"}, metrics), err: "gpu-agent.io/scheme"},
		{name: "relative path", p: pod(map[string]string{AnnotationPath: "metrics"}, metrics), err: "must start with /"},
		{name: "no families", p: pod(map[string]string{AnnotationFamilies: "-"}, metrics), err: "nothing is kept until one is named"},
		{name: "bad families", p: pod(map[string]string{AnnotationFamilies: "livekit_("}, metrics), err: "not an RE2"},
		// Valid once wrapped in ^(?:...)$, but it would escape the anchors.
		{name: "families escaping the anchors", p: pod(map[string]string{AnnotationFamilies: "x)|(.*"}, metrics), err: "not an RE2"},
		{name: "interval below floor", p: pod(map[string]string{AnnotationInterval: "50ms"}, metrics), err: "below the floor"},
		{name: "bad interval", p: pod(map[string]string{AnnotationInterval: "1"}, metrics), err: "not a Go duration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tg, err := ParseTarget(c.p, MinInterval, time.Second)
			switch {
			case c.sentinel != nil:
				if !errors.Is(err, c.sentinel) {
					t.Fatalf("err = %v, want %v", err, c.sentinel)
				}
			case c.err != "":
				if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "media/sfu-0") {
					t.Fatalf("err = %v, want one naming the pod and %q", err, c.err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if tg.URL != c.url || tg.Interval != c.interval {
					t.Fatalf("got %s every %s, want %s every %s", tg.URL, tg.Interval, c.url, c.interval)
				}
			}
		})
	}
	tg, err := ParseTarget(pod(nil, metrics), MinInterval, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"livekit_jitter_us": true, "livekit_jitter_us_extra": true, "go_goroutines": false, "xlivekit_a": false} {
		if got := tg.Families.MatchString(name); got != want {
			t.Errorf("families match %s = %v, want %v (whole-name match)", name, got, want)
		}
	}
}
