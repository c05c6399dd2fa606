package scaler

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// serverCredentials: TLS when --grpc.tls-cert-file is set, mutual TLS when
// --grpc.tls-client-ca-file is set too (KEDA's caCert, tlsClientCert,
// tlsClientKey auth parameters on the trigger).
func serverCredentials(c *Config) (credentials.TransportCredentials, error) {
	if c.GRPCTLSCert == "" {
		return insecure.NewCredentials(), nil
	}
	cert, err := tls.LoadX509KeyPair(c.GRPCTLSCert, c.GRPCTLSKey)
	if err != nil {
		return nil, fmt.Errorf("--grpc.tls-cert-file=%s, --grpc.tls-key-file=%s: %w", c.GRPCTLSCert, c.GRPCTLSKey, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.GRPCTLSClientCA != "" {
		pool, err := loadCA(c.GRPCTLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("--grpc.tls-client-ca-file=%s: %w", c.GRPCTLSClientCA, err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}

// agentCredentials: TLS to the agents when --agents.tls-ca-file is set, with a
// client certificate when --agents.tls-cert-file is set (mutual TLS).
func agentCredentials(c *Config) (credentials.TransportCredentials, error) {
	if c.AgentsTLSCA == "" {
		return insecure.NewCredentials(), nil
	}
	pool, err := loadCA(c.AgentsTLSCA)
	if err != nil {
		return nil, fmt.Errorf("--agents.tls-ca-file=%s: %w", c.AgentsTLSCA, err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: c.AgentsTLSServer, MinVersion: tls.VersionTLS12}
	if c.AgentsTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.AgentsTLSCert, c.AgentsTLSKey)
		if err != nil {
			return nil, fmt.Errorf("--agents.tls-cert-file=%s, --agents.tls-key-file=%s: %w", c.AgentsTLSCert, c.AgentsTLSKey, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return pool, nil
}
