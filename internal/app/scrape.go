package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// The reasons of gpu_agent_app_scrape_errors_total.
const (
	ReasonTimeout      = "timeout"        // no answer, or not all of it, within the timeout
	ReasonConnect      = "connect"        // the connection failed
	ReasonStatus       = "http_status"    // an answer other than 200
	ReasonRedirect     = "redirect"       // a redirect, which is not followed
	ReasonBodyTooLarge = "body_too_large" // more than --app.max-body-bytes
	ReasonParse        = "parse"          // not an exposition format the parser reads
	ReasonBusy         = "busy"           // no scrape slot (--app.concurrency) freed within the timeout
	ReasonConfig       = "config"         // a bad gpu-agent.io/ annotation
)

var errorReasons = []string{ReasonTimeout, ReasonConnect, ReasonStatus, ReasonRedirect, ReasonBodyTooLarge, ReasonParse, ReasonBusy, ReasonConfig}

// The reasons of gpu_agent_app_series_dropped_total.
const (
	DropSeriesLimit     = "series_limit"     // the family did not fit under --app.max-series-per-pod
	DropUnsupportedType = "unsupported_type" // a summary or gauge histogram
	DropNative          = "native_histogram" // a histogram with no classic buckets
	DropInvalid         = "invalid"          // a NaN bucket bound
)

var dropReasons = []string{DropSeriesLimit, DropUnsupportedType, DropNative, DropInvalid}

// ScrapeError is a failed scrape, with the reason its counter carries.
type ScrapeError struct {
	Reason string
	Err    error
}

func (e *ScrapeError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *ScrapeError) Unwrap() error { return e.Err }

func fail(reason string, err error) *ScrapeError { return &ScrapeError{Reason: reason, Err: err} }

// acceptHeader prefers the delimited protobuf format (decoded a family at
// a time), then the text format, then OpenMetrics, whose parser in
// prometheus/common is the slowest.
const acceptHeader = `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1`

// errBodyTooLarge is what the limited reader returns past its cap.
var errBodyTooLarge = errors.New("body larger than the limit")

// capReader enforces the body cap while reading: the byte past the cap
// is an error, so a huge body is never read, let alone parsed, whole.
type capReader struct {
	r    io.Reader
	left int64
	max  int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, fmt.Errorf("%w (%d bytes)", errBodyTooLarge, c.max)
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return n, fmt.Errorf("%w (%d bytes)", errBodyTooLarge, c.max)
	}
	return n, err
}

// newHTTPClient is the scrapers' client: no redirects, no proxy from the
// environment (pod IPs are the node's own network), and for https no
// certificate check, since a pod's serving certificate rarely names its
// IP (what Prometheus's kubernetes_sd setups do with
// insecure_skip_verify). The agent sends no credentials.
func newHTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		MaxIdleConnsPerHost:   1,
		MaxIdleConns:          256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0,                                     // the request's context bounds it
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, // #nosec G402 -- see above: a pod's certificate rarely names its IP
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// limits are what one scrape may take.
type limits struct {
	maxBody   int64
	maxSeries int
	slots     chan struct{} // a slot is held while a body is read and parsed
}

// result is one scrape's outcome before it is published.
type result struct {
	families []Family
	series   int
	dropped  map[string]int
}

// scrape fetches and parses one target within ctx's deadline. Waiting for
// the answer's headers holds no slot (a hung endpoint costs a goroutine
// and a socket); reading and parsing the body does, so the bodies in
// memory at once are at most the slots' number.
func scrape(ctx context.Context, client *http.Client, t *Target, timeout time.Duration, lim *limits) (*result, *ScrapeError) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return nil, fail(ReasonConfig, err)
	}
	req.Header.Set("Accept", acceptHeader)
	req.Header.Set("User-Agent", "gpu-agent")
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fail(ReasonTimeout, fmt.Errorf("no answer within %s", timeout))
		}
		return nil, fail(ReasonConnect, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return nil, fail(ReasonRedirect, fmt.Errorf("%s to %q: redirects are not followed", resp.Status, resp.Header.Get("Location")))
	case resp.StatusCode != http.StatusOK:
		return nil, fail(ReasonStatus, errors.New(resp.Status))
	}
	select {
	case lim.slots <- struct{}{}:
		defer func() { <-lim.slots }()
	case <-ctx.Done():
		return nil, fail(ReasonBusy, fmt.Errorf("no scrape slot freed within %s", timeout))
	}
	res, err := parse(&capReader{r: resp.Body, left: lim.maxBody, max: lim.maxBody}, expfmt.ResponseFormat(resp.Header), t, lim.maxSeries)
	switch {
	case err == nil:
		return res, nil
	case errors.Is(err, errBodyTooLarge):
		return nil, fail(ReasonBodyTooLarge, err)
	case ctx.Err() != nil:
		return nil, fail(ReasonTimeout, fmt.Errorf("body not read within %s: %w", timeout, err))
	default:
		return nil, fail(ReasonParse, err)
	}
}

