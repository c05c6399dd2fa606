// Package dcgmcsv reads dcgm-exporter's field lists: the CSV files its
// -f/--collectors flag names (default-counters.csv,
// dcp-metrics-included.csv, and the custom ones users keep in ConfigMaps).
//
// The format is dcgm-exporter's (internal/pkg/counters, ReadCSVFile and
// ExtractCounters): one field a line, "DCGM_FI_NAME, type, help"; lines
// starting with '#' are comments; fields are trimmed of spaces; the types
// are gauge, counter, histogram, summary and label (a label row adds the
// field's value as a label to the other series). It is read with
// encoding/csv as there, so a help text holding a comma must be quoted.
// Unlike dcgm-exporter, a comment may be indented and the type may be in
// any case, and a quoted help text may follow a space: a file it reads,
// this reads the same.
package dcgmcsv

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Type is a field's Prometheus type, or TypeLabel.
type Type string

// The types dcgm-exporter accepts (its promMetricType).
const (
	TypeGauge     Type = "gauge"
	TypeCounter   Type = "counter"
	TypeHistogram Type = "histogram"
	TypeSummary   Type = "summary"
	TypeLabel     Type = "label"
)

func (t Type) valid() bool {
	switch t {
	case TypeGauge, TypeCounter, TypeHistogram, TypeSummary, TypeLabel:
		return true
	}
	return false
}

// Field is one row of a field list.
type Field struct {
	Name string // "DCGM_FI_DEV_GPU_UTIL"
	Type Type
	Help string
	Line int // 1-based, in the file
}

// ErrMalformed is wrapped by every error about the file's content, as
// opposed to reading it.
var ErrMalformed = errors.New("malformed dcgm-exporter field list")

// LineError is a malformed line.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *LineError) Unwrap() []error { return []error{ErrMalformed, e.Err} }

// ReadFile reads the field list at path.
func ReadFile(path string) ([]Field, error) {
	f, err := os.Open(path) // #nosec G304 -- the operator's -f/--collectors
	if err != nil {
		return nil, fmt.Errorf("reading dcgm-exporter field list: %w", err)
	}
	defer f.Close()
	// A device or a pipe given by mistake (-f /dev/zero) would be read
	// forever; a list is a few KiB.
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("reading dcgm-exporter field list %s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading dcgm-exporter field list: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("reading dcgm-exporter field list %s: larger than %d bytes", path, MaxFileSize)
	}
	return Parse(bytes.NewReader(data), path)
}

// MaxFileSize bounds a field list file: dcgm-exporter's own are under
// 10 KiB.
const MaxFileSize = 1 << 20

// Parse reads a field list; name is the file's, for errors. A field listed
// twice is kept once, at its first line, as the series it names can be
// served only once. The list is not nil, even when empty: a file that
// lists nothing selects nothing.
func Parse(r io.Reader, name string) ([]Field, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1 // checked below, with a clearer error
	// Unlike dcgm-exporter's reader: so that `name, gauge, "a, b"` (a
	// space before the quote) is a quoted field, not a bare quote.
	cr.TrimLeadingSpace = true
	fields := []Field{}
	seen := map[string]bool{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return fields, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, &LineError{File: name, Line: pe.Line, Err: pe.Err}
			}
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		if strings.HasPrefix(rec[0], "#") || len(rec) == 1 && rec[0] == "" {
			continue // an indented comment, or a line of spaces
		}
		f, err := parseRecord(rec)
		if err != nil {
			return nil, &LineError{File: name, Line: line, Err: err}
		}
		if !seen[f.Name] {
			seen[f.Name] = true
			f.Line = line
			fields = append(fields, f)
		}
	}
}

func parseRecord(rec []string) (Field, error) {
	if len(rec) != 3 {
		return Field{}, fmt.Errorf("%d fields %q, want 3: name, type, help (quote a help text that holds a comma)", len(rec), rec)
	}
	f := Field{Name: rec[0], Type: Type(strings.ToLower(rec[1])), Help: rec[2]}
	if !validName(f.Name) {
		return Field{}, fmt.Errorf("field name %q: want a DCGM field name such as DCGM_FI_DEV_GPU_UTIL", f.Name)
	}
	if !f.Type.valid() {
		return Field{}, fmt.Errorf("type %q of %s: want gauge, counter, histogram, summary or label", rec[1], f.Name)
	}
	return f, nil
}

// validName accepts the names of DCGM's fields and dcgm-exporter's own
// (DCGM_FI_*, DCGM_EXP_*), which become metric names: upper case, digits
// and underscores.
func validName(s string) bool {
	if !strings.HasPrefix(s, "DCGM_") || len(s) == len("DCGM_") {
		return false
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
