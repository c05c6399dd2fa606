package exporter

import (
	"bytes"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpu-telemetry/agent/internal/attribution"
	"github.com/gpu-telemetry/agent/internal/dcgmcsv"
	"github.com/gpu-telemetry/agent/internal/telemetry"
)

// The handler writes the device families itself; what it serves must be,
// line for line, what the registry and expfmt make of Collect, in both
// formats. Lines are compared sorted: series order within a family is
// free, and the parse below checks each family is written in one piece.
func TestWriteDevicesMatchesCollect(t *testing.T) {
	snap := testSnapshot()
	// Values whose formatting differs between the formats or is easy to
	// get wrong: integers, zero, negative zero, tiny and huge numbers.
	snap.States[0].Set(telemetry.Temperature, 0)
	snap.States[0].Set(telemetry.SMClock, math.Copysign(0, -1))
	snap.States[0].Set(telemetry.MemClock, 1e21)
	snap.States[0].Set(telemetry.PCIeTX, 1.5e-7)
	snap.States[1].Set(telemetry.Temperature, 1)
	type variantOptions struct {
		Options
		procs attribution.Processes
		metas attribution.PodMetas
	}
	opts := variantOptions{Options: Options{Hostname: "node \"a\"\\b\nc", Interval: 250 * time.Millisecond, Build: BuildInfo{Version: "v", Revision: "r"}}}
	// The label layouts the options make: the default, and a field list
	// that leaves families out and adds a label field.
	for _, variant := range []struct {
		name string
		opts func(variantOptions) variantOptions
	}{
		{"default", func(o variantOptions) variantOptions { return o }},
		{"field list", func(o variantOptions) variantOptions {
			o.Counters = []dcgmcsv.Field{
				{Name: "DCGM_FI_DEV_GPU_UTIL", Type: dcgmcsv.TypeGauge}, {Name: "DCGM_FI_DEV_FB_USED", Type: dcgmcsv.TypeGauge},
				{Name: "DCGM_FI_DRIVER_VERSION", Type: dcgmcsv.TypeLabel},
			}
			o.DriverVersion = "550.54.15"
			return o
		}},
		{"per-pod shares", func(o variantOptions) variantOptions {
			_, o.procs = withProcesses(snap)
			return o
		}},
		{"old namespace, no host name", func(o variantOptions) variantOptions {
			o.UseOldNamespace, o.Hostname, o.DriverVersion = true, "", "550.54.15"
			return o
		}},
		{"pod labels and UIDs, per-pod shares", func(o variantOptions) variantOptions {
			_, o.procs = withProcesses(snap)
			o.metas, o.DriverVersion = testMetas(), "550.54.15"
			return o
		}},
	} {
		t.Run(variant.name, func(t *testing.T) {
			opts := variant.opts(opts)
			var viewOpts []attribution.Option
			if opts.metas != nil {
				viewOpts = append(viewOpts, attribution.WithPodMetas(opts.metas))
			}
			c := NewCollector(attribution.NewAttributor(snapshots{snap}, testPods(t), opts.procs, viewOpts...), opts.Options)

			full := prometheus.NewRegistry()
			full.MustRegister(c.Latest())
			h := newTestHandler(t, c, opts.Interval)

			for _, tt := range []struct {
				name   string
				accept string
				format expfmt.Format
			}{
				{"text", "text/plain;version=0.0.4", expfmt.NewFormat(expfmt.TypeTextPlain)},
				{"openmetrics", "application/openmetrics-text;version=1.0.0", expfmt.NewFormat(expfmt.TypeOpenMetrics)},
			} {
				t.Run(tt.name, func(t *testing.T) {
					mfs, err := full.Gather()
					if err != nil {
						t.Fatal(err)
					}
					var want bytes.Buffer
					enc := expfmt.NewEncoder(&want, tt.format)
					for _, mf := range mfs {
						if err := enc.Encode(mf); err != nil {
							t.Fatal(err)
						}
					}
					if closer, ok := enc.(expfmt.Closer); ok {
						_ = closer.Close()
					}

					req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
					req.Header.Set("Accept", tt.accept)
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					got := rec.Body.String()
					// promhttp's own request counters come with the handler only.
					got = dropFamily(got, "promhttp_metric_handler_")

					if w, g := sortedLines(want.String()), sortedLines(got); !slices.Equal(w, g) {
						t.Errorf("served /metrics differs from the registry's encoding of Collect (-registry +served):\n%s",
							lineSetDiff(w, g))
					}
					if tt.name == "text" {
						p := expfmt.NewTextParser(model.UTF8Validation)
						if _, err := p.TextToMetricFamilies(strings.NewReader(got)); err != nil {
							t.Errorf("served text does not parse (a family split in two?): %v", err)
						}
					} else if !strings.HasSuffix(got, "# EOF\n") {
						t.Errorf("OpenMetrics output does not end with # EOF")
					}
				})
			}
		})
	}
}

