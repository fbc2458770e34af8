// Package redisstore is the relay.Store on Redis (7.0 or later; go-redis v9, so a single server,
// Sentinel or Cluster), shared by any number of relay replicas.
//
// Layout (docs/DESIGN.md section 2.4). Every key starts with "{<prefix>}:", one hash tag, so that
// the keys one script touches are in one Cluster slot:
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
//
// With history (Options.History, history.go) acked deliveries stay with a done field, and:
//
//	{p}:h                ZSET  score 0, member deadKey(received)+message ID: the history, newest
//	                           first with ZRANGE BYLEX REV, oldest first for the sweep
//	{p}:j:<job ID>       ZSET  the same members, for the messages of one job
//	{p}:a:<delivery ID>  LIST  the delivery's attempts, encoded in Go
//	(message hash)             dups, dup_at: duplicates counted on the message
//
// Times are whole microseconds in Redis (doubles are exact to 2^53; nanoseconds are not), except
// the message's ReceivedAt, which the encoded message keeps exactly: due times, dead times and
// dedupe expiries are truncated to the microsecond. Each write is one Lua script (scripts.go), run
// with EVALSHA; concurrent enqueues and settles share pipelines (batch.go).
//
// Durability is Redis' own: run it with AOF (appendfsync everysec may lose the last second or so
// of acknowledged webhooks when the Redis host crashes; always loses none and costs an fsync per
// write), and with maxmemory-policy noeviction, since an evicted delivery is a lost webhook. The shared
// rate limits (ratelimit.go) hash-tag each route on its own: {<prefix>:rl:<route>}:ip and :all.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Options tune the store. The zero value is a good default.
type Options struct {
	// Prefix namespaces the keys: all are "{<Prefix>}:...". No braces; default "hookrelay".
	// Stores that share a prefix share their data (replicas of one relay do).
	Prefix string
	// Logger receives operational events (inconsistent entries dropped). Nil discards them.
	Logger *slog.Logger
	// History is how long messages, settled deliveries and their attempts are kept (history.go).
	// Zero keeps nothing that is settled.
	History time.Duration
}

// Store is a relay.Store on Redis. It is safe for concurrent use, also by several processes.
type Store struct {
	rdb  redis.UniversalClient
	log  *slog.Logger
	base string // "{prefix}:"

	sweepChunk int // dedupe keys one sweep script deletes, so that Redis is never blocked for long
	history    time.Duration
	deadBudget int      // dead set entries one list script scans, for the same reason
	scripts    *batcher // the write scripts of the hot path, pipelined
}

// New returns a store on client, which it owns from now on: Close closes it. New does not
// connect; Ping tells whether Redis is there.
func New(client redis.UniversalClient, opt Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: new: nil client")
	}
	prefix, err := keyPrefix(opt.Prefix)
	if err != nil {
		return nil, fmt.Errorf("redisstore: new: %w", err)
	}
	if opt.History < 0 {
		return nil, fmt.Errorf("redisstore: new: negative History %v", opt.History)
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &Store{rdb: client, log: opt.Logger, base: "{" + prefix + "}:", sweepChunk: 1000, deadBudget: 1000,
		history: opt.History,
		scripts: newBatcher(client)}, nil
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstore: ping: %w", err)
	}
	return nil
}

// Close closes the client. Calls after it fail.
func (s *Store) Close() error {
	s.scripts.close() // writes already submitted finish first
	if err := s.rdb.Close(); err != nil {
		return fmt.Errorf("redisstore: close: %w", err)
	}
	return nil
}

// Key names; see the package comment.
func (s *Store) messageKey(id string) string  { return s.base + "m:" + id }
func (s *Store) deliveryKey(id string) string { return s.base + "d:" + id }
func (s *Store) dueKey(target string) string  { return s.base + "q:" + target }
func (s *Store) dedupeKey(key string) string  { return s.base + "k:" + key }
func (s *Store) dedupeIndexKey() string       { return s.base + "kx" }
func (s *Store) deadSetKey() string           { return s.base + "dead" }
func (s *Store) historyKey() string           { return s.base + "h" }
func (s *Store) jobKey(job string) string     { return s.base + "j:" + job }
func (s *Store) attemptsKey(id string) string { return s.base + "a:" + id }
