package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func parse(args ...string) (*config, error) {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseFlags(fs, args)
}

func TestParseFlags(t *testing.T) {
	c, err := parse("-url=ws://10.251.0.1:7880", "-publishers=2", "-loads=0.5, 1.5", "-skips=0,0.01", "-gaps=0s,150ms")
	if err != nil {
		t.Fatal(err)
	}
	if c.Publishers != 2 || len(c.Loads) != 2 || c.Loads[1] != 1.5 || c.Skips[1] != 0.01 || c.Gaps[1] != 150*time.Millisecond {
		t.Errorf("parsed %+v", c)
	}
	// Defaults: one steady phase kind, nothing skipped.
	c, err = parse("-url=ws://h:7880", "-subscribers=1")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Loads) != 1 || len(c.Skips) != 1 || c.Skips[0] != 0 || len(c.Gaps) != 1 || c.Gaps[0] != 0 {
		t.Errorf("defaults %+v", c.pacing)
	}
}

func TestParseFlagsNamesTheBadFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"-url=http://h", "-publishers=1"}, "-url"},
		{[]string{"-url=ws://h"}, "-publishers"},
		{[]string{"-url=ws://h", "-publishers=1", "-bitrate=0"}, "-bitrate"},
		{[]string{"-url=ws://h", "-publishers=1", "-frame=1ms"}, "-frame"},
		{[]string{"-url=ws://h", "-publishers=1", "-phase-min=5s", "-phase-max=1s"}, "-phase-min"},
		{[]string{"-url=ws://h", "-publishers=1", "-loads=0"}, "-loads"},
		{[]string{"-url=ws://h", "-publishers=1", "-skips=1"}, "-skips"},
		{[]string{"-url=ws://h", "-publishers=1", "-gaps=-1s"}, "-gaps"},
		{[]string{"-url=ws://h", "-publishers=1", "-gap-prob=2"}, "-gap-prob"},
	} {
		_, err := parse(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.flag)
		}
	}
}
