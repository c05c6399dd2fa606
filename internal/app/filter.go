package app

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// familyFilter passes through the lines of a text-format body that belong
// to the families keep accepts, and drops the rest before the parser
// sees them: prometheus/common's text decoder builds every family of a
// body before any is dropped, which for a large body with one family
// named was most of a scrape's cost (BenchmarkParse).
//
// A line belongs to a family as prometheus/common's text parser groups
// them (TextParser.setOrCreateCurrentMF): a HELP or TYPE line names its
// family; a sample belongs to the family of its own name if one was named
// or seen before, else to a summary named by it less _sum or _count, else
// to a histogram named by it less _sum, _count or _bucket, else it starts
// an untyped family of its own name. Other comments and blank lines are
// dropped. A family that is dropped is not parsed either, so a syntax
// error inside it no longer fails the scrape.
type familyFilter struct {
	r        *bufio.Reader
	keep     func(string) bool
	families map[string]family // every family named or seen so far
	last     []byte            // the name of the last sample line, and its family's
	lastFam  family
	out      []byte // kept bytes not yet read
	err      error
	lines    int
}

// family is what the filter knows of a family: its type as its TYPE line
// gave it (uppercased, as the parser reads it; "" untyped), and whether
// it is kept.
type family struct {
	typ  string
	keep bool
}

func newFamilyFilter(r io.Reader, keep func(string) bool) *familyFilter {
	return &familyFilter{r: bufio.NewReaderSize(r, 32<<10), keep: keep, families: map[string]family{}}
}

// The suffixes of a summary's and a histogram's samples.
var (
	summarySuffixes   = [][]byte{[]byte("_sum"), []byte("_count")}
	histogramSuffixes = [][]byte{[]byte("_sum"), []byte("_count"), []byte("_bucket")}
)

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
		f.last = f.last[:0] // a TYPE line may change what a name belongs to
		fam := f.family(fields[1])
		if bytes.Equal(fields[0], []byte("TYPE")) && len(fields) > 2 {
			fam.typ = strings.ToUpper(string(fields[2]))
			f.families[string(fields[1])] = fam
		}
		return fam.keep, nil
	}
	end := bytes.IndexAny(s, "{ \t")
	if end < 0 {
		end = len(bytes.TrimRight(s, "\r\n"))
	}
	name := s[:end]
	if !metricName(name) {
		return false, fmt.Errorf("%q does not start with a metric name", bytes.TrimRight(line, "\r\n"))
	}
	if bytes.Equal(name, f.last) {
		return f.lastFam.keep, nil // most lines: the next sample of the same name
	}
	fam := f.sampleFamily(name)
	f.last, f.lastFam = append(f.last[:0], name...), fam
	return fam.keep, nil
}

// sampleFamily is the family a sample of this name belongs to.
func (f *familyFilter) sampleFamily(name []byte) family {
	if fam, ok := f.families[string(name)]; ok {
		return fam
	}
	for _, suf := range histogramSuffixes {
		base, ok := bytes.CutSuffix(name, suf)
		if !ok {
			continue
		}
		if fam, ok := f.families[string(base)]; ok {
			switch {
			case fam.typ == "SUMMARY" && slices.ContainsFunc(summarySuffixes, func(x []byte) bool { return bytes.Equal(x, suf) }):
				return fam
			case fam.typ == "HISTOGRAM" || fam.typ == "GAUGE_HISTOGRAM":
				return fam
			}
		}
	}
	// A sample of no family named so far: an untyped family of its own.
	return f.family(name)
}

// family returns the family named name, recording it (untyped) if new.
func (f *familyFilter) family(name []byte) family {
	if fam, ok := f.families[string(name)]; ok {
		return fam
	}
	fam := family{keep: f.keep(string(name))}
	f.families[string(name)] = fam
	return fam
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
