package test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/exporter"
	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	fk "github.com/gpu-telemetry/agent/internal/podresources/fakekubelet"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

const goldenFile = "testdata/metrics.golden"

// startKubelet serves pods on a pod-resources socket in a fresh short
// directory.
func startKubelet(t *testing.T, pods []*podresourcesv1.PodResources) *fk.Server {
	t.Helper()
	srv, err := fk.Start(fk.TempSocketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	srv.SetPods(pods)
	return srv
}

// goldenPods spell the device IDs every way a device plugin does: a whole
// GPU by UUID, GKE's nvidiaN, a time-sliced GPU by replica; one GPU is
// free, and a non-NVIDIA resource must be ignored. The pods are the ones
// the simulated node runs its GPU processes in (sim.Process), so each
// process is attributed: GPU 3 is the one the simulation shares between
// two WebRTC pods; GPU 2's process is in no pod holding it.
func goldenPods(devs []*sim.Device) []*podresourcesv1.PodResources {
	return []*podresourcesv1.PodResources{
		fk.Pod("default", "inference-0", fk.Container("server",
			fk.Devices("nvidia.com/gpu", devs[0].UUID()),
			fk.Devices("example.com/foo", "foo-0"))),
		fk.Pod("default", "inference-1", fk.Container("server", fk.Devices("nvidia.com/gpu", "nvidia1"))),
		fk.Pod("media", "webrtc-sfu-0", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", devs[3].UUID()+"::0"))),
		fk.Pod("media", "webrtc-sfu-1", fk.Container("sfu", fk.Devices("nvidia.com/gpu.shared", devs[3].UUID()+"::1"))),
	}
}

func TestGoldenMetrics(t *testing.T) {
	devs := sim.New(sim.Options{Devices: 4, Seed: 7, Static: true}).Devices()
	kubelet := startKubelet(t, goldenPods(devs))
	a := startAgent(t, "--simulate=4", "--simulate.seed=7", "--simulate.static",
		"--kubelet.pod-resources-socket="+kubelet.Path())

	// Readiness waits for a GPU sample, not for the kubelet: pod labels
	// arrive with the first List answer.
	first := a.waitMetrics(t, 10*time.Second, "the first kubelet answer and process attribution", func(s samples) error {
		if _, ok := s.podSeries("gpu_agent_unattributed_processes", devs[0].UUID(), ""); !ok {
			return errors.New("no gpu_agent_unattributed_processes yet")
		}
		return s.expect("gpu_agent_kubelet_up", 1)
	})
	raw := a.scrape(t)
	got := normalize(raw)

	// The attribution, asserted directly so that a careless -update cannot
	// bless a wrong one. A GPU held by one pod has one series, the pod's,
	// with the GPU's value; a free GPU one without pod labels ("-"); the
	// shared GPU one without pod labels and one per pod, with the pods'
	// own shares adding up to the GPU's.
	want := map[string][]string{
		devs[0].UUID(): {"default/inference-0/server"},
		devs[1].UUID(): {"default/inference-1/server"},
		devs[2].UUID(): {"-"},
		devs[3].UUID(): {"-", "media/webrtc-sfu-0/sfu", "media/webrtc-sfu-1/sfu"},
	}
	s := parseSamples(t, raw)
	for i, d := range devs {
		pods := want[d.UUID()]
		if got := s.pods("DCGM_FI_DEV_GPU_UTIL", d.UUID()); !slices.Equal(got, pods) {
			t.Errorf("GPU %d is attributed to %v, want %v", i, got, pods)
		}
		w := d.GPUUtil(time.Now())
		series := ""
		if pods[0] != "-" {
			series = strings.Split(pods[0], "/")[1]
		}
		if v, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", d.UUID(), series); v != w {
			t.Errorf("GPU %d utilization %v on its series %q, want the simulation's %v", i, v, series, w)
		}
		if pods[0] != "-" || len(pods) == 1 {
			continue
		}
		var sum float64
		for _, p := range pods[1:] {
			v, _ := s.podSeries("DCGM_FI_DEV_GPU_UTIL", d.UUID(), strings.Split(p, "/")[1])
			sum += v
		}
		if sum != w {
			t.Errorf("GPU %d: its pods' utilization adds up to %v, want %v", i, sum, w)
		}
	}
	if v, ok := s.podSeries("gpu_agent_unattributed_processes", devs[2].UUID(), ""); !ok || v != 1 {
		t.Errorf("free GPU 2: gpu_agent_unattributed_processes %v, %v; want 1 (its process's pod does not hold it)", v, ok)
	}
	if err := s.expect("gpu_agent_kubelet_unresolved_devices", 0); err != nil {
		t.Error(err)
	}

	// Everything the golden file keeps must be the same a few ticks later;
	// otherwise it belongs in the volatile list.
	ticks, _ := first.value("gpu_agent_samples_total")
	a.waitMetrics(t, 10*time.Second, "three more samples", func(s samples) error {
		if n, _ := s.value("gpu_agent_samples_total"); n < ticks+3 {
			return fmt.Errorf("gpu_agent_samples_total %v", n)
		}
		return nil
	})
	if again := normalize(a.scrape(t)); again != got {
		t.Errorf("normalised scrape changed between two scrapes under --simulate.static (-first +second):\n%s", lineDiff(got, again))
	}

	if *update {
		if err := os.WriteFile(goldenFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", goldenFile)
	} else {
		golden, err := os.ReadFile(goldenFile)
		if err != nil {
			t.Fatalf("%v (run: go test ./test -run Golden -update)", err)
		}
		if string(golden) != got {
			t.Errorf("/metrics differs from %s (-golden +got); if the change is intended, run: go test ./test -run Golden -update\n%s",
				goldenFile, lineDiff(string(golden), got))
		}
	}

	t.Run("promtool", func(t *testing.T) { promtoolCheck(t, raw) })
}

// Families left out of the golden file: the Go runtime's and the process's
// (they describe the test machine) and the tick-duration histogram.
var (
	droppedPrefixes = []string{"go_", "process_", "promhttp_"}
	droppedFamilies = []string{"gpu_agent_sample_duration_seconds"}
)

// volatile are the series whose value depends on when the scrape happens,
// not on the simulated node; every *_timestamp_seconds is volatile too.
// The golden file keeps them, with the value <V>.
var volatile = []string{
	"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", // integral of power since start
	"gpu_agent_samples_total",
	"gpu_agent_missed_samples_total", // non-zero on a loaded machine
	"gpu_agent_sample_rate_hertz",    // the achieved rate, measured
	"gpu_agent_kubelet_refreshes_total",
	"gpu_agent_utilization_window_samples", // grows until the window is full
}

var goVersionLabel = regexp.MustCompile(`goversion="[^"]*"`)

// normalize drops the machine-dependent families of a text-format scrape
// and replaces the time-dependent values with <V>.
func normalize(body string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		var name string
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			// # HELP name text, # TYPE name type
			if f := strings.Fields(rest); len(f) >= 2 {
				name = f[1]
			}
		} else if i := strings.IndexAny(line, "{ "); i > 0 {
			name = line[:i]
		}
		if dropped(name) {
			continue
		}
		line = goVersionLabel.ReplaceAllString(line, `goversion="<V>"`)
		if !strings.HasPrefix(line, "#") && (slices.Contains(volatile, name) || strings.HasSuffix(name, "_timestamp_seconds")) {
			line = line[:strings.LastIndexByte(line, ' ')] + " <V>"
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

func dropped(name string) bool {
	for _, p := range droppedPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	for _, f := range droppedFamilies {
		switch name {
		case f, f + "_bucket", f + "_sum", f + "_count":
			return true
		}
	}
	return false
}

// promtoolCheck lints a raw scrape with `promtool check metrics`. The only
// problems allowed are those exporter.LintExempt owns: anything about the
// dcgm-exporter names of exporter.DCGMNames(), and the camelCase device
// labels (UUID, modelName, Hostname) that the agent's own device metrics
// share with them so the series join.
func promtoolCheck(t *testing.T, raw string) {
	path := testutil.RequireTool(t, "promtool", "prometheus")
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(raw)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() == 3: // lint problems: judged below
	default:
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	bad, exempt := judgeLint(string(out))
	if len(bad) > 0 {
		t.Errorf("promtool check metrics found %d problems outside the dcgm-exporter exemptions:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	if err != nil && exempt == 0 && len(bad) == 0 {
		t.Errorf("promtool failed without saying why: %v\n%s", err, out)
	}
}

// judgeLint splits promtool's output lines ("<metric> <problem>") into
// those not exempt, returned, and a count of the exempt ones.
func judgeLint(out string) (bad []string, exempt int) {
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		metric, problem, _ := strings.Cut(line, " ")
		if exporter.LintExempt(metric, problem) {
			exempt++
			continue
		}
		bad = append(bad, line)
	}
	return bad, exempt
}

func TestJudgeLint(t *testing.T) {
	out := strings.Join([]string{
		"DCGM_FI_DEV_GPU_UTIL label names should be written in 'snake_case' not 'camelCase'",
		`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter metrics should have "_total" suffix`,
		"gpu_agent_encoder_fps label names should be written in 'snake_case' not 'camelCase'",
		`gpu_agent_kubelet_refreshes counter metrics should have "_total" suffix`,
		"DCGM_FI_DEV_GPU_UTILX label names should be written in 'snake_case' not 'camelCase'",
		"error while linting: text format parsing error in line 3",
	}, "\n")
	bad, exempt := judgeLint(out)
	if exempt != 3 || len(bad) != 3 {
		t.Errorf("judgeLint: %d exempt, bad %q; want 3 exempt and the last three lines bad", exempt, bad)
	}
}

// lineDiff is a minimal line diff (longest common subsequence) of a and b:
// changed lines with "-" and "+", two lines of context, "..." between hunks.
func lineDiff(from, to string) string {
	x, y := strings.Split(from, "\n"), strings.Split(to, "\n")
	// lcs[i][j] is the LCS length of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte // ' ', '-', '+'
		line string
	}
	var ops []op
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ops = append(ops, op{' ', x[i]})
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', x[i]})
			i++
		default:
			ops = append(ops, op{'+', y[j]})
			j++
		}
	}
	const context, maxLines = 2, 300
	var b strings.Builder
	lines, last := 0, -1
	for k, o := range ops {
		near := false
		for d := max(0, k-context); d <= min(len(ops)-1, k+context); d++ {
			if ops[d].kind != ' ' {
				near = true
				break
			}
		}
		if !near {
			continue
		}
		if last >= 0 && k > last+1 {
			b.WriteString("...\n")
		}
		if lines++; lines > maxLines {
			b.WriteString("... (diff truncated)\n")
			break
		}
		fmt.Fprintf(&b, "%c %s\n", o.kind, o.line)
		last = k
	}
	return b.String()
}

