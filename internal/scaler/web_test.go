package scaler

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/fleet/scalertest"
	"github.com/gpu-telemetry/agent/internal/webserver"
)

// The scaler's /metrics and /healthz server carries internal/webserver's
// limits: headers past MaxHeaderBytes are answered 431, and past
// --web.max-connections a connection waits until another closes.
func TestWebServerLimits(t *testing.T) {
	a, err := scalertest.StartAgent("n", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	h := startScaler(t, nil, "--agents="+a.Addr(), "--web.max-connections=1")

	get := func(c net.Conn, extra string) int {
		t.Helper()
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n%s\r\n", extra)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	big, err := net.Dial("tcp", h.webAddr)
	if err != nil {
		t.Fatal(err)
	}
	if code := get(big, "X-Big: "+strings.Repeat("a", 2*webserver.MaxHeaderBytes)+"\r\n"); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: %d, want 431", code)
	}
	big.Close()

	held, err := net.Dial("tcp", h.webAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if code := get(held, ""); code != http.StatusOK {
		t.Fatalf("holding connection: %d", code)
	}
	done := make(chan int, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + h.webAddr + "/metrics")
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
		t.Errorf("once the first closed, the waiting scrape got %d, want 200", code)
	}
}
