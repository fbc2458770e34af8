package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// storeProbe reads what the relay's store costs: before the run, with the backlog queued when
// sending ends, and after every delivery (when only the dedupe keys remain).
type storeProbe interface {
	before(ctx context.Context)
	backlog(ctx context.Context, res *result)
	// after stops the relay with stopRelay when it must, then adds its figures to res.
	after(ctx context.Context, stopRelay func(), res *result)
}

type noStore struct{}

func (noStore) before(context.Context)                          {}
func (noStore) backlog(context.Context, *result)                {}
func (noStore) after(_ context.Context, stop func(), _ *result) {}

// boltProbe reads the embedded store's file.
type boltProbe struct{ path string }

func (b *boltProbe) before(context.Context) {}

func (b *boltProbe) backlog(_ context.Context, res *result) {
	if fi, err := os.Stat(b.path); err == nil {
		res.Store = append(res.Store, fmt.Sprintf("bbolt file when sending ended: %.1f MiB (%.0f B per webhook acknowledged)",
			float64(fi.Size())/(1<<20), float64(fi.Size())/float64(max(res.UniqueAcked, 1))))
	}
}

// after opens the file once the relay has released it and reports each bucket's keys and the
// bytes its pages hold.
func (b *boltProbe) after(_ context.Context, stopRelay func(), res *result) {
	stopRelay()
	fi, err := os.Stat(b.path)
	if err != nil {
		res.Store = append(res.Store, "bbolt: "+err.Error())
		return
	}
	db, err := bolt.Open(b.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		res.Store = append(res.Store, "bbolt: "+err.Error())
		return
	}
	defer db.Close()
	var lines []string
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			s := bk.Stats()
			inuse := s.BranchInuse + s.LeafInuse
			per := ""
			if s.KeyN > 0 {
				per = fmt.Sprintf(", %.0f B/key", float64(inuse)/float64(s.KeyN))
			}
			lines = append(lines, fmt.Sprintf("%s %d keys %.1f MiB%s", name, s.KeyN, float64(inuse)/(1<<20), per))
			return nil
		})
	})
	sort.Strings(lines)
	res.Store = append(res.Store, fmt.Sprintf("bbolt file after the drain: %.1f MiB (pages are reused, never returned); buckets in use: %s",
		float64(fi.Size())/(1<<20), strings.Join(lines, "; ")))
}

// redisProbe reads Redis' own accounting. used_memory is the whole server's, so other clients
// of the same Redis show up in it.
type redisProbe struct {
	rdb    *redis.Client
	prefix string
	used0  int64
}

func newRedisProbe(ctx context.Context, addr, prefix string) (*redisProbe, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("-redis-addr %s: %w", addr, err)
	}
	return &redisProbe{rdb: rdb, prefix: prefix}, nil
}

func (r *redisProbe) usedMemory(ctx context.Context) int64 {
	info, err := r.rdb.InfoMap(ctx, "memory").Result()
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
	return n
}

func (r *redisProbe) before(ctx context.Context) { r.used0 = r.usedMemory(ctx) }

func (r *redisProbe) backlog(ctx context.Context, res *result) {
	used := r.usedMemory(ctx)
	res.Store = append(res.Store, fmt.Sprintf("Redis used_memory when sending ended: +%.1f MiB (%.0f B per webhook acknowledged, dedupe key and queued delivery)",
		float64(used-r.used0)/(1<<20), float64(used-r.used0)/float64(max(res.UniqueAcked, 1))))
}

func (r *redisProbe) after(ctx context.Context, stopRelay func(), res *result) {
	stopRelay()
	used := r.usedMemory(ctx)
	keys := r.rdb.ZCard(ctx, "{"+r.prefix+"}:kx").Val()
	sample := ""
	if ks, _, err := r.rdb.Scan(ctx, 0, "{"+r.prefix+"}:k:*", 100).Result(); err == nil && len(ks) > 0 {
		sample = fmt.Sprintf("; MEMORY USAGE of one dedupe key %d B (%d-byte name)", r.rdb.MemoryUsage(ctx, ks[0]).Val(), len(ks[0]))
	}
	// With history (on by default) the delivered messages stay too, so this is per webhook kept,
	// not per dedupe key alone.
	hist := r.rdb.ZCard(ctx, "{"+r.prefix+"}:h").Val()
	res.Store = append(res.Store, fmt.Sprintf("Redis used_memory after the drain: +%.1f MiB for %d dedupe keys and %d messages of history, %.0f B per dedupe key%s",
		float64(used-r.used0)/(1<<20), keys, hist, float64(used-r.used0)/float64(max(keys, 1)), sample))
}

// cleanup deletes the run's keys, so runs against a shared Redis do not pile up 72 h of keys.
func (r *redisProbe) cleanup(ctx context.Context) {
	defer r.rdb.Close()
	iter := r.rdb.Scan(ctx, 0, "{"+r.prefix+"}:*", 1000).Iterator()
	batch := make([]string, 0, 1000)
	for iter.Next(ctx) {
		if batch = append(batch, iter.Val()); len(batch) == cap(batch) {
			r.rdb.Unlink(ctx, batch...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		r.rdb.Unlink(ctx, batch...)
	}
}
