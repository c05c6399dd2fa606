package tlsfiles

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpu-telemetry/agent/internal/tlsfiles/tlstest"
)

// side is one end's Secret volume and the set over it.
type side struct {
	vol *tlstest.SecretVolume
	kp  *KeyPair
	ca  *CAPool
}

func newSide(t *testing.T, ca *tlstest.CA, leaf *tlstest.Leaf) *side {
	t.Helper()
	s := &side{vol: tlstest.NewSecretVolume(t, tlstest.Secret(ca, leaf))}
	set := NewSet(Options{CheckInterval: -1})
	var err error
	if s.kp, err = set.KeyPair(s.vol.Path("tls.crt"), s.vol.Path("tls.key")); err != nil {
		t.Fatal(err)
	}
	if s.ca, err = set.CAPool(s.vol.Path("ca.crt")); err != nil {
		t.Fatal(err)
	}
	return s
}

func check(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// Mutual TLS between a gRPC server on ServerConfig and a client on
// ClientCredentials, each over its own Secret volume. Both volumes move
// to a new CA and new leaves: a stream opened before goes on; new
// connections of the same client objects use the new files; a client
// that kept the old CA and certificate is refused.
func TestRotationWithGRPC(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t, "ca-1"), tlstest.NewCA(t, "ca-2")
	server := newSide(t, ca1, ca1.Issue(t, "server"))
	client := newSide(t, ca1, ca1.Issue(t, "client"))
	oldClient := ca1.Issue(t, "client")

	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerConfig(server.kp, server.ca))))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	addr := ln.Addr().String()
	creds := ClientCredentials(client.ca, client.kp, "")
	static := credentials.NewTLS(&tls.Config{RootCAs: ca1.Pool(), Certificates: []tls.Certificate{oldClient.TLS(t)}})

	if err := check(t, addr, creds); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	if err := check(t, addr, static); err != nil {
		t.Fatalf("before the rotation, a client on the first CA: %v", err)
	}

	// A stream opened before the rotation.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(t.Context(), &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		// The first message may be SERVICE_UNKNOWN if Watch began first.
		if err != nil {
			t.Fatal(err)
		}
		if r, err = watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("stream before the rotation: %v %v", r, err)
		}
	}

	server.vol.Update(tlstest.Secret(ca2, ca2.Issue(t, "server")))
	client.vol.Update(tlstest.Secret(ca2, ca2.Issue(t, "client")))

	if err := check(t, addr, creds); err != nil {
		t.Errorf("after the rotation, a new connection of the rotated client: %v", err)
	}
	if err := check(t, addr, static); err == nil {
		t.Error("after the rotation, a client on the first CA was served")
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("the stream opened before the rotation: %v %v, want SERVING", r, err)
	}
}
