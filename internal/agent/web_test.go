package agent

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gpu-telemetry/agent/internal/webserver"
)

// The agent's HTTP server, as Run starts it (through exporter-toolkit's
// Serve), carries the limits of internal/webserver: oversized headers are
// answered 431, and past --web.max-connections a connection waits until
// another closes.
func TestWebServerLimits(t *testing.T) {
	c := parse(t, "--web.listen-address=127.0.0.1:0", "--web.max-connections=1")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	w, err := listenWeb(c)
	if err != nil {
		t.Fatal(err)
	}
	if s := w.srv; s.ReadHeaderTimeout != webserver.ReadHeaderTimeout || s.ReadTimeout != webserver.ReadTimeout ||
		s.WriteTimeout != webserver.WriteStallTimeout || s.IdleTimeout != webserver.IdleTimeout || s.MaxHeaderBytes != webserver.MaxHeaderBytes {
		t.Errorf("server limits %v %v %v %v %v, want internal/webserver's", s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout, s.IdleTimeout, s.MaxHeaderBytes)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	w.serve(gctx, g, slog.New(slog.DiscardHandler))
	defer func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	}()
	addr := w.ln.Addr().String()

	// One keep-alive connection holds the only slot, and is answered 431
	// for headers past MaxHeaderBytes (the connection stays open).
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fmt.Fprintf(held, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 2*webserver.MaxHeaderBytes))
	resp, err := http.ReadResponse(bufio.NewReader(held), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: %d, want 431", resp.StatusCode)
	}
	// 431 closes that connection: open another to hold the slot.
	held.Close()
	held, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(held, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(held), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("holding connection: %v", err)
	}

	done := make(chan int, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + addr + "/healthz")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case code := <-done:
		t.Fatalf("a second connection was served (%d) past --web.max-connections=1", code)
	case <-time.After(300 * time.Millisecond):
	}
	held.Close()
	if code := <-done; code != http.StatusOK {
		t.Errorf("once the first closed, the waiting one got %d, want 200", code)
	}
}

func TestWebLimitFlags(t *testing.T) {
	c := parse(t)
	if c.WebLimits.MaxConnections != webserver.DefaultMaxConnections || c.WebLimits.MaxRequests != webserver.DefaultMaxRequests {
		t.Errorf("defaults %+v", c.WebLimits)
	}
	err := parse(t, "--web.max-connections=-1").Validate()
	if err == nil || !strings.Contains(err.Error(), "--web.max-connections=-1") {
		t.Errorf("--web.max-connections=-1: %v", err)
	}
}
