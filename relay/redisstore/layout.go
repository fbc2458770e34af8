package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// The shard count is part of the layout: a webhook's keys live in the shard its dedupe key hashes
// to, so stores on one prefix with different counts would miss each other's dedupe keys and
// queues. "{<prefix>}:shards" holds the count the data was written with (none: one shard, as
// releases before shards wrote). A store that finds another count refuses to work while that
// layout holds live deliveries or dead letters; once it holds none (drained), the store takes
// the prefix over, leaving that layout's dedupe keys and history behind (docs/SCALING.md).

// ErrShardCount: the prefix holds live deliveries or dead letters of another shard count.
var ErrShardCount = errors.New("the store holds deliveries written with another shard count")

// layoutGate remembers that the check passed, so that the hot path pays one atomic load.
type layoutGate struct {
	ok atomic.Bool
	mu sync.Mutex
}

func (g *layoutGate) recheck() { g.ok.Store(false) }

// CheckLayout makes sure the prefix holds no live data of another shard count, and records this
// store's count. It asks Redis until it passed once (Sweep has it ask again); Enqueue, Claim
// and Ping call it first.
func (s *Store) CheckLayout(ctx context.Context) error {
	if s.layout.ok.Load() {
		return nil
	}
	s.layout.mu.Lock()
	defer s.layout.mu.Unlock()
	if s.layout.ok.Load() {
		return nil
	}
	if err := s.checkLayout(ctx); err != nil {
		return err
	}
	s.layout.ok.Store(true)
	return nil
}

// setLayoutScript sets KEYS[1] to ARGV[2] if it still holds ARGV[1] ("": absent).
var setLayoutScript = redis.NewScript(`
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

func (s *Store) checkLayout(ctx context.Context) error {
	key := "{" + s.prefix + "}:shards"
	want := strconv.Itoa(len(s.shards))
	for range 3 { // another store may set it in between
		was, err := s.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			was, err = "", nil
		}
		if err != nil {
			return fmt.Errorf("redisstore: shard count: %w", err)
		}
		if was == want {
			return nil
		}
		old := 1
		if was != "" {
			if old, err = strconv.Atoi(was); err != nil || old < 1 || old > MaxShards {
				return fmt.Errorf("redisstore: %s holds %q, not a shard count", key, was)
			}
		}
		if old != len(s.shards) {
			found, err := s.liveKey(ctx, old)
			if err != nil {
				return fmt.Errorf("redisstore: shard count: %w", err)
			}
			if found != "" {
				return fmt.Errorf("redisstore: prefix %q: %w (%d, this store has %d; %s is one): drain it first, "+
					"see docs/SCALING.md, \"Changing the shard count\"", s.prefix, ErrShardCount, old, len(s.shards), found)
			}
			s.log.Warn("redisstore: taking over a drained prefix written with another shard count: its dedupe keys and history stay behind",
				"prefix", s.prefix, "shards_before", old, "shards", len(s.shards))
		}
		set, err := setLayoutScript.Run(ctx, s.rdb, []string{key}, was, want).Int()
		if err != nil {
			return fmt.Errorf("redisstore: shard count: %w", err)
		}
		if set == 1 {
			return nil
		}
	}
	return fmt.Errorf("redisstore: shard count: %s keeps changing", key)
}

// liveKey returns a due set or dead set of the layout with count shards, "" when there is none.
// It scans every primary's keys: a rare, one-off cost of changing the shard count.
func (s *Store) liveKey(ctx context.Context, count int) (string, error) {
	tags := map[string]bool{}
	for _, sh := range shardsOf(s.prefix, count) {
		tags[string(sh)] = true
	}
	pattern := "{" + globEscaper.Replace(s.prefix) + "*}:*"
	var mu sync.Mutex
	found := ""
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			tag, rest, _ := strings.Cut(k, "}:")
			if tags[tag+"}:"] && (strings.HasPrefix(rest, "q:") || rest == "dead") {
				mu.Lock()
				found = k
				mu.Unlock()
				return nil
			}
		}
		return iter.Err()
	}
	var err error
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		err = fmt.Errorf("cannot scan the keys of a %T", s.rdb)
	}
	return found, err
}

// globEscaper quotes what Redis' glob patterns treat specially.
var globEscaper = strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`)
