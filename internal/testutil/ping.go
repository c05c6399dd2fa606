package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// PingFlood speaks HTTP/2 to a gRPC server at addr without TLS and sends
// a PING every gap, as a client that ignores the server's keepalive
// policy would, until the server answers with GOAWAY (returned: its error
// code and debug data) or ctx ends. No stream is opened.
func PingFlood(ctx context.Context, addr string, gap time.Duration) (http2.ErrCode, string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		return 0, "", err
	}
	fr := http2.NewFramer(c, c)
	var mu sync.Mutex // the framer's writes, from both goroutines
	write := func(f func() error) error {
		mu.Lock()
		defer mu.Unlock()
		return f()
	}
	if err := fr.WriteSettings(); err != nil {
		return 0, "", err
	}
	go func() {
		for n := byte(0); ; n++ {
			if err := write(func() error { return fr.WritePing(false, [8]byte{7: n}) }); err != nil {
				return // the server closed the connection; ReadFrame says why
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
	}()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return 0, "", errors.Join(fmt.Errorf("no GOAWAY: %w", err), ctx.Err())
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return f.ErrCode, string(f.DebugData()), nil
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := write(fr.WriteSettingsAck); err != nil {
					return 0, "", err
				}
			}
		}
	}
}
