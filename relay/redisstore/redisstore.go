// Package redisstore is the relay.Store on Redis (7.0 or later; go-redis v9, so a single server,
// Sentinel or Cluster), shared by any number of relay replicas.
//
// Layout (docs/DESIGN.md section 2.4). The keys are spread over Options.Shards shards, each under
// a hash tag of its own: "{<prefix>}:" with one shard (the layout of earlier releases),
// "{<prefix>:<n>:<k>}:" for shard n of more (shardsOf). The keys one script touches are in one
// shard, so in one Cluster slot. In each shard:
//
//	{p}:m:<message ID>   HASH  msg (the message with its body, encoded once in Go), n (deliveries
//	                           and dead letters still naming it: the last one deletes it)
//	{p}:d:<delivery ID>  HASH  mid (its message), target, route, attempt, lease (while claimed),
//	                           status and error (of the last failure), dead (its time key, while a
//	                           dead letter); records of earlier releases hold msg instead of mid
//	{p}:q:<target>       ZSET  delivery ID scored by due time; a claim moves the entry to the lease
//	                           expiry, so an unsettled lease simply becomes due again
//	{p}:k:<dedupe key>   STRING its logical expiry, with a real PX TTL of the dedupe ttl so that
//	                           Redis forgets it by itself
//	{p}:kx               ZSET  dedupe key scored by logical expiry, walked by Sweep (which the
//	                           relay runs every minute: this index, unlike the keys, needs it)
//	{p}:dead             ZSET  score 0, member deadKey(time)+ID: dead letters by death time then
//	                           ID, pageable with ZRANGE BYLEX
//	{p}:w                STRING a counter that enqueues which changed nothing bump with
//	                           Options.MinReplicas, so that WAIT covers what they found (replicas.go)
//
// With history (Options.History, history.go) acked deliveries stay with a done field, and:
//
//	{p}:h                ZSET  score 0, member deadKey(received)+message ID: the history, newest
//	                           first with ZRANGE BYLEX REV, oldest first for the sweep
//	{p}:j:<job ID>       ZSET  the same members, for the messages of one job
//	{p}:a:<delivery ID>  LIST  the delivery's attempts, encoded in Go
//	(message hash)             dups, dup_at: duplicates counted on the message
//
// A webhook's shard is a hash of its dedupe key, or of its message ID when it has none, so that
// every copy of one job meets the same dedupe key. Its lease tokens name the shard, which is how
// a settle finds it; lookups by ID ask every shard. "{<prefix>}:shards" records the shard count
// the data was written with (layout.go).
//
// Times are whole microseconds in Redis (doubles are exact to 2^53; nanoseconds are not), except
// the message's ReceivedAt, which the encoded message keeps exactly: due times, dead times and
// dedupe expiries are truncated to the microsecond. Each write is one Lua script (scripts.go), run
// with EVALSHA; concurrent enqueues and settles share pipelines (batch.go).
//
// Durability is Redis' own: run it with AOF (appendfsync everysec may lose the last second or so
// of acknowledged webhooks when the Redis host crashes; always loses none and costs an fsync per
// write), and with maxmemory-policy noeviction, since an evicted delivery is a lost webhook.
// Replication is asynchronous unless Options.MinReplicas makes each enqueue wait for replicas
// (docs/SCALING.md). The shared rate limits (ratelimit.go) hash-tag each route on its own:
// {<prefix>:rl:<route>}:ip and :all, apart from the shard tags above.
package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

var _ relay.Store = (*Store)(nil)

// defaultPrefix is the key prefix when Options.Prefix is empty.
const defaultPrefix = "hookrelay"

// keyPrefix applies the default prefix and refuses braces, which would move the hash tag: the rule
// for every key this package writes (store, certificates, shared rate limits).
func keyPrefix(p string) (string, error) {
	switch {
	case p == "":
		return defaultPrefix, nil
	case strings.ContainsAny(p, "{}"):
		return "", fmt.Errorf("prefix %q must not contain braces: the keys have their own hash tag", p)
	}
	return p, nil
}

// MaxShards bounds Options.Shards: each shard costs every claim, listing and lookup one command.
const MaxShards = 1024

