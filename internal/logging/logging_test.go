package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "trace", "warning", "1"} {
		if _, err := ParseLevel(in); err == nil {
			t.Errorf("ParseLevel(%q) accepted", in)
		}
	}
}

func TestNew(t *testing.T) {
	var b bytes.Buffer
	log := New(&b, "warn", "json")
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["msg"] != "shown" {
		t.Fatalf("want one JSON line for the warning only, got %q (%v)", b.String(), err)
	}
	b.Reset()
	New(&b, "debug", "logfmt").Debug("x", "k", "v")
	if !strings.Contains(b.String(), "level=DEBUG") || !strings.Contains(b.String(), "k=v") {
		t.Errorf("logfmt debug line: %q", b.String())
	}
	if CheckFormat("logfmt") != nil || CheckFormat("json") != nil || CheckFormat("text") == nil {
		t.Error("CheckFormat accepts exactly logfmt and json")
	}
}
