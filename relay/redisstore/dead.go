package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// defaultDeadLimit is ListDead's page size when the filter sets none.
const defaultDeadLimit = 100

// ListDead lists dead letters matching f, oldest death first, then by ID. f.After must name a
// dead letter that still exists (ErrNotFound otherwise): its position is where the page starts.
// DeadAt has microsecond precision, and Since is compared at that precision.
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
	cursor := f.After
	var out []*relay.Delivery
	// Each run scans a bounded part of the dead set; a selective filter may take several. Runs
	// resume after the last member scanned, which stays a valid bound even if it is gone by then.
	for len(out) < limit {
		res, err := listDeadScript.Run(ctx, s.rdb, []string{s.deadSetKey()},
			s.base, start, f.Route, f.Target, limit-len(out), s.deadBudget, cursor).Slice()
		if err != nil {
			return nil, fmt.Errorf("redisstore: list dead: %w", err)
		}
		if len(res) < 2 || (len(res)-2)%(1+len(deadFields)) != 0 {
			return nil, fmt.Errorf("redisstore: list dead: unexpected reply of %d elements", len(res))
		}
		status, _ := res[0].(int64)
		if status == -1 {
			return nil, fmt.Errorf("redisstore: list dead: cursor %s: %w", f.After, relay.ErrNotFound)
		}
		start, _ = res[1].(string)
		cursor = ""
		for r := res[2:]; len(r) > 0; r = r[1+len(deadFields):] {
			id, _ := r[0].(string)
			d, err := decodeDead(id, r[1:1+len(deadFields)])
			if err != nil {
				return nil, fmt.Errorf("redisstore: list dead: %w", err)
			}
			if d == nil {
				s.log.Warn("redisstore: dead set entry without its dead letter", "id", id)
				continue
			}
			if f.Match(d) { // Since, when a cursor overrode its start position
				out = append(out, d)
			}
		}
		if status == 1 {
			break
		}
	}
	return out, nil
}

// GetDead returns the dead letter id.
func (s *Store) GetDead(ctx context.Context, id string) (*relay.Delivery, error) {
	vals, err := s.rdb.HMGet(ctx, s.deliveryKey(id), deadFields...).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: get dead %s: %w", id, err)
	}
	if mid, _ := vals[6].(string); vals[0] == nil && mid != "" {
		msg, err := s.rdb.HGet(ctx, s.messageKey(mid), "msg").Result()
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
	return s.removeDead(ctx, "replay dead", replayScript, id, []string{s.deliveryKey(id), s.deadSetKey()},
		s.base, id, micros(now))
}

// DropDead deletes the dead letter id.
func (s *Store) DropDead(ctx context.Context, id string) error {
	return s.removeDead(ctx, "drop dead", dropScript, id, []string{s.deliveryKey(id), s.deadSetKey()}, id, s.base)
}

func (s *Store) removeDead(ctx context.Context, op string, sc *redis.Script, id string, keys []string, args ...any) error {
	ok, err := sc.Run(ctx, s.rdb, keys, args...).Int()
	if err != nil {
		return fmt.Errorf("redisstore: %s %s: %w", op, id, err)
	}
	if ok != 1 {
		return fmt.Errorf("redisstore: %s %s: %w", op, id, relay.ErrNotFound)
	}
	return nil
}
