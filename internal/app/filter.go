package app

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// familyFilter passes through the lines of a text-format body that belong
// to the families keep accepts, and drops the rest before the parser
// sees them: prometheus/common's text decoder builds every family of a
// body before any is dropped, which for a large body with one family
// named was most of a scrape's cost (BenchmarkParse).
//
// A line belongs to the family its # HELP or # TYPE line last named when
// its metric name is that family's name or the name plus a histogram's,
// summary's or counter's suffix, as the text parser groups them;
// otherwise it starts an untyped family of its own name. Other comments
// and blank lines are dropped. A family that is dropped is not parsed
// either, so a syntax error inside it no longer fails the scrape.
type familyFilter struct {
	r       *bufio.Reader
	keep    func(string) bool
	cur     []byte // the family the last HELP or TYPE line named
	curKeep bool
	out     []byte // kept bytes not yet read
	err     error
	lines   int
}

func newFamilyFilter(r io.Reader, keep func(string) bool) *familyFilter {
	return &familyFilter{r: bufio.NewReaderSize(r, 32<<10), keep: keep}
}

var suffixes = [][]byte{[]byte("_bucket"), []byte("_sum"), []byte("_count"), []byte("_total"), []byte("_created")}

func (f *familyFilter) Read(p []byte) (int, error) {
	for len(f.out) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		line, err := f.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: read the rest of it.
			rest, rerr := f.r.ReadBytes('\n')
			line, err = append(append([]byte(nil), line...), rest...), rerr
		}
		if err != nil && !errors.Is(err, io.EOF) {
			// A read failed mid-line (the body cap, a timeout): what was
			// read of the line is not a line; the error goes first.
			f.err = err
			continue
		}
		f.lines++
		keep, lerr := f.line(line)
		if lerr != nil {
			f.err = fmt.Errorf("text format parsing error in line %d: %w", f.lines, lerr)
			continue
		}
		if len(line) > 0 && keep {
			f.out = append(f.out[:0], line...)
			if line[len(line)-1] != '\n' {
				f.out = append(f.out, '\n')
			}
		}
		if err != nil {
			f.err = err
		}
	}
	n := copy(p, f.out)
	f.out = f.out[n:]
	return n, nil
}

// line reports whether to keep a line, following the families it names.
// A sample line that does not start with a metric name is an error, so
// that a body that is not an exposition at all (HTML, JSON) still fails
// the scrape, as the parser would fail it.
func (f *familyFilter) line(line []byte) (bool, error) {
	s := bytes.TrimLeft(line, " \t")
	if len(bytes.TrimSpace(s)) == 0 {
		return false, nil
	}
	if s[0] == '#' {
		fields := bytes.Fields(s[1:])
		if len(fields) < 2 || (!bytes.Equal(fields[0], []byte("HELP")) && !bytes.Equal(fields[0], []byte("TYPE"))) {
			return false, nil // a plain comment
		}
		if !bytes.Equal(fields[1], f.cur) {
			f.cur = append(f.cur[:0], fields[1]...)
			f.curKeep = f.keep(string(f.cur))
		}
		return f.curKeep, nil
	}
	end := bytes.IndexAny(s, "{ \t")
	if end < 0 {
		end = len(bytes.TrimRight(s, "\r\n"))
	}
	name := s[:end]
	if !metricName(name) {
		return false, fmt.Errorf("%q does not start with a metric name", bytes.TrimRight(line, "\r\n"))
	}
	if len(f.cur) > 0 && bytes.HasPrefix(name, f.cur) {
		rest := name[len(f.cur):]
		if len(rest) == 0 {
			return f.curKeep, nil
		}
		for _, suf := range suffixes {
			if bytes.Equal(rest, suf) {
				return f.curKeep, nil
			}
		}
	}
	// A sample of no family named so far: an untyped family of its own.
	f.cur = append(f.cur[:0], name...)
	f.curKeep = f.keep(string(f.cur))
	return f.curKeep, nil
}

// metricName reports whether b is a metric name of the text format's
// legacy character set.
func metricName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i, c := range b {
		switch {
		case c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}
