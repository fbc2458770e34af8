package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// History (docs/DESIGN.md sections 2.4 and 2.5): the history index {p}:h holds every message
// with history on, by arrival; reads are pipelines of plain commands, the sweep one script per
// message so that a redelivery cannot interleave with it.

const (
	defaultMessageLimit = 100
	listBudget          = 10000 // index entries one ListMessages call looks at
	listChunk           = 128
)

// deliveryFields are what history reads of a delivery hash.
var deliveryFields = []string{"target", "attempt", "lease", "status", "error", "dead", "done"}

// loadRecords reads the messages named by ids with their deliveries (and attempts when asked) in
// two pipelines. A message that is gone comes back nil.
func (s *Store) loadRecords(ctx context.Context, ids []string, now time.Time, withAttempts bool) ([]*relay.MessageRecord, error) {
	pipe := s.rdb.Pipeline()
	mcmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		mcmds[i] = pipe.HMGet(ctx, s.messageKey(id), "msg", "dups", "dup_at")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]*relay.MessageRecord, len(ids))
	type dcmd struct {
		rec      *relay.MessageRecord
		id       string
		fields   *redis.SliceCmd
		due      *redis.FloatCmd
		attempts *redis.StringSliceCmd
	}
	var dcmds []dcmd
	pipe = s.rdb.Pipeline()
	for i, id := range ids {
		vals := mcmds[i].Val()
		raw, _ := vals[0].(string)
		if raw == "" {
			continue
		}
		m, err := decodeMessage(raw)
		if err != nil {
			return nil, fmt.Errorf("message %s: %w", id, err)
		}
		rec := &relay.MessageRecord{Message: m, Size: len(m.Body), Deliveries: []*relay.DeliveryRecord{}}
		if rec.Duplicates, err = atoiField(vals[1]); err != nil {
			return nil, fmt.Errorf("message %s: dups: %w", id, err)
		}
		if us, err := atoiField(vals[2]); err != nil {
			return nil, fmt.Errorf("message %s: dup_at: %w", id, err)
		} else if us != 0 {
			rec.LastDuplicateAt = time.UnixMicro(int64(us)).UTC()
		}
		out[i] = rec
		for _, t := range m.Targets {
			did := relay.DeliveryID(id, t)
			c := dcmd{rec: rec, id: did, fields: pipe.HMGet(ctx, s.deliveryKey(did), deliveryFields...),
				due: pipe.ZScore(ctx, s.dueKey(t), did)}
			if withAttempts {
				c.attempts = pipe.LRange(ctx, s.attemptsKey(did), 0, -1)
			}
			dcmds = append(dcmds, c)
		}
	}
	if len(dcmds) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	for _, c := range dcmds {
		d, err := deliveryRecordOf(c.id, c.fields.Val(), c.due, now)
		if err != nil {
			return nil, err
		}
		if d == nil {
			continue // a dead letter dropped with history on
		}
		if c.attempts != nil {
			for _, v := range c.attempts.Val() {
				a, err := decodeAttempt(v)
				if err != nil {
					return nil, fmt.Errorf("attempt of %s: %w", c.id, err)
				}
				d.Attempts = append(d.Attempts, a)
			}
		}
		c.rec.Deliveries = append(c.rec.Deliveries, d)
	}
	return out, nil
}

// deliveryRecordOf builds a delivery's history view from the values of deliveryFields and its
// due score; nil when the delivery hash is gone.
func deliveryRecordOf(id string, vals []any, due *redis.FloatCmd, now time.Time) (*relay.DeliveryRecord, error) {
	str := func(i int) string { s, _ := vals[i].(string); return s }
	if str(0) == "" {
		return nil, nil
	}
	d := &relay.DeliveryRecord{ID: id, Target: str(0), LastError: str(4)}
	var err error
	if d.Attempt, err = atoiField(vals[1]); err != nil {
		return nil, fmt.Errorf("delivery %s: attempt: %w", id, err)
	}
	if d.LastStatus, err = atoiField(vals[3]); err != nil {
		return nil, fmt.Errorf("delivery %s: status: %w", id, err)
	}
	switch {
	case str(5) != "":
		d.State = relay.StateDead
		if d.DeadAt, err = parseDeadKey(str(5)); err != nil {
			return nil, fmt.Errorf("delivery %s: %w", id, err)
		}
	case str(6) != "":
		d.State = relay.StateDelivered
		us, err := strconv.ParseInt(str(6), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("delivery %s: done: %w", id, err)
		}
		d.DeliveredAt = time.UnixMicro(us).UTC()
	default:
		if score, err := due.Result(); err == nil && score == math.Trunc(score) {
			d.DueAt = time.UnixMicro(int64(score)).UTC()
		}
		d.State = relay.LiveState(str(2) != "", d.LastStatus != 0 || d.LastError != "", d.DueAt, now)
	}
	return d, nil
}

