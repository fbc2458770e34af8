package boltstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
)

// sizeMessages is how many webhooks the size benchmarks store.
const sizeMessages = 20000

// sizeBody is a typical job result: 400 bytes of JSON.
var sizeBody = []byte(`{"id":"` + strings.Repeat("x", 391) + `"}`)

// BenchmarkStoreBytesPerMessage measures what one delivered webhook (400-byte body, one target,
// a dedupe key, one attempt with a 2-byte answer) leaves in the file, with history off and on:
// bytes of bbolt pages in use (and the file's size, which grows in steps) per message. It is a
// size measurement, not a speed one: run it once.
//
//	go test -run '^$' -bench StoreBytesPerMessage -benchtime 1x ./relay/boltstore/
func BenchmarkStoreBytesPerMessage(b *testing.B) {
	for _, history := range []time.Duration{0, 72 * time.Hour} {
		b.Run(fmt.Sprintf("history=%v", history), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "relay.db")
			s, err := Open(path, Options{History: history})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			empty := inUse(b, s)
			ctx := context.Background()
			base := time.Now()
			for i := range sizeMessages {
				now := base.Add(time.Duration(i) * time.Millisecond)
				id := fmt.Sprintf("%026d", i)
				m := &relay.Message{ID: id, Route: "fal-results", Provider: "fal", JobID: "req-" + id, JobStatus: "succeeded",
					ContentType: "application/json", SourceAddr: "203.0.113.9", ReceivedAt: now, Body: sizeBody,
					Targets: []string{"svc"}}
				_, ds, err := s.EnqueueLeased(ctx, m, relay.DedupeKey(m.Route, m.JobID, m.JobStatus), 72*time.Hour,
					2*time.Minute, m.Targets)
				if err != nil || len(ds) != 1 {
					b.Fatalf("enqueue: %v", err)
				}
				ds[0].Tried = &relay.Attempt{Number: 1, Start: now, Duration: 3 * time.Millisecond, Status: 200,
					Response: []byte("ok")}
				if err := s.Ack(ctx, ds[0]); err != nil {
					b.Fatal(err)
				}
			}
			used := inUse(b, s) - empty
			fi, err := os.Stat(path)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(used)/sizeMessages, "inuse-bytes/msg")
			b.ReportMetric(float64(fi.Size())/sizeMessages, "file-bytes/msg")
		})
	}
}

// inUse sums the bytes of the pages the buckets use.
func inUse(b *testing.B, s *Store) int {
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
			st := bk.Stats()
			n += st.BranchInuse + st.LeafInuse + st.InlineBucketInuse
			return nil
		})
	}); err != nil {
		b.Fatal(err)
	}
	return n
}
