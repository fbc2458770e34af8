package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// defaultDeadLimit is ListDead's page size when the filter sets none.
const defaultDeadLimit = 100

// ListDead lists dead letters matching f, oldest death first, then by ID, across the shards.
// f.After must name a dead letter that still exists (ErrNotFound otherwise): its position is
// where the page starts. DeadAt has microsecond precision, and Since is compared at that
// precision.
func (s *Store) ListDead(ctx context.Context, f relay.DeadFilter) ([]*relay.Delivery, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultDeadLimit
	}
	start := "-"
	if !f.Since.IsZero() {
		// Every member at or after the first microsecond that is not before Since.
		start = "[" + deadKey(ceilMicros(f.Since))
	}
	if f.After != "" {
		_, _, vals, err := s.findDelivery(ctx, f.After, "dead")
		if err != nil {
			return nil, fmt.Errorf("redisstore: list dead: cursor %s: %w", f.After, err)
		}
		dead, _ := vals[0].(string)
		if dead == "" {
			return nil, fmt.Errorf("redisstore: list dead: cursor %s: %w", f.After, relay.ErrNotFound)
		}
		start = "(" + dead + f.After
	}
	var out []*relay.Delivery
	// Each run scans a bounded part of each shard's dead set; a selective filter may take several.
	// A shard that stopped early covers its set up to where it stopped (its bound): what the
	// shards found up to the lowest such bound is complete and goes out in order, and the next
	// runs resume from there, which stays a valid bound even if that member is gone by then.
	for len(out) < limit {
		runs := make([]scriptCall, len(s.shards))
		for i, sh := range s.shards {
			runs[i] = scriptCall{script: listDeadScript, keys: []string{sh.deadSet()},
				args: []any{string(sh), start, f.Route, f.Target, limit - len(out), s.deadBudget}}
		}
		type letter struct {
			member string
			d      *relay.Delivery
		}
		var found []letter
		horizon, ended := "", true
		for _, c := range evalAll(ctx, s.rdb, runs) {
			res, err := c.Slice()
			if err != nil {
				return nil, fmt.Errorf("redisstore: list dead: %w", err)
			}
			if len(res) < 2 || (len(res)-2)%(1+len(deadFields)) != 0 {
				return nil, fmt.Errorf("redisstore: list dead: unexpected reply of %d elements", len(res))
			}
			if status, _ := res[0].(int64); status == 0 {
				bound, _ := res[1].(string)
				if ended || bound[1:] < horizon {
					horizon = bound[1:]
				}
				ended = false
			}
			for r := res[2:]; len(r) > 0; r = r[1+len(deadFields):] {
				id, _ := r[0].(string)
				dead, _ := r[6].(string)
				d, err := decodeDead(id, r[1:1+len(deadFields)])
				if err != nil {
					return nil, fmt.Errorf("redisstore: list dead: %w", err)
				}
				found = append(found, letter{dead + id, d})
			}
		}
		slices.SortFunc(found, func(a, b letter) int { return strings.Compare(a.member, b.member) })
		for _, l := range found {
			if (!ended && l.member > horizon) || len(out) == limit {
				break
			}
			if l.d == nil {
				s.log.Warn("redisstore: dead set entry without its dead letter", "id", l.member[min(16, len(l.member)):])
			} else if f.Match(l.d) { // Since, when a cursor overrode its start position
				out = append(out, l.d)
			}
		}
		if ended {
			break
		}
		start = "(" + horizon
	}
	return out, nil
}

// findDelivery reads fields of delivery id from whichever shard holds it (one pipeline when
// there are several), and returns the shard, the delivery's target and the values; ErrNotFound
// when none does.
func (s *Store) findDelivery(ctx context.Context, id string, fields ...string) (shard, string, []any, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(s.shards))
	for i, sh := range s.shards {
		cmds[i] = pipe.HMGet(ctx, sh.delivery(id), append([]string{"target"}, fields...)...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return "", "", nil, err
	}
	for i, c := range cmds {
		if vals := c.Val(); vals[0] != nil {
			target, _ := vals[0].(string)
			return s.shards[i], target, vals[1:], nil
		}
	}
	return "", "", nil, relay.ErrNotFound
}

