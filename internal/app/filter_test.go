package app

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

// randomBody is a text exposition with families of every type, names that
// share prefixes (lat, lat_seconds, lat_seconds_bucket_x), samples with no
// HELP or TYPE line, plain comments and blank lines.
func randomBody(r *rand.Rand) string {
	var b strings.Builder
	names := []string{"lat", "lat_seconds", "lat_seconds_bucket_x", "rooms", "req", "other_total", "sfu_jitter"}
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for _, n := range names {
		if r.IntN(4) == 0 {
			b.WriteString("# a comment about " + n + "\n\n")
		}
		switch r.IntN(5) {
		case 0: // histogram
			fmt.Fprintf(&b, "# HELP %s h\n# TYPE %s histogram\n", n, n)
			for s := range 1 + r.IntN(3) {
				c := 0
				for _, le := range []string{"0.1", "1", "+Inf"} {
					c += r.IntN(5)
					fmt.Fprintf(&b, "%s_bucket{k=\"%d\",le=%q} %d\n", n, s, le, c)
				}
				fmt.Fprintf(&b, "%s_sum{k=\"%d\"} %d\n%s_count{k=\"%d\"} %d\n", n, s, c, n, s, c)
			}
		case 1: // counter, its samples with _total as client_golang writes them
			fmt.Fprintf(&b, "# TYPE %s_total counter\n%s_total %d\n", n, n, r.IntN(100))
		case 2: // gauge with labels
			fmt.Fprintf(&b, "# HELP %s g\n# TYPE %s gauge\n", n, n)
			for s := range 1 + r.IntN(3) {
				fmt.Fprintf(&b, "%s{k=\"%d\",msg=\"a # b {c}\"} %d\n", n, s, r.IntN(100))
			}
		case 3: // summary
			fmt.Fprintf(&b, "# TYPE %s summary\n%s{quantile=\"0.5\"} 1\n%s_sum 2\n%s_count 3\n", n, n, n, n)
		default: // untyped, no HELP or TYPE
			fmt.Fprintf(&b, "%s %d\n", n, r.IntN(100))
		}
	}
	return b.String()
}

// The line filter changes nothing the parser keeps: on random bodies and
// allowlists, what parse keeps with it equals what it keeps without.
func TestFamilyFilterKeepsWhatTheParserKeeps(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	allow := []string{".*", "lat", "lat_.*", "lat_seconds", "rooms|req_total", "other_total", "sfu_.*", "nothing", "lat_seconds_bucket_x"}
	checked := 0
	for range 500 {
		body := randomBody(r)
		a := allow[r.IntN(len(allow))]
		tg := &Target{Families: regexp.MustCompile(`^(?:` + a + `)$`), Interval: time.Second}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		want, werr := parseFiltered(strings.NewReader(body), format, tg, 1000, false)
		got, gerr := parseFiltered(strings.NewReader(body), format, tg, 1000, true)
		if werr != nil {
			continue // a body the parser refuses whole; the filter may parse its kept part
		}
		if gerr != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("allow %q: filtered %+v, %v; unfiltered %+v\nbody:\n%s", a, got, gerr, want, body)
		}
		checked++
	}
	if checked < 400 {
		t.Fatalf("only %d of 500 bodies parsed without the filter: the generator is off", checked)
	}
}

// A body cut short mid-line by the cap reports the cap, not a parse error
// on the half line.
func TestFamilyFilterPassesReadErrors(t *testing.T) {
	body := strings.Repeat("app_x{i=\"0000000000\"} 1\n", 1000)
	tg := &Target{Families: regexp.MustCompile(`^app_x$`), Interval: time.Second}
	_, err := parse(&capReader{r: bytes.NewReader([]byte(body)), left: 1000, max: 1000}, expfmt.NewFormat(expfmt.TypeTextPlain), tg, 100)
	if err == nil || !strings.Contains(err.Error(), errBodyTooLarge.Error()) {
		t.Fatalf("err = %v, want the body cap", err)
	}
}

// A body that is not an exposition still fails the scrape, even when no
// family it could name is kept.
func TestFamilyFilterRefusesGarbage(t *testing.T) {
	tg := &Target{Families: regexp.MustCompile(`^app_.*$`), Interval: time.Second}
	for _, body := range []string{"<html>{{{ not metrics\n", `{"json": true}` + "\n", "app_x 1\n<html>\n"} {
		if _, err := parse(strings.NewReader(body), expfmt.NewFormat(expfmt.TypeTextPlain), tg, 100); err == nil {
			t.Errorf("%q parsed", body)
		}
	}
}
