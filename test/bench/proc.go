package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports (it is fixed in the kernel's
// ABI, unlike CONFIG_HZ).
const clockTicks = 100

// cpuSeconds reads the user and system CPU time of a process from
// /proc/PID/stat, in seconds.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU extracts utime+stime from a /proc/PID/stat line. The
// command name (field 2) is in parentheses and may hold spaces and
// parentheses itself, so fields are counted after its last ')'.
func parseStatCPU(stat string) (float64, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("stat line without a command name: %q", stat)
	}
	// After ") " come fields 3 (state) onwards; utime and stime are
	// fields 14 and 15.
	f := strings.Fields(stat[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat line has %d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return float64(utime+stime) / clockTicks, nil
}

// memory is a process's resident set in bytes: now, at its peak, and now
// split into anonymous memory (heap, stacks) and file pages (the binary's
// code and read-only data, which the kernel can share and reclaim).
type memory struct {
	RSS, HWM, Anon, File uint64
}

func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	return parseStatus(bufio.NewScanner(f))
}

// parseStatus reads VmRSS, VmHWM, RssAnon and RssFile ("VmRSS:    12345
// kB") from /proc/PID/status.
func parseStatus(sc *bufio.Scanner) (memory, error) {
	var m memory
	var seen int
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		var dst *uint64
		switch key {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		}
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", key, sc.Text())
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		*dst = kb << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if seen != 4 {
		return m, fmt.Errorf("VmRSS, VmHWM, RssAnon or RssFile missing from status")
	}
	return m, nil
}