// Options tune the store. The zero value is a good default.
type Options struct {
	// Prefix namespaces the keys: all are "{<Prefix>}:..." or "{<Prefix>:<n>:<k>}:...". No braces;
	// default "hookrelay". Stores that share a prefix share their data (replicas of one relay do).
	Prefix string
	// Logger receives operational events (inconsistent entries dropped). Nil discards them.
	Logger *slog.Logger
	// History is how long messages, settled deliveries and their attempts are kept (history.go).
	// Zero keeps nothing that is settled.
	History time.Duration
	// Shards is how many hash tags the keys are spread over (0 means 1, the layout of earlier
	// releases). Every store on one prefix must use the same count (layout.go).
	Shards int
	// MinReplicas makes Enqueue wait until that many replicas have its write (Redis WAIT) and
	// fail with ErrNotReplicated when they do not confirm within ReplicaTimeout (replicas.go).
	MinReplicas int
	// ReplicaTimeout bounds that wait; default 1s.
	ReplicaTimeout time.Duration
}

// WithDefaults returns o with the defaults named on its fields set: New applies it, and the
// configuration layer shows it.
func (o Options) WithDefaults() Options {
	if p, err := keyPrefix(o.Prefix); err == nil { // Check reports the error
		o.Prefix = p
	}
	o.Shards, o.ReplicaTimeout = cmp.Or(o.Shards, 1), cmp.Or(o.ReplicaTimeout, time.Second)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Store is a relay.Store on Redis. It is safe for concurrent use, also by several processes.
type Store struct {
	rdb    redis.UniversalClient
	log    *slog.Logger
	prefix string
	shards []shard

	sweepChunk int // dedupe keys one sweep script deletes, so that Redis is never blocked for long
	history    time.Duration
	deadBudget int      // dead set entries one list script scans, for the same reason
	listChunk  int      // history index entries ListMessages reads from each shard at a time
	scripts    *batcher // the settle scripts of the hot path, pipelined
	enqueues   *batcher // the enqueue scripts: scripts, or one that waits for replicas
	layout     layoutGate
}

// Check validates o as New does. Each problem is a relay.FieldError named as the configuration
// file names the option (prefix, shards, min_replicas, replica_timeout, history), so that the
// configuration layer reports New's own rules under its key paths.
func (o Options) Check() error { return errors.Join(o.check()...) }

func (o Options) check() []error {
	var errs []error
	if _, err := keyPrefix(o.Prefix); err != nil {
		errs = append(errs, relay.FieldErrorf("prefix", "%q must not contain braces: the keys have their own hash tag", o.Prefix))
	}
	if o.Shards < 0 || o.Shards > MaxShards {
		errs = append(errs, relay.FieldErrorf("shards", "must be within 1..%d, got %d (1 keeps the layout of earlier releases)", MaxShards, o.Shards))
	}
	if o.MinReplicas < 0 {
		errs = append(errs, relay.FieldErrorf("min_replicas", "must be 0 (do not wait for replicas) or more, got %d", o.MinReplicas))
	}
	if o.ReplicaTimeout < 0 {
		errs = append(errs, relay.FieldErrorf("replica_timeout", "must not be negative, got %v", o.ReplicaTimeout))
	}
	if o.History < 0 {
		errs = append(errs, relay.FieldErrorf("history", "must not be negative, got %v", o.History))
	}
	return errs
}

// New returns a store on client, which it owns from now on: Close closes it. New does not
// connect; Ping tells whether Redis is there. With MinReplicas it hooks into client, so that must
// be a *redis.Client (one server or Sentinel) or a *redis.ClusterClient not used before.
func New(client redis.UniversalClient, opt Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: new: nil client")
	}
	if err := opt.Check(); err != nil {
		return nil, fmt.Errorf("redisstore: new: %w", err)
	}
	opt = opt.WithDefaults()
	prefix := opt.Prefix
	if cc, ok := client.(*redis.ClusterClient); ok {
		cc.AddHook(clusterPipes{cc})
	}
	s := &Store{rdb: client, log: opt.Logger, prefix: prefix, shards: shardsOf(prefix, opt.Shards),
		sweepChunk: 1000, deadBudget: 1000, listChunk: 128, history: opt.History, scripts: newBatcher(client, nil)}
	s.enqueues = s.scripts
	if opt.MinReplicas > 0 {
		w := &waitSpec{replicas: opt.MinReplicas, timeout: opt.ReplicaTimeout}
		if err := hookWait(client); err != nil {
			s.scripts.close()
			return nil, fmt.Errorf("redisstore: new: MinReplicas: %w", err)
		}
		s.enqueues = newBatcher(client, w)
	}
	return s, nil
}

