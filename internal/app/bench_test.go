package app

import (
	"bytes"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// body is an exposition of a media server: 20 families of 100 series
// each (2,000 series), half of them histograms of 10 buckets, in the
// text format.
func body(b *testing.B) []byte {
	b.Helper()
	var buf bytes.Buffer
	for f := range 20 {
		name := fmt.Sprintf("sfu_family_%02d", f)
		if f%2 == 0 {
			fmt.Fprintf(&buf, "# TYPE %s histogram\n", name)
			for s := range 100 {
				for i, le := range []string{"1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "+Inf"} {
					fmt.Fprintf(&buf, "%s_bucket{track=\"t%03d\",le=%q} %d\n", name, s, le, i*10)
				}
				fmt.Fprintf(&buf, "%s_sum{track=\"t%03d\"} 1234.5\n%s_count{track=\"t%03d\"} 100\n", name, s, name, s)
			}
			continue
		}
		fmt.Fprintf(&buf, "# TYPE %s gauge\n", name)
		for s := range 100 {
			fmt.Fprintf(&buf, "%s{track=\"t%03d\"} %d\n", name, s, s)
		}
	}
	return buf.Bytes()
}

// protoBody is body in the delimited protobuf format, which the Accept
// header prefers.
func protoBody(b *testing.B, text []byte) []byte {
	b.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, mf := range fams {
		if err := enc.Encode(mf); err != nil {
			b.Fatal(err)
		}
	}
	return buf.Bytes()
}

// BenchmarkParse is one scrape's parse and conversion of a 2,000-series
// body, in the text and the protobuf format, every family kept and one
// family named.
func BenchmarkParse(b *testing.B) {
	text := body(b)
	bodies := map[string][]byte{"text": text, "protobuf": protoBody(b, text)}
	formats := map[string]expfmt.Format{"text": expfmt.NewFormat(expfmt.TypeTextPlain), "protobuf": expfmt.NewFormat(expfmt.TypeProtoDelim)}
	// text-unfiltered is the text body without the line filter: the
	// baseline the filter is measured against, in the same run.
	bodies["text-unfiltered"], formats["text-unfiltered"] = text, formats["text"]
	for _, format := range []string{"text", "text-unfiltered", "protobuf"} {
		for _, tc := range []struct{ name, families string }{{"all", "sfu_.*"}, {"one", "sfu_family_00"}} {
			b.Run(format+"/"+tc.name, func(b *testing.B) {
				raw := bodies[format]
				t := &Target{Families: regexp.MustCompile(`^(?:` + tc.families + `)$`), Interval: time.Second}
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				for b.Loop() {
					res, err := parseFiltered(bytes.NewReader(raw), formats[format], t, DefaultMaxSeriesPerPod, format != "text-unfiltered")
					if err != nil || res.series == 0 {
						b.Fatal(err, res)
					}
				}
			})
		}
	}
}