// GetDead returns the dead letter id.
func (s *Store) GetDead(ctx context.Context, id string) (*relay.Delivery, error) {
	sh, _, vals, err := s.findDelivery(ctx, id, deadFields...)
	if errors.Is(err, relay.ErrNotFound) {
		return nil, fmt.Errorf("redisstore: get dead %s: %w", id, relay.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get dead %s: %w", id, err)
	}
	if mid, _ := vals[6].(string); vals[0] == nil && mid != "" {
		msg, err := s.rdb.HGet(ctx, sh.message(mid), "msg").Result()
		if err != nil && err != redis.Nil {
			return nil, fmt.Errorf("redisstore: get dead %s: %w", id, err)
		}
		vals[0] = msg
	}
	d, err := decodeDead(id, vals)
	if err != nil {
		return nil, fmt.Errorf("redisstore: get dead %s: %w", id, err)
	}
	if d == nil {
		return nil, fmt.Errorf("redisstore: get dead %s: %w", id, relay.ErrNotFound)
	}
	return d, nil
}

// decodeDead builds a dead letter from the values of deadFields; nil (and no error) when the
// delivery is absent or not dead. Absent values may be nil (HMGET) or "" (the list script).
func decodeDead(id string, vals []any) (*relay.Delivery, error) {
	str := func(i int) string { s, _ := vals[i].(string); return s }
	if len(vals) != len(deadFields) || str(5) == "" || str(0) == "" {
		return nil, nil
	}
	d := &relay.Delivery{ID: id, Target: str(1), LastError: str(4)}
	var err error
	if d.Message, err = decodeMessage(str(0)); err != nil {
		return nil, fmt.Errorf("dead letter %s: %w", id, err)
	}
	if d.Attempt, err = atoiField(vals[2]); err != nil {
		return nil, fmt.Errorf("dead letter %s: attempt: %w", id, err)
	}
	if d.LastStatus, err = atoiField(vals[3]); err != nil {
		return nil, fmt.Errorf("dead letter %s: status: %w", id, err)
	}
	if d.DeadAt, err = parseDeadKey(str(5)); err != nil {
		return nil, fmt.Errorf("dead letter %s: %w", id, err)
	}
	return d, nil
}

// ReplayDead queues the dead letter id again, due at now, as if never attempted. It keeps the
// last failure for the operator's eyes.
func (s *Store) ReplayDead(ctx context.Context, id string, now time.Time) error {
	sh, target, _, err := s.findDelivery(ctx, id)
	if err == nil {
		err = s.removeDead(ctx, replayScript, []string{sh.delivery(id), sh.deadSet(), sh.due(target)}, id, micros(now), target)
	}
	if err != nil {
		return fmt.Errorf("redisstore: replay dead %s: %w", id, err)
	}
	return nil
}

// DropDead deletes the dead letter id and its attempts. With history its message stays until
// Sweep.
func (s *Store) DropDead(ctx context.Context, id string) error {
	history := ""
	if s.history > 0 {
		history = "1"
	}
	sh, _, vals, err := s.findDelivery(ctx, id, "mid")
	if err == nil {
		message := sh.delivery(id)
		if mid, _ := vals[0].(string); mid != "" {
			message = sh.message(mid)
		}
		err = s.removeDead(ctx, dropScript, []string{sh.delivery(id), sh.deadSet(), sh.attempts(id), message}, id, history)
	}
	if err != nil {
		return fmt.Errorf("redisstore: drop dead %s: %w", id, err)
	}
	return nil
}

func (s *Store) removeDead(ctx context.Context, sc *redis.Script, keys []string, args ...any) error {
	ok, err := sc.Run(ctx, s.rdb, keys, args...).Int()
	if err != nil {
		return err
	}
	if ok != 1 {
		return relay.ErrNotFound
	}
	return nil
}

// CountDead counts the dead letters.
func (s *Store) CountDead(ctx context.Context) (int, error) {
	n, err := s.sum(ctx, func(sh shard, _ string) string { return sh.deadSet() }, "")
	if err != nil {
		return 0, fmt.Errorf("redisstore: count dead: %w", err)
	}
	return n, nil
}