// ListMessages lists messages matching f, newest first. The cursor is the index member of the
// last message looked at.
func (s *Store) ListMessages(ctx context.Context, f relay.MessageFilter, now time.Time) ([]*relay.MessageRecord, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultMessageLimit
	}
	index := s.historyKey()
	if f.JobID != "" {
		index = s.jobKey(f.JobID)
	}
	hi, lo := "+", "-"
	if !f.Until.IsZero() {
		hi = "(" + deadKey(ceilMicros(f.Until))
	}
	if f.Cursor != "" && (hi == "+" || "("+f.Cursor < hi) {
		hi = "(" + f.Cursor
	}
	if !f.Since.IsZero() {
		lo = "[" + deadKey(f.Since.UnixMicro())
	}
	var out []*relay.MessageRecord
	for scanned := 0; scanned < listBudget; {
		members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: index, Start: hi, Stop: lo, ByLex: true, Rev: true,
			Count: int64(min(listChunk, listBudget-scanned))}).Result()
		if err != nil {
			return nil, "", fmt.Errorf("redisstore: list messages: %w", err)
		}
		if len(members) == 0 {
			return out, "", nil
		}
		scanned += len(members)
		ids := make([]string, len(members))
		for i, m := range members {
			if len(m) <= 16 {
				return nil, "", fmt.Errorf("redisstore: list messages: bad index member %q", m)
			}
			ids[i] = m[16:]
		}
		recs, err := s.loadRecords(ctx, ids, now, false)
		if err != nil {
			return nil, "", fmt.Errorf("redisstore: list messages: %w", err)
		}
		for i, rec := range recs {
			hi = "(" + members[i]
			if rec == nil || !f.Match(rec) {
				continue
			}
			rec.Body = nil
			out = append(out, rec)
			if len(out) == limit {
				return out, members[i], nil
			}
		}
		if len(members) < listChunk {
			return out, "", nil
		}
	}
	return out, hi[1:], nil
}

// GetMessage returns message id with its deliveries and their attempts.
func (s *Store) GetMessage(ctx context.Context, id string, now time.Time) (*relay.MessageRecord, error) {
	recs, err := s.loadRecords(ctx, []string{id}, now, true)
	if err == nil && recs[0] == nil {
		err = relay.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get message %s: %w", id, err)
	}
	return recs[0], nil
}

// Redeliver queues the delivered and dead deliveries of message id (target's only, when set)
// again, due at now, keeping their IDs and attempt counts. Each delivery is one script.
func (s *Store) Redeliver(ctx context.Context, id, target string, now time.Time) ([]string, error) {
	raw, err := s.rdb.HGet(ctx, s.messageKey(id), "msg").Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, relay.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, err)
	}
	m, err := decodeMessage(raw)
	if err != nil {
		return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, err)
	}
	if target != "" && !slices.Contains(m.Targets, target) {
		return nil, fmt.Errorf("redisstore: redeliver %s: target %q: %w", id, target, relay.ErrNotFound)
	}
	var done []string
	live := false
	for _, t := range m.Targets {
		if target != "" && t != target {
			continue
		}
		did := relay.DeliveryID(id, t)
		n, err := redeliverScript.Run(ctx, s.rdb, []string{s.deliveryKey(did), s.deadSetKey(), s.dueKey(t)},
			did, micros(now)).Int()
		if err != nil {
			return done, fmt.Errorf("redisstore: redeliver %s: %w", did, err)
		}
		switch n {
		case 1:
			done = append(done, did)
		case 0:
			live = true
		}
	}
	if len(done) == 0 {
		if live {
			return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, relay.ErrLive)
		}
		return nil, fmt.Errorf("redisstore: redeliver %s: no delivery left to redeliver: %w", id, relay.ErrNotFound)
	}
	return done, nil
}

// sweepHistory deletes the messages received before cutoff whose deliveries are all delivered,
// walking the history index from the oldest in chunks.
func (s *Store) sweepHistory(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	lo, hi := "-", "("+deadKey(ceilMicros(cutoff))
	for {
		members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.historyKey(), Start: lo, Stop: hi, ByLex: true,
			Count: int64(s.sweepChunk)}).Result()
		if err != nil {
			return total, fmt.Errorf("redisstore: sweep history: %w", err)
		}
		if len(members) == 0 {
			return total, nil
		}
		lo = "(" + members[len(members)-1]
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(members))
		for i, mb := range members {
			cmds[i] = pipe.HGet(ctx, s.messageKey(mb[min(16, len(mb)):]), "msg")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return total, fmt.Errorf("redisstore: sweep history: %w", err)
		}
		for i, mb := range members {
			raw, err := cmds[i].Result()
			if errors.Is(err, redis.Nil) {
				// The message is gone (a dead letter dropped without history): drop the entry.
				if err := s.rdb.ZRem(ctx, s.historyKey(), mb).Err(); err != nil {
					return total, fmt.Errorf("redisstore: sweep history: %w", err)
				}
				continue
			}
			if err != nil {
				return total, fmt.Errorf("redisstore: sweep history: %w", err)
			}
			m, err := decodeMessage(raw)
			if err != nil {
				return total, fmt.Errorf("redisstore: sweep history: message %s: %w", mb[16:], err)
			}
			if !m.ReceivedAt.Before(cutoff) {
				return total, nil
			}
			keys := []string{s.messageKey(m.ID), s.historyKey(), s.historyKey()}
			if m.JobID != "" {
				keys[2] = s.jobKey(m.JobID)
			}
			for _, t := range m.Targets {
				keys = append(keys, s.deliveryKey(relay.DeliveryID(m.ID, t)))
			}
			for _, t := range m.Targets {
				keys = append(keys, s.attemptsKey(relay.DeliveryID(m.ID, t)))
			}
			n, err := sweepMessageScript.Run(ctx, s.rdb, keys, mb, len(m.Targets)).Int()
			if err != nil {
				return total, fmt.Errorf("redisstore: sweep history: message %s: %w", m.ID, err)
			}
			total += n
		}
		if len(members) < s.sweepChunk {
			return total, nil
		}
	}
}
