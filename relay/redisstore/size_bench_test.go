package redisstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

const sizeMessages = 20000

// BenchmarkStoreBytesPerMessage measures what one delivered webhook (400-byte body, one target,
// a dedupe key, one attempt with a 2-byte answer) costs in Redis' memory (used_memory), with
// history off and on. It is a size measurement, not a speed one: run it once.
//
//	go test -run '^$' -bench StoreBytesPerMessage -benchtime 1x ./relay/redisstore/
func BenchmarkStoreBytesPerMessage(b *testing.B) {
	for _, history := range []time.Duration{0, 72 * time.Hour} {
		b.Run(fmt.Sprintf("history=%v", history), func(b *testing.B) {
			srv := redistest.Start(b, redistest.Options{})
			client := redis.NewClient(&redis.Options{Addr: srv.Addr})
			s, err := New(client, Options{Prefix: "size", History: history})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			before := usedMemory(b, client)
			base := time.Now()
			for i := range sizeMessages {
				now := base.Add(time.Duration(i) * time.Millisecond)
				id := fmt.Sprintf("%026d", i)
				m := benchMsg(id, now)
				m.JobID = "req-" + id
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
			used := usedMemory(b, client) - before
			b.ReportMetric(float64(used)/sizeMessages, "used_memory-bytes/msg")
		})
	}
}
