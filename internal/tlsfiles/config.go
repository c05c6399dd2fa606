package tlsfiles

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// ServerConfig is a server's TLS configuration that serves kp's pair in
// service and, with clientCAs, requires a client certificate that its CAs
// in service sign (mutual TLS). Every handshake builds its configuration
// from the files (GetConfigForClient), so a rotated pair or CA bundle
// applies from the next connection. credentials.NewTLS keeps the callback
// and adds gRPC's ALPN to what it returns.
func ServerConfig(kp *KeyPair, clientCAs *CAPool) *tls.Config {
	build := func() *tls.Config {
		c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*kp.Certificate()}}
		if clientCAs != nil {
			c.ClientCAs = clientCAs.Pool()
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return c
	}
	c := build()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return build(), nil }
	return c
}

// ClientCredentials are gRPC transport credentials that verify servers
// against rootCAs in service and, with kp, present its pair in service
// (mutual TLS). serverName is the name expected in the servers'
// certificates; empty, the host of the address dialled. Each connection
// builds its configuration from the files, so a reconnection after a
// rotation trusts the new CA; the standard verification (chain, name,
// validity) is credentials.NewTLS's, untouched.
//
// A tls.Config alone cannot do this: RootCAs has no callback, and a
// VerifyConnection with InsecureSkipVerify does not see the name that
// gRPC sets per connection on its own copy of the configuration.
func ClientCredentials(rootCAs *CAPool, kp *KeyPair, serverName string) credentials.TransportCredentials {
	return &clientCreds{roots: rootCAs, kp: kp, serverName: serverName}
}

type clientCreds struct {
	roots      *CAPool
	kp         *KeyPair
	serverName string
}

func (c *clientCreds) config() *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.roots.Pool(), ServerName: c.serverName}
	if c.kp != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.kp.Certificate(), nil
		}
	}
	return cfg
}

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.config()).ClientHandshake(ctx, authority, conn)
}

func (c *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsfiles: client credentials used by a server")
}

func (c *clientCreds) Info() credentials.ProtocolInfo {
	return credentials.NewTLS(&tls.Config{ServerName: c.serverName}).Info()
}

func (c *clientCreds) Clone() credentials.TransportCredentials {
	cc := *c
	return &cc
}

// OverrideServerName is deprecated in gRPC, and kept for the interface.
func (c *clientCreds) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}

var _ credentials.TransportCredentials = (*clientCreds)(nil)