func TestLineDiff(t *testing.T) {
	got := lineDiff("a\nb\nc\nd\ne\nf\ng", "a\nb\nc\nX\ne\nf\ng")
	want := "  b\n  c\n- d\n+ X\n  e\n  f\n"
	if got != want {
		t.Errorf("lineDiff:\n%s\nwant:\n%s", got, want)
	}
	if d := lineDiff("same", "same"); d != "" {
		t.Errorf("lineDiff of equal texts: %q", d)
	}
}

func TestNormalize(t *testing.T) {
	in := strings.Join([]string{
		"# HELP go_goroutines Number of goroutines.",
		"go_goroutines 12",
		"gpu_agent_sample_duration_seconds_bucket{le=\"0.001\"} 3",
		"gpu_agent_sample_duration_seconds_count 3",
		`gpu_agent_build_info{goversion="go1.26.8",revision="abc",version="v1"} 1`,
		"gpu_agent_last_sample_timestamp_seconds 1.7e+09",
		`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{modelName="Tesla T4"} 96900`,
		`DCGM_FI_DEV_GPU_UTIL{modelName="Tesla T4"} 57`,
	}, "\n")
	want := strings.Join([]string{
		`gpu_agent_build_info{goversion="<V>",revision="abc",version="v1"} 1`,
		"gpu_agent_last_sample_timestamp_seconds <V>",
		`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{modelName="Tesla T4"} <V>`,
		`DCGM_FI_DEV_GPU_UTIL{modelName="Tesla T4"} 57`,
	}, "\n") + "\n"
	if got := normalize(in); got != want {
		t.Errorf("normalize (-want +got):\n%s", lineDiff(want, got))
	}
}
