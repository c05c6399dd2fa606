package agent

import (
	"crypto/tls"
	"fmt"

	"github.com/gpu-telemetry/agent/internal/tlsfiles"
)

// GRPCTLSConfig builds the push API's TLS configuration from the flags,
// nil when TLS is off. The certificate, its key and the client CAs are
// read again when they change on disk (internal/tlsfiles): a rotated
// Secret applies from the next connection, and established Watch streams
// stay up. Errors name the flag.
func (c *Config) GRPCTLSConfig(files *tlsfiles.Set) (*tls.Config, error) {
	if c.GRPCTLSCertFile == "" && c.GRPCTLSKeyFile == "" {
		return nil, nil
	}
	kp, err := files.KeyPair(c.GRPCTLSCertFile, c.GRPCTLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("--grpc.tls-cert-file=%s, --grpc.tls-key-file=%s: %w", c.GRPCTLSCertFile, c.GRPCTLSKeyFile, err)
	}
	var clientCAs *tlsfiles.CAPool
	if c.GRPCTLSClientCAFile != "" {
		if clientCAs, err = files.CAPool(c.GRPCTLSClientCAFile); err != nil {
			return nil, fmt.Errorf("--grpc.tls-client-ca-file=%s: %w", c.GRPCTLSClientCAFile, err)
		}
	}
	return tlsfiles.ServerConfig(kp, clientCAs), nil
}
