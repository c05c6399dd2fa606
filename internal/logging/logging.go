// Package logging builds the log/slog logger of both binaries from their
// --log.level and --log.format flags, so the two spell and check them
// the same way.
package logging

import (
	"errors"
	"io"
	"log/slog"
	"strings"
)

// ParseLevel parses a --log.level value: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return l, l.UnmarshalText([]byte(s))
	}
	return l, errors.New("must be debug, info, warn or error")
}

// CheckFormat checks a --log.format value: logfmt or json.
func CheckFormat(s string) error {
	if s != "logfmt" && s != "json" {
		return errors.New("must be logfmt or json")
	}
	return nil
}

// New returns a logger writing to w. level and format must have passed
// ParseLevel and CheckFormat; an invalid level logs at info.
func New(w io.Writer, level, format string) *slog.Logger {
	l, _ := ParseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
