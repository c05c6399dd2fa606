package app

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

// The exposition path never panics on what an app answers, keeps no more
// than its series cap, keeps only the families asked for, each with
// series; and the text line filter keeps exactly what the parser alone
// keeps whenever the parser alone accepts the body.
func FuzzParseExposition(f *testing.F) {
	f.Add([]byte("# HELP lat_seconds h\n# TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"+Inf\"} 2\nlat_seconds_sum 0.3\nlat_seconds_count 2\n"), "lat_.*", uint8(0))
	f.Add([]byte("# TYPE rooms gauge\nrooms{k=\"a # b {c}\"} 3\nrooms{k=\"b\"} NaN\n# EOF\n"), "rooms", uint8(1))
	f.Add([]byte("req_total 1\nreq_total 2\n"), ".*", uint8(0))
	f.Add([]byte("# TYPE x counter\nx_total{a=\"\\\"\"} 1e308\n# EOF\n"), "x|x_total", uint8(1))
	f.Add([]byte("a{b=\"c\" 1\n"), "a", uint8(0))
	f.Add([]byte(strings.Repeat("m{i=\"1\"} 1\n", 50)), "m", uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, families string, kind uint8) {
		re, err := regexp.Compile(`^(?:` + families + `)$`)
		if err != nil {
			return
		}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		if kind%2 == 1 {
			format = expfmt.NewFormat(expfmt.TypeOpenMetrics)
		}
		tg := &Target{Families: re, Interval: time.Second}
		const maxSeries = 20
		got, gerr := parseFiltered(bytes.NewReader(body), format, tg, maxSeries, true)
		if gerr == nil {
			if got.series > maxSeries {
				t.Fatalf("kept %d series, cap %d", got.series, maxSeries)
			}
			n := 0
			for _, fam := range got.families {
				if !re.MatchString(fam.Name) || len(fam.Series) == 0 {
					t.Fatalf("kept family %q with %d series", fam.Name, len(fam.Series))
				}
				n += len(fam.Series)
			}
			if n != got.series {
				t.Fatalf("counted %d series, kept %d", got.series, n)
			}
		}
		if format.FormatType() != expfmt.TypeTextPlain {
			return
		}
		want, werr := parseFiltered(bytes.NewReader(body), format, tg, maxSeries, false)
		if werr != nil {
			return // refused whole; the filter may parse its kept part
		}
		if gerr != nil || dump(got) != dump(want) {
			t.Fatalf("filtered %s, %v; unfiltered %s", dump(got), gerr, dump(want))
		}
	})
}

// dump writes a result out whole, NaN equal to NaN (an app may send one).
func dump(r *result) string {
	if r == nil {
		return "<nil>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "series %d dropped %v\n", r.series, r.dropped)
	for _, f := range r.families {
		fmt.Fprintf(&b, "%s %v\n", f.Name, f.Type)
		for _, s := range f.Series {
			fmt.Fprintf(&b, "  %v %s", s.Labels, strconv.FormatFloat(s.Value, 'g', -1, 64))
			if h := s.Hist; h != nil {
				fmt.Fprintf(&b, " hist %v %v %g %g", h.Bounds, h.Counts, h.Sum, h.Count)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// A pod's annotations, whatever they say, give a target with a URL on the
// pod's IP and a sane interval, or an error naming the pod; never a panic.
func FuzzParseTarget(f *testing.F) {
	f.Add("true", "9090", "/metrics", "app_.*", "1s", "http")
	f.Add("true", "http", "metrics", "(", "-1s", "ftp")
	f.Add(" true ", "70000", "//evil.example/x", "", "0", "https")
	f.Add("true", "0", "/a?b=c#d", ".*", "1ns", "")
	f.Fuzz(func(t *testing.T, scrape, port, path, families, interval, scheme string) {
		p := PodInfo{Namespace: "media", Name: "sfu-0", UID: "u", Phase: "Running", IP: "10.0.0.7",
			Ports: []Port{{Container: "app", Name: "http", Number: 8080}},
			Annotations: map[string]string{AnnotationScrape: scrape, AnnotationPort: port, AnnotationPath: path,
				AnnotationFamilies: families, AnnotationInterval: interval, AnnotationScheme: scheme}}
		tg, err := ParseTarget(p, 100*time.Millisecond, time.Second)
		if err != nil {
			if err != errNotOptedIn && !strings.Contains(err.Error(), "media/sfu-0") {
				t.Fatalf("error %q names no pod", err)
			}
			return
		}
		if !strings.HasPrefix(tg.URL, "http://10.0.0.7:") && !strings.HasPrefix(tg.URL, "https://10.0.0.7:") {
			t.Fatalf("URL %q is not on the pod's IP", tg.URL)
		}
		if tg.Interval < 100*time.Millisecond || tg.Families == nil {
			t.Fatalf("target %+v: interval under the floor or no families", tg)
		}
	})
}