// parse decodes an exposition, keeping the families t names. Families are
// kept whole or not at all: one that would take the pod past maxSeries is
// dropped (a family cut short would make every sum over it wrong).
func parse(r io.Reader, format expfmt.Format, t *Target, maxSeries int) (*result, error) {
	return parseFiltered(r, format, t, maxSeries, true)
}

// parseFiltered is parse, with the text body's line filter on or off (the
// test that holds the two equal turns it off).
func parseFiltered(r io.Reader, format expfmt.Format, t *Target, maxSeries int, prefilter bool) (*result, error) {
	if prefilter && format.FormatType() != expfmt.TypeProtoDelim && format.FormatType() != expfmt.TypeOpenMetrics {
		// The text decoder (also for an unknown format): drop the lines
		// of families nobody named before it builds them.
		r = newFamilyFilter(r, t.Families.MatchString)
	}
	dec := expfmt.NewDecoder(r, format)
	var kept []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		err := dec.Decode(mf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if t.Families.MatchString(mf.GetName()) {
			kept = append(kept, mf)
		}
	}
	// The text decoder hands families out in map order.
	slices.SortFunc(kept, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	res := &result{dropped: make(map[string]int)}
	for _, mf := range kept {
		f, drops := convert(mf)
		for reason, n := range drops {
			res.dropped[reason] += n
		}
		if len(f.Series) == 0 {
			continue
		}
		if res.series+len(f.Series) > maxSeries {
			res.dropped[DropSeriesLimit] += len(f.Series)
			continue
		}
		if len(res.families) > 0 && res.families[len(res.families)-1].Name == f.Name {
			return nil, fmt.Errorf("family %s given twice", f.Name)
		}
		res.series += len(f.Series)
		res.families = append(res.families, f)
	}
	return res, nil
}

// convert turns a decoded family into a kept one, with the series it had
// to drop by reason.
func convert(mf *dto.MetricFamily) (Family, map[string]int) {
	f := Family{Name: mf.GetName()}
	drops := map[string]int{}
	switch mf.GetType() {
	case dto.MetricType_COUNTER:
		f.Type = Counter
	case dto.MetricType_GAUGE:
		f.Type = Gauge
	case dto.MetricType_UNTYPED:
		f.Type = Untyped
	case dto.MetricType_HISTOGRAM:
		f.Type = Histogram
	default:
		drops[DropUnsupportedType] += len(mf.GetMetric())
		return f, drops
	}
	f.Series = make([]Series, 0, len(mf.GetMetric()))
	for _, m := range mf.GetMetric() {
		s := Series{Labels: labels(m.GetLabel())}
		switch f.Type {
		case Counter:
			s.Value = m.GetCounter().GetValue()
		case Gauge:
			s.Value = m.GetGauge().GetValue()
		case Untyped:
			s.Value = m.GetUntyped().GetValue()
		case Histogram:
			h, reason := histogram(m.GetHistogram())
			if h == nil {
				drops[reason]++
				continue
			}
			s.Hist = h
		}
		f.Series = append(f.Series, s)
	}
	return f, drops
}

func labels(in []*dto.LabelPair) []Label {
	if len(in) == 0 {
		return nil
	}
	out := make([]Label, len(in))
	for i, l := range in {
		out[i] = Label{Name: l.GetName(), Value: l.GetValue()}
	}
	slices.SortFunc(out, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// histogram keeps a classic histogram's finite buckets, sorted by bound;
// the +Inf bucket is the sample count.
func histogram(h *dto.Histogram) (*HistValues, string) {
	bs := h.GetBucket()
	if len(bs) == 0 && (h.Schema != nil || len(h.GetPositiveSpan()) > 0 || len(h.GetNegativeSpan()) > 0 || h.GetZeroCount() > 0 || h.GetZeroCountFloat() > 0) {
		return nil, DropNative
	}
	out := &HistValues{Sum: h.GetSampleSum(), Count: float64(h.GetSampleCount())}
	if h.GetSampleCountFloat() > 0 {
		out.Count = h.GetSampleCountFloat()
	}
	type pair struct{ b, c float64 }
	ps := make([]pair, 0, len(bs))
	for _, b := range bs {
		ub := b.GetUpperBound()
		if math.IsNaN(ub) {
			return nil, DropInvalid
		}
		if math.IsInf(ub, 1) {
			continue
		}
		c := float64(b.GetCumulativeCount())
		if b.GetCumulativeCountFloat() > 0 {
			c = b.GetCumulativeCountFloat()
		}
		ps = append(ps, pair{ub, c})
	}
	slices.SortFunc(ps, func(a, b pair) int {
		switch {
		case a.b < b.b:
			return -1
		case a.b > b.b:
			return 1
		}
		return 0
	})
	out.Bounds = make([]float64, len(ps))
	out.Counts = make([]float64, len(ps))
	for i, p := range ps {
		out.Bounds[i], out.Counts[i] = p.b, p.c
	}
	return out, ""
}