// WriteStats reports the pipelines of the hot path's scripts (enqueues, acks, retries, burials)
// that Redis answered, and the runs they carried; claims and the admin API's writes go on their
// own and are not counted.
func (s *Store) WriteStats() relay.WriteStats {
	var w relay.WriteStats
	s.scripts.stats(&w)
	if s.enqueues != s.scripts {
		s.enqueues.stats(&w)
	}
	return w
}

// Ping checks that Redis answers and holds no data of another shard count (layout.go).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstore: ping: %w", err)
	}
	return s.CheckLayout(ctx)
}

// Close closes the client. Calls after it fail.
func (s *Store) Close() error {
	s.scripts.close() // writes already submitted finish first
	if s.enqueues != s.scripts {
		s.enqueues.close()
	}
	if err := s.rdb.Close(); err != nil {
		return fmt.Errorf("redisstore: close: %w", err)
	}
	return nil
}

// shard is one shard's key base, "{prefix}:" or "{prefix:n}:"; its methods name its keys (see
// the package comment).
type shard string

// shardsOf names the shards. With several, shard i's hash tag is the first "<prefix>:<i>:<k>"
// (k = 0, 1, ...) whose Cluster slot is in the i-th n-th of the slots, so that the shards spread
// evenly over primaries that serve even slot ranges (as redis-cli --cluster create assigns them).
func shardsOf(prefix string, n int) []shard {
	if n == 1 {
		return []shard{shard("{" + prefix + "}:")}
	}
	out := make([]shard, n)
	for i := range out {
		for k := 0; ; k++ {
			tag := prefix + ":" + strconv.Itoa(i) + ":" + strconv.Itoa(k)
			if slotOf(tag)*n/clusterSlots == i {
				out[i] = shard("{" + tag + "}:")
				break
			}
		}
	}
	return out
}

// clusterSlots is how many slots Redis Cluster has.
const clusterSlots = 16384

// slotOf is the Cluster slot of a hash tag: CRC16 (XMODEM) modulo 16384, as Redis computes it.
func slotOf(tag string) int {
	var crc uint16
	for i := range len(tag) {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}

func (b shard) message(id string) string  { return string(b) + "m:" + id }
func (b shard) delivery(id string) string { return string(b) + "d:" + id }
func (b shard) due(target string) string  { return string(b) + "q:" + target }
func (b shard) dedupe(key string) string  { return string(b) + "k:" + key }
func (b shard) dedupeIndex() string       { return string(b) + "kx" }
func (b shard) deadSet() string           { return string(b) + "dead" }
func (b shard) history() string           { return string(b) + "h" }
func (b shard) job(job string) string     { return string(b) + "j:" + job }
func (b shard) attempts(id string) string { return string(b) + "a:" + id }
func (b shard) written() string           { return string(b) + "w" }

// shardFor picks the shard of a webhook from its dedupe key, or its message ID without one:
// FNV-1a, fixed, since every replica must pick the same one.
func (s *Store) shardFor(key string) int {
	h := uint32(2166136261)
	for i := range len(key) {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return int(h % uint32(len(s.shards)))
}

// leaseToken is a lease naming its shard when there are several: "<n>:<token>".
func (s *Store) leaseToken(n int, token string) string {
	if len(s.shards) == 1 {
		return token
	}
	return strconv.Itoa(n) + ":" + token
}

// leaseShard is the shard a lease token names; false for a token no claim of this store made.
func (s *Store) leaseShard(lease string) (shard, bool) {
	if len(s.shards) == 1 {
		return s.shards[0], true
	}
	n, _, ok := strings.Cut(lease, ":")
	i, err := strconv.Atoi(n)
	if !ok || err != nil || i < 0 || i >= len(s.shards) || strconv.Itoa(i) != n {
		return "", false
	}
	return s.shards[i], true
}
