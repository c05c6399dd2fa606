// Package tlsfiles serves TLS key pairs and CA bundles from files that
// change under a running process: cert-manager renewing a Secret, the
// kubelet swapping a Secret volume's ..data symlink. Nothing is watched:
// the files are read again by path (never by inode, so a symlink swap is
// seen) when a handshake or a scrape needs them, at most once per check
// interval, and taken when their contents changed and load. Contents
// that do not load (half written, a key that does not match its
// certificate, a truncated bundle) leave the last good ones in service,
// with one error logged and counted per distinct bad contents.
//
// A reload reaches new connections only: an established connection keeps
// the certificates it was made with (TLS 1.3 has no renegotiation), so
// its streams stay up.
package tlsfiles

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultCheckInterval is the least time between two reads of a set of
// files: a handshake or a scrape within it takes what was loaded last.
// Reading a Secret volume's few KiB costs microseconds; the kubelet takes
// up to a minute or two to project an updated Secret, so a second adds
// nothing noticeable to a rotation.
const DefaultCheckInterval = time.Second

// Options configure a Set.
type Options struct {
	// Namespace prefixes the metric names (gpu_agent, gpu_scaler).
	Namespace string
	// CheckInterval: 0 is DefaultCheckInterval; negative, every use
	// reads the files (tests).
	CheckInterval time.Duration
	Logger        *slog.Logger
	// Now is the clock of the check interval; nil is time.Now.
	Now func() time.Time
}

// Set holds the reloading files of one process and is the
// prometheus.Collector of their metrics. The same files asked for twice
// (one Secret for the server and the client side) are one source.
type Set struct {
	opts Options
	desc descs

	mu      sync.Mutex
	sources []*source
	byKey   map[string]*source
}

// NewSet returns an empty set.
func NewSet(o Options) *Set {
	if o.CheckInterval == 0 {
		o.CheckInterval = DefaultCheckInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Set{opts: o, desc: newDescs(o.Namespace), byKey: map[string]*source{}}
}

// KeyPair is a certificate and its key, reloaded as their files change.
type KeyPair struct{ src *source }

// CAPool is a bundle of CA certificates, reloaded as its file changes.
type CAPool struct{ src *source }

// KeyPair loads certFile and keyFile (PEM). The error, of a pair that
// does not load now, names neither flag: the caller's wrapping does.
func (s *Set) KeyPair(certFile, keyFile string) (*KeyPair, error) {
	src, err := s.add("pair\x00"+certFile+"\x00"+keyFile, []string{certFile, keyFile}, parseKeyPair)
	if err != nil {
		return nil, err
	}
	return &KeyPair{src}, nil
}

// CAPool loads the PEM bundle in file: every CERTIFICATE block must parse
// and there must be one at least.
func (s *Set) CAPool(file string) (*CAPool, error) {
	src, err := s.add("ca\x00"+file, []string{file}, parseCAPool)
	if err != nil {
		return nil, err
	}
	return &CAPool{src}, nil
}

// Certificate is the pair in service, after reading the files again if
// the check interval has passed.
func (k *KeyPair) Certificate() *tls.Certificate { return k.src.get().(*tls.Certificate) }

// Pool is the CAs in service, after reading the file again if the check
// interval has passed.
func (c *CAPool) Pool() *x509.CertPool { return c.src.get().(*x509.CertPool) }

func (s *Set) add(key string, paths []string, parse func([][]byte) (any, time.Time, error)) (*source, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if src, ok := s.byKey[key]; ok {
		return src, nil
	}
	src := &source{paths: paths, parse: parse, interval: s.opts.CheckInterval, now: s.opts.Now,
		log: s.opts.Logger.With("file", paths[0])}
	if err := src.load(); err != nil {
		return nil, err
	}
	s.byKey[key] = src
	s.sources = append(s.sources, src)
	return src, nil
}

// source is one set of files read and parsed together.
type source struct {
	paths    []string
	parse    func([][]byte) (any, time.Time, error)
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu       sync.Mutex
	checked  time.Time
	sum      [sha256.Size]byte // of the contents in service
	badSum   [sha256.Size]byte // of the last contents that failed, reported once
	value    any
	notAfter time.Time
	reloads  uint64
	errors   uint64
}

// load is the first read: an error fails the start.
func (s *source) load() error {
	contents, sum, err := s.read()
	if err != nil {
		return err
	}
	v, notAfter, err := s.parse(contents)
	if err != nil {
		return err
	}
	s.value, s.notAfter, s.sum, s.checked = v, notAfter, sum, s.now()
	return nil
}

// get returns the value in service, first reading the files again if
// the check interval has passed.
func (s *source) get() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkLocked()
	return s.value
}

func (s *source) checkLocked() {
	now := s.now()
	if s.interval > 0 && now.Sub(s.checked) < s.interval {
		return
	}
	s.checked = now
	contents, sum, err := s.read()
	switch sum {
	case s.sum: // unchanged, or back to the contents in service
		s.badSum = [sha256.Size]byte{}
		return
	case s.badSum: // the bad contents, reported already
		return
	}
	var v any
	var notAfter time.Time
	if err == nil {
		v, notAfter, err = s.parse(contents)
	}
	if err != nil {
		s.badSum = sum
		s.errors++
		s.log.Error("TLS files changed but do not load; the last good ones stay in service", "err", err)
		return
	}
	s.value, s.notAfter, s.sum, s.badSum = v, notAfter, sum, [sha256.Size]byte{}
	s.reloads++
	s.log.Info("TLS files reloaded", "not_after", notAfter.UTC().Format(time.RFC3339))
}

// read reads every path. The sum covers the contents and any read error,
// so that a file missing for a while is reported once, not per check.
func (s *source) read() ([][]byte, [sha256.Size]byte, error) {
	h := sha256.New()
	contents := make([][]byte, len(s.paths))
	var errs []error
	for i, p := range s.paths {
		b, err := os.ReadFile(p) // #nosec G304 -- the operator's --*.tls-*-file flags
		if err != nil {
			errs = append(errs, err)
			fmt.Fprintf(h, "error %d %s\n", i, err)
			continue
		}
		contents[i] = b
		fmt.Fprintf(h, "file %d %d\n", i, len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return contents, sum, errors.Join(errs...)
}

func parseKeyPair(c [][]byte) (any, time.Time, error) {
	cert, err := tls.X509KeyPair(c[0], c[1])
	if err != nil {
		return nil, time.Time{}, err
	}
	return &cert, cert.Leaf.NotAfter, nil
}

// parseCAPool is stricter than x509.CertPool.AppendCertsFromPEM, which
// skips what it cannot parse: a bundle cut short in the middle of a
// certificate would load without that CA.
func parseCAPool(c [][]byte) (any, time.Time, error) {
	pool := x509.NewCertPool()
	var notAfter time.Time
	rest, n := c[0], 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		if n == 0 || cert.NotAfter.Before(notAfter) {
			notAfter = cert.NotAfter
		}
		n++
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, time.Time{}, fmt.Errorf("a PEM block after certificate %d does not end", n)
	}
	if n == 0 {
		return nil, time.Time{}, errors.New("no PEM certificate in it")
	}
	return pool, notAfter, nil
}
