package tlsedge_test

import (
	"crypto/tls"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay/redisstore"
	"github.com/hookrelay/hookrelay/relay/redistest"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

// Two replicas on one Redis start together: one order reaches the CA and both serve the same
// certificate. The CA validates only at the second replica, so when the first wins the lock
// (about half the runs) its challenge is answered through the shared storage. Validations wait
// until both replicas listen (Route), so none fails because a replica is not up yet.
func TestTwoReplicasShareOneCertificate(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ca := acmetest.Start(t, acmetest.Options{})
	storage := func() *redisstore.CertStorage {
		client := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { _ = client.Close() })
		s, err := redisstore.NewCertStorage(client, redisstore.CertStorageOptions{Prefix: "shared"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Start only starts the background work: the two race for the lock.
	edges := []*edgeServer{startEdge(t, ca, true, storage()), startEdge(t, ca, true, storage())}
	ca.Route(edges[1].httpAddr, edges[1].addr)
	var serials [2]string
	for i, e := range edges {
		waitReady(t, e)
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: ca.IssuerRoots, ServerName: domain})
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		serials[i] = conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
		conn.Close()
	}
	if serials[0] != serials[1] {
		t.Errorf("the replicas serve different certificates: serials %s and %s", serials[0], serials[1])
	}
	if n := ca.Orders(); n != 1 {
		t.Errorf("%d orders reached the CA, want 1", n)
	}
}
