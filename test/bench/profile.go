package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// profiler fetches the agent's CPU profile over the measured window
// (-profile), then its allocation profile and its heap (after a
// collection: what is live).
type profiler struct {
	client *http.Client
	base   string // http://addr/debug/pprof/
	prefix string // the files' path, less "-cpu.pprof"
	done   chan error
}

func startProfile(addr string, window time.Duration, prefix string) *profiler {
	// Its own client: the scrapers' times out long before the window ends.
	client := &http.Client{Timeout: window + time.Minute}
	p := &profiler{client: client, base: "http://" + addr + "/debug/pprof/", prefix: prefix, done: make(chan error, 1)}
	go func() {
		secs := max(1, int(window.Round(time.Second)/time.Second))
		p.done <- p.fetch(fmt.Sprintf("profile?seconds=%d", secs), "-cpu.pprof")
	}()
	return p
}

// finish waits for the CPU profile and fetches the allocations and the
// heap.
func (p *profiler) finish() error {
	if err := <-p.done; err != nil {
		return err
	}
	if err := p.fetch("allocs", "-allocs.pprof"); err != nil {
		return err
	}
	return p.fetch("heap?gc=1", "-heap.pprof")
}

func (p *profiler) fetch(what, suffix string) error {
	resp, err := p.client.Get(p.base + what)
	if err != nil {
		return fmt.Errorf("profile %s: %w", what, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", what, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(p.prefix), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p.prefix + suffix)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", what, err)
	}
	return f.Close()
}
