package scaler

import (
	"fmt"
	"log/slog"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gpu-telemetry/agent/internal/tlsfiles"
)

// tlsCredentials returns the scaler's two sides' transport credentials
// and the set of their files, whose metrics the scaler serves. Every
// certificate, key and CA is read again when it changes on disk
// (internal/tlsfiles): a rotated Secret applies from the next connection,
// and established streams stay up.
//
// Towards KEDA: TLS when --grpc.tls-cert-file is set, mutual TLS when
// --grpc.tls-client-ca-file is set too (KEDA's caCert, tlsClientCert,
// tlsClientKey auth parameters on the trigger). Towards the agents: TLS
// when --agents.tls-ca-file is set, with a client certificate when
// --agents.tls-cert-file is set (mutual TLS).
func tlsCredentials(c *Config, log *slog.Logger) (server, agents credentials.TransportCredentials, files *tlsfiles.Set, err error) {
	files = tlsfiles.NewSet(tlsfiles.Options{Namespace: Namespace, Logger: log.With("component", "tls")})
	if server, err = serverCredentials(c, files); err != nil {
		return nil, nil, nil, err
	}
	if agents, err = agentCredentials(c, files); err != nil {
		return nil, nil, nil, err
	}
	return server, agents, files, nil
}

func serverCredentials(c *Config, files *tlsfiles.Set) (credentials.TransportCredentials, error) {
	if c.GRPCTLSCert == "" {
		return insecure.NewCredentials(), nil
	}
	kp, err := files.KeyPair(c.GRPCTLSCert, c.GRPCTLSKey)
	if err != nil {
		return nil, fmt.Errorf("--grpc.tls-cert-file=%s, --grpc.tls-key-file=%s: %w", c.GRPCTLSCert, c.GRPCTLSKey, err)
	}
	var clientCAs *tlsfiles.CAPool
	if c.GRPCTLSClientCA != "" {
		if clientCAs, err = files.CAPool(c.GRPCTLSClientCA); err != nil {
			return nil, fmt.Errorf("--grpc.tls-client-ca-file=%s: %w", c.GRPCTLSClientCA, err)
		}
	}
	return credentials.NewTLS(tlsfiles.ServerConfig(kp, clientCAs)), nil
}

func agentCredentials(c *Config, files *tlsfiles.Set) (credentials.TransportCredentials, error) {
	if c.AgentsTLSCA == "" {
		return insecure.NewCredentials(), nil
	}
	roots, err := files.CAPool(c.AgentsTLSCA)
	if err != nil {
		return nil, fmt.Errorf("--agents.tls-ca-file=%s: %w", c.AgentsTLSCA, err)
	}
	var kp *tlsfiles.KeyPair
	if c.AgentsTLSCert != "" {
		if kp, err = files.KeyPair(c.AgentsTLSCert, c.AgentsTLSKey); err != nil {
			return nil, fmt.Errorf("--agents.tls-cert-file=%s, --agents.tls-key-file=%s: %w", c.AgentsTLSCert, c.AgentsTLSKey, err)
		}
	}
	return tlsfiles.ClientCredentials(roots, kp, c.AgentsTLSServer), nil
}
