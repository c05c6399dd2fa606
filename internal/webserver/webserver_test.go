package webserver

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bound is how long a test waits for the server to do what it must: far
// above any timeout under test, so a loaded machine only makes it slower.
const bound = 30 * time.Second

// long is a limit a test does not exercise.
const long = time.Hour

func ok(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }

// serve runs h with limits l on a loopback listener, at most maxConns
// connections at once, and returns its address.
func serve(t *testing.T, h http.Handler, l Limits, maxConns int) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", maxConns)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, l)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reads c until the server closes it (EOF or a reset) and
// returns what it read; it fails the test if c stays open for bound.
func closedByServer(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bound))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s (read %q)", bound, b)
	}
	return string(b)
}

// A client that trickles its headers (slowloris) is cut at the header
// timeout; it holds a connection no longer.
func TestSlowHeadersAreCut(t *testing.T) {
	addr := serve(t, http.HandlerFunc(ok), Limits{ReadHeaderTimeout: 200 * time.Millisecond, ReadTimeout: long, IdleTimeout: long}, 0)
	c := dial(t, addr)
	fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	stop := make(chan struct{})
	defer close(stop)
	go func() { // one header byte at a time, until the server hangs up
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := c.Write([]byte("X")); err != nil {
				return
			}
		}
	}()
	if got := closedByServer(t, c); strings.Contains(got, "200 OK") {
		t.Errorf("a request whose headers never ended was served: %q", got)
	}
}

// A client that sends headers but trickles its body is cut at the read
// timeout, after its answer (no endpoint reads a body).
func TestSlowBodyIsCut(t *testing.T) {
	addr := serve(t, http.HandlerFunc(ok), Limits{ReadHeaderTimeout: long, ReadTimeout: 300 * time.Millisecond, IdleTimeout: long}, 0)
	c := dial(t, addr)
	fmt.Fprint(c, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
	if got := closedByServer(t, c); !strings.Contains(got, "200 OK") {
		t.Errorf("answer %q, want 200 then the connection closed", got)
	}
}

// A keep-alive connection left idle is closed at the idle timeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	addr := serve(t, http.HandlerFunc(ok), Limits{ReadHeaderTimeout: long, ReadTimeout: long, IdleTimeout: 300 * time.Millisecond}, 0)
	c := dial(t, addr)
	fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := closedByServer(t, c); !strings.Contains(got, "200 OK") || strings.Contains(got, "Connection: close") {
		t.Errorf("answer %q, want a keep-alive 200, then the connection closed", got)
	}
}

// Headers over MaxHeaderBytes are answered 431; a long bearer token fits.
func TestOversizedHeadersAre431(t *testing.T) {
	addr := serve(t, http.HandlerFunc(ok), Limits{}, 0)
	get := func(header int) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/healthz", nil)
		req.Header.Set("Authorization", "Bearer "+strings.Repeat("a", header))
		resp, err := (&http.Client{Timeout: bound}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(8 << 10); code != http.StatusOK {
		t.Errorf("an 8 KiB token: %d, want 200", code)
	}
	if code := get(2 * MaxHeaderBytes); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("headers of twice MaxHeaderBytes: %d, want 431", code)
	}
}

// socketBuffer is the kernel buffer size of both ends in
// TestWriteStallCutsOnlyAStalledReader: fixed (no autotuning up to MiBs on
// loopback), so that a response of a few MiB cannot sit in the buffers
// whole and the handler's writes wait on the client's reads; large
// enough that loopback throughput stays high.
const socketBuffer = 64 << 10

// smallBuffers fixes the send buffer of every accepted connection.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(socketBuffer)
	}
	return c, err
}

