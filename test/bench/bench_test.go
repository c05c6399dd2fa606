package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis; utime 250 and stime
	// 50 ticks are fields 14 and 15.
	line := "4242 (gpu agent) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 1000000 2000 18446744073709551615"
	got, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 3.0 {
		t.Errorf("parseStatCPU = %v s, want 3 (300 ticks at USER_HZ 100)", got)
	}
	for _, bad := range []string{"", "4242 gpu-agent S 1", "1 (a) S 1 2 3"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q) succeeded", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tgpu-agent\nVmHWM:\t   20480 kB\nVmRSS:\t   18432 kB\nRssAnon:\t    8192 kB\nRssFile:\t   10240 kB\nThreads:\t9\n"
	m, err := parseStatus(bufio.NewScanner(strings.NewReader(status)))
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 18432<<10 || m.HWM != 20480<<10 || m.Anon != 8192<<10 || m.File != 10240<<10 {
		t.Errorf("parseStatus = %+v", m)
	}
	if _, err := parseStatus(bufio.NewScanner(strings.NewReader("Name:\tx\nVmRSS:\t1 kB\nRssAnon:\t1 kB\nRssFile:\t0 kB\n"))); err == nil {
		t.Error("parseStatus without VmHWM succeeded")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond} {
		if got := percentile(ds, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := percentile(ds[:60], 99); got != 100*time.Millisecond {
		t.Errorf("p99 of 60 values = %v, want the largest", got)
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
	if median([]uint64{5, 1, 3}) != 3 {
		t.Error("median of 5,1,3 is not 3")
	}
}

func TestCountSeries(t *testing.T) {
	body := "# HELP a x\n# TYPE a gauge\na{b=\"1\"} 1\na{b=\"2\"} 2\n# EOF\n"
	if n := countSeries([]byte(body)); n != 2 {
		t.Errorf("countSeries = %d, want 2", n)
	}
}

func TestLastSampleTime(t *testing.T) {
	body := []byte("# TYPE gpu_agent_last_sample_timestamp_seconds gauge\ngpu_agent_last_sample_timestamp_seconds 1.7e+09\nx 1\n")
	ts, err := lastSampleTime(body)
	if err != nil || !ts.Equal(time.Unix(1_700_000_000, 0)) {
		t.Errorf("lastSampleTime = %v, %v", ts, err)
	}
	if _, err := lastSampleTime([]byte("x 1\n")); err == nil {
		t.Error("lastSampleTime without the series succeeded")
	}
}

// The pods of -podwatch are the size of real ones, the same every run, and
// the first of them are the kubelet's.
func TestAPIPods(t *testing.T) {
	pods := apiPods(benchNode, 500, mockGPUPods)
	again := apiPods(benchNode, 500, mockGPUPods)
	kubelet := sharedPods([]string{"GPU-a", "GPU-b", "GPU-c", "GPU-d"}, mockGPUPods)
	uids := map[string]bool{}
	for i, p := range pods {
		raw, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := json.Marshal(again[i]); !bytes.Equal(raw, again) {
			t.Fatalf("pod %d differs between calls", i)
		}
		if n := len(raw); n < 10<<10 || n > 20<<10 {
			t.Errorf("pod %d is %d bytes of JSON, want 10-20 KiB", i, n)
		}
		if len(p.Spec.Containers) != 3 || len(p.Labels) != 10 || len(p.Annotations) != 5 || p.Spec.NodeName != benchNode {
			t.Errorf("pod %d: %d containers, %d labels, %d annotations, node %q", i, len(p.Spec.Containers), len(p.Labels), len(p.Annotations), p.Spec.NodeName)
		}
		if uids[string(p.UID)] {
			t.Errorf("pod %d: UID %s twice", i, p.UID)
		}
		uids[string(p.UID)] = true
		if i < len(kubelet) && (p.Namespace != kubelet[i].Namespace || p.Name != kubelet[i].Name) {
			t.Errorf("pod %d is %s/%s, the kubelet's %s/%s", i, p.Namespace, p.Name, kubelet[i].Namespace, kubelet[i].Name)
		}
	}
	raw, _ := json.Marshal(pods[0])
	t.Logf("a pod: %d bytes of JSON, %d of them last-applied-configuration", len(raw), len(pods[0].Annotations["kubectl.kubernetes.io/last-applied-configuration"]))
}