func TestWriteDevicesNoSnapshot(t *testing.T) {
	c := NewCollector(attribution.NewAttributor(snapshots{nil}, nil, nil), Options{Hostname: "n"})
	var b bytes.Buffer
	if err := c.WriteDevices(&b, c.views.Latest(), false); err != nil || b.Len() != 0 {
		t.Errorf("WriteDevices before the first snapshot wrote %q, %v", b.String(), err)
	}
}

func TestWriteDevicesWriteError(t *testing.T) {
	c := NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, nil, nil), Options{Hostname: "n"})
	if err := c.WriteDevices(failingWriter{}, c.views.Latest(), false); err == nil {
		t.Error("WriteDevices to a failing writer returned nil")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"":                         false,
		"gzip":                     true,
		"deflate, gzip;q=0.5":      true,
		"gzip;q=0":                 false,
		"gzip; q=0.0, identity":    false,
		"x-gzip, br":               false,
		"identity;q=1, gzip ; q=1": true,
	} {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", header, got, want)
		}
	}
}

func dropFamily(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) || strings.HasPrefix(l, "# HELP "+prefix) || strings.HasPrefix(l, "# TYPE "+prefix) {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func sortedLines(s string) []string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(ls)
	return ls
}

// lineSetDiff lists the lines only in want (-) or only in got (+).
func lineSetDiff(want, got []string) string {
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

func TestMetricsNegotiation(t *testing.T) {
	h := newTestHandler(t, NewCollector(attribution.NewAttributor(snapshots{testSnapshot()}, nil, nil), Options{Hostname: "n", Interval: time.Second}), time.Second)
	for _, tt := range []struct {
		accept, encoding, wantType string
		gzipped                    bool
	}{
		{"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9,text/plain;version=0.0.4;q=0.5", "", "text/plain", false},
		{"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", "gzip", "text/plain", true},
		{"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "gzip", "application/openmetrics-text", true},
		{"", "identity", "text/plain", false},
	} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", tt.accept)
		req.Header.Set("Accept-Encoding", tt.encoding)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tt.wantType) {
			t.Errorf("Accept %q: Content-Type %q, want %s", tt.accept, ct, tt.wantType)
		}
		body := rec.Body.Bytes()
		if got := rec.Header().Get("Content-Encoding") == "gzip"; got != tt.gzipped {
			t.Errorf("Accept-Encoding %q: gzipped %v, want %v", tt.encoding, got, tt.gzipped)
		}
		if tt.gzipped {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Contains(body, []byte("\nDCGM_FI_DEV_GPU_UTIL{")) || !bytes.Contains(body, []byte("\ngpu_agent_samples_total ")) {
			t.Errorf("Accept %q, %q: body lacks device or agent metrics:\n%.300s", tt.accept, tt.encoding, body)
		}
	}
}

// appendValue writes every value as expfmt does: AppendFloat's shortest
// 'g', ".0" after a whole number in OpenMetrics; its fast path for whole
// numbers changes no byte, on either side of its bound.
func TestAppendValueAsExpfmt(t *testing.T) {
	ref := func(v float64, om bool) string {
		if v == 0 {
			v = 0
		}
		s := strconv.FormatFloat(v, 'g', -1, 64)
		if om && !strings.ContainsAny(s, "e.") {
			s += ".0"
		}
		return s
	}
	vals := []float64{0, math.Copysign(0, -1), 1, -1, 7, 42, 1305, 15360, 99999, 999999, -999999, 1e6, -1e6, 1e6 + 1,
		1500000, 2.5, -0.25, 0.1, 1e-7, 123456.5, 1e21, 9.007199254740993e15, float64(1 << 53)}
	for i := range 2000 {
		vals = append(vals, float64(i*997%1_100_000-50_000), float64(i)*0.37)
	}
	for _, v := range vals {
		for _, om := range []bool{false, true} {
			if got, want := string(appendValue(nil, v, om)), ref(v, om); got != want {
				t.Errorf("appendValue(%v, om %v) = %q, want %q", v, om, got, want)
			}
		}
	}
}
