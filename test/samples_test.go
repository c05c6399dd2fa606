package test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type samples []sample

// parseSamples reads the sample lines of a text-format scrape. It is small
// on purpose (no new dependency) and strict: a line it cannot read fails
// the test, since the agent must never serve one.
func parseSamples(t *testing.T, body string) samples {
	t.Helper()
	var out samples
	for i, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			t.Fatalf("scrape line %d %q: %v", i+1, line, err)
		}
		out = append(out, s)
	}
	return out
}

func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.name, line = line[:end], line[end:]
	if line[0] == '{' {
		line = line[1:]
		for {
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, fmt.Errorf("bad label at %q", line)
			}
			name := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			closed := false
			for i := 0; i < len(line); i++ {
				c := line[i]
				if c == '\\' && i+1 < len(line) {
					i++
					switch line[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[i])
					}
					continue
				}
				if c == '"' {
					line, closed = line[i+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("unterminated value of label %s", name)
			}
			s.labels[name] = val.String()
			line = strings.TrimPrefix(line, ",")
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}

// value returns the value of an unlabelled series.
func (ss samples) value(name string) (float64, bool) {
	for _, s := range ss {
		if s.name == name && len(s.labels) == 0 {
			return s.value, true
		}
	}
	return 0, false
}

// expect returns an error unless the unlabelled series has value want.
func (ss samples) expect(name string, want float64) error {
	got, ok := ss.value(name)
	switch {
	case !ok:
		return fmt.Errorf("no %s", name)
	case got != want:
		return fmt.Errorf("%s is %v, want %v", name, got, want)
	}
	return nil
}

// pods returns, sorted, the "namespace/pod/container" of every series of
// metric for the GPU with uuid; "-" stands for a series without pod labels.
func (ss samples) pods(metric, uuid string) []string {
	var out []string
	for _, s := range ss {
		if s.name != metric || s.labels["UUID"] != uuid {
			continue
		}
		if _, ok := s.labels["pod"]; !ok {
			out = append(out, "-")
			continue
		}
		out = append(out, s.labels["namespace"]+"/"+s.labels["pod"]+"/"+s.labels["container"])
	}
	slices.Sort(out)
	return out
}

// values returns the values of every series of metric for the GPU with uuid.
func (ss samples) values(metric, uuid string) []float64 {
	var out []float64
	for _, s := range ss {
		if s.name == metric && s.labels["UUID"] == uuid {
			out = append(out, s.value)
		}
	}
	return out
}

func TestParseSample(t *testing.T) {
	s, err := parseSample(`m{a="x y",b="q\"\\"} 1.5`)
	if err != nil {
		t.Fatal(err)
	}
	if s.name != "m" || s.labels["a"] != "x y" || s.labels["b"] != `q"\` || s.value != 1.5 {
		t.Errorf("parsed %+v", s)
	}
	if s, err := parseSample("up 0"); err != nil || s.name != "up" || s.value != 0 || len(s.labels) != 0 {
		t.Errorf("parsed %+v, %v", s, err)
	}
	for _, bad := range []string{`m{a="x} 1`, "m", `m{a} 1`, "m one"} {
		if _, err := parseSample(bad); err == nil {
			t.Errorf("parseSample(%q) succeeded", bad)
		}
	}
}

// podSeries returns the value of metric for the GPU with uuid and pod ("" for
// the series without pod labels), with the extra labels given as name,
// value pairs.
func (ss samples) podSeries(metric, uuid, pod string, extra ...string) (float64, bool) {
next:
	for _, s := range ss {
		if s.name != metric || s.labels["UUID"] != uuid || s.labels["pod"] != pod {
			continue
		}
		for i := 0; i+1 < len(extra); i += 2 {
			if s.labels[extra[i]] != extra[i+1] {
				continue next
			}
		}
		return s.value, true
	}
	return 0, false
}

// labelled returns the value of the sample of name whose label has value v.
func (ss samples) labelled(name, label, v string) (float64, bool) {
	for _, s := range ss {
		if s.name == name && s.labels[label] == v {
			return s.value, true
		}
	}
	return 0, false
}