// A client that stops reading a long response is cut once the writes
// make no progress for the stall timeout; one that reads steadily gets
// the whole response, though it takes longer than the stall timeout
// (Go's WriteTimeout alone would have cut it).
func TestWriteStallCutsOnlyAStalledReader(t *testing.T) {
	const stall = 2 * time.Second
	const chunk, chunks = 32 << 10, 256 // 8 MiB
	errs := make(chan error, 2)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		buf := make([]byte, chunk)
		for range chunks {
			if _, err := w.Write(buf); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, Limits{ReadHeaderTimeout: long, ReadTimeout: long, IdleTimeout: long, WriteStallTimeout: stall})
	go srv.Serve(smallBuffers{ln})
	defer srv.Close()
	// The receive buffer is set before connecting, so the window the
	// client advertises stays that small.
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, socketBuffer)
		})
		return errors.Join(err, serr)
	}}
	open := func() (net.Conn, *bufio.Reader) {
		c, err := dialer.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprint(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		return c, bufio.NewReader(c)
	}

	// Steady: a chunk every 20 ms, over 5 s in all.
	c, r := open()
	start := time.Now()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	buf := make([]byte, chunk)
	for {
		m, err := io.ReadFull(resp.Body, buf)
		n += m
		if err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	if err := <-errs; err != nil || n != chunk*chunks {
		t.Errorf("a steady reader got %d of %d bytes in %s; the handler's write: %v", n, chunk*chunks, took, err)
	}
	if took < stall {
		t.Logf("the steady read took %s, under the stall timeout: it proved less than it could", took)
	}
	c.Close()

	// Stalled: reads the headers, then nothing.
	_, r = open()
	if _, err := http.ReadResponse(r, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("the handler's write to a stalled reader: %v, want a timeout", err)
		}
	case <-time.After(bound):
		t.Fatalf("a reader stalled for %s still holds the handler", bound)
	}
}

// Past --web.max-connections a new connection waits, accepted, until one
// of the others closes; then it is served.
func TestMaxConnections(t *testing.T) {
	addr := serve(t, http.HandlerFunc(ok), Limits{}, 2)
	// Two keep-alive connections, idle after one request each, hold both
	// slots.
	var held []net.Conn
	for range 2 {
		c := dial(t, addr)
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("holding connection: %v", err)
		}
		held = append(held, c)
	}
	done := make(chan int, 1)
	go func() {
		resp, err := (&http.Client{Timeout: bound}).Get("http://" + addr + "/healthz")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case code := <-done:
		t.Fatalf("a third connection was served (%d) while two held the limit of 2", code)
	case <-time.After(300 * time.Millisecond):
	}
	held[0].Close()
	if code := <-done; code != http.StatusOK {
		t.Errorf("after a slot freed, the waiting request got %d, want 200", code)
	}
}

// Past --web.max-requests a request is answered 503 at once; once one
// finishes, the next is served.
func TestMaxRequests(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h := LimitRequests(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("block") != "" {
			once.Do(func() { close(entered) })
			<-release
		}
		ok(w, r)
	}), 1)
	addr := serve(t, h, Limits{}, 0)
	client := &http.Client{Timeout: bound}
	first := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/metrics?block=1")
		if err == nil {
			resp.Body.Close()
		}
		first <- err
	}()
	<-entered
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "Limit of concurrent requests reached (1)") {
		t.Errorf("a second scrape past the limit of 1: %d %q, want 503", resp.StatusCode, body)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	resp, err = client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after the first finished: %d, want 200", resp.StatusCode)
	}
}

func TestFlags(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if f.MaxConnections != DefaultMaxConnections || f.MaxRequests != DefaultMaxRequests || len(f.Validate()) > 0 {
		t.Errorf("defaults %+v, %v", f, f.Validate())
	}
	if err := fs.Parse([]string{"--web.max-connections=-1", "--web.max-requests=-2"}); err != nil {
		t.Fatal(err)
	}
	errs := f.Validate()
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), "--web.max-connections=-1") || !strings.Contains(errs[1].Error(), "--web.max-requests=-2") {
		t.Errorf("negative caps: %v", errs)
	}
}
