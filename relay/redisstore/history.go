package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// History (docs/DESIGN.md sections 2.4 and 2.5): each shard's history index {p}:h holds its
// messages with history on, by arrival; listings merge the shards' indexes, reads are pipelines of
// plain commands, the sweep one script per message so that a redelivery cannot interleave with it.

const (
	defaultMessageLimit = 100
	listBudget          = 10000 // index entries one ListMessages call looks at
)

// deliveryFields are what history reads of a delivery hash.
var deliveryFields = []string{"target", "attempt", "lease", "status", "error", "dead", "done"}

// msgRef names a message in its shard.
type msgRef struct {
	sh shard
	id string
}

// loadRecords reads the messages refs name with their deliveries (and attempts when asked) in
// two pipelines. A message that is gone comes back nil.
func (s *Store) loadRecords(ctx context.Context, refs []msgRef, now time.Time, withAttempts bool) ([]*relay.MessageRecord, error) {
	pipe := s.rdb.Pipeline()
	mcmds := make([]*redis.SliceCmd, len(refs))
	for i, r := range refs {
		mcmds[i] = pipe.HMGet(ctx, r.sh.message(r.id), "msg", "dups", "dup_at")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]*relay.MessageRecord, len(refs))
	type dcmd struct {
		rec      *relay.MessageRecord
		id       string
		fields   *redis.SliceCmd
		due      *redis.FloatCmd
		attempts *redis.StringSliceCmd
	}
	var dcmds []dcmd
	pipe = s.rdb.Pipeline()
	for i, r := range refs {
		id := r.id
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
			c := dcmd{rec: rec, id: did, fields: pipe.HMGet(ctx, r.sh.delivery(did), deliveryFields...),
				due: pipe.ZScore(ctx, r.sh.due(t), did)}
			if withAttempts {
				c.attempts = pipe.LRange(ctx, r.sh.attempts(did), 0, -1)
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

// ListMessages lists messages matching f, newest first, merging the shards' indexes. The cursor
// is the index member of the last message looked at; members sort alike in every shard.
func (s *Store) ListMessages(ctx context.Context, f relay.MessageFilter, now time.Time) ([]*relay.MessageRecord, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultMessageLimit
	}
	index := shard.history
	if f.JobID != "" {
		index = func(sh shard) string { return sh.job(f.JobID) }
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
	type entry struct {
		member string
		ref    msgRef
	}
	var out []*relay.MessageRecord
	for scanned := 0; scanned < listBudget; {
		count := min(s.listChunk, listBudget-scanned)
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.StringSliceCmd, len(s.shards))
		for i, sh := range s.shards {
			cmds[i] = pipe.ZRangeArgs(ctx, redis.ZRangeArgs{Key: index(sh), Start: hi, Stop: lo, ByLex: true, Rev: true,
				Count: int64(count)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, "", fmt.Errorf("redisstore: list messages: %w", err)
		}
		// A shard that filled its chunk may have more below its last member: the merged list is
		// complete down to the highest such member.
		var entries []entry
		horizon, more := "", false
		for i, c := range cmds {
			members := c.Val()
			for _, m := range members {
				if len(m) <= 16 {
					return nil, "", fmt.Errorf("redisstore: list messages: bad index member %q", m)
				}
				entries = append(entries, entry{m, msgRef{s.shards[i], m[16:]}})
			}
			if len(members) == count {
				more, horizon = true, max(horizon, members[len(members)-1])
			}
		}
		slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(b.member, a.member) })
		if cut := slices.IndexFunc(entries, func(e entry) bool { return e.member < horizon }); more && cut >= 0 {
			entries = entries[:cut]
		}
		if len(entries) == 0 {
			return out, "", nil
		}
		scanned += len(entries)
		refs := make([]msgRef, len(entries))
		for i, e := range entries {
			refs[i] = e.ref
		}
		recs, err := s.loadRecords(ctx, refs, now, false)
		if err != nil {
			return nil, "", fmt.Errorf("redisstore: list messages: %w", err)
		}
		for i, rec := range recs {
			hi = "(" + entries[i].member
			if rec == nil || !f.Match(rec) {
				continue
			}
			rec.Body = nil
			out = append(out, rec)
			if len(out) == limit {
				return out, entries[i].member, nil
			}
		}
		if !more {
			return out, "", nil
		}
	}
	return out, hi[1:], nil
}

// GetMessage returns message id with its deliveries and their attempts.
func (s *Store) GetMessage(ctx context.Context, id string, now time.Time) (*relay.MessageRecord, error) {
	refs := make([]msgRef, len(s.shards)) // it is in one of them
	for i, sh := range s.shards {
		refs[i] = msgRef{sh, id}
	}
	recs, err := s.loadRecords(ctx, refs, now, true)
	if err != nil {
		return nil, fmt.Errorf("redisstore: get message %s: %w", id, err)
	}
	for _, rec := range recs {
		if rec != nil {
			return rec, nil
		}
	}
	return nil, fmt.Errorf("redisstore: get message %s: %w", id, relay.ErrNotFound)
}

// Redeliver queues the delivered and dead deliveries of message id (target's only, when set)
// again, due at now, keeping their IDs and attempt counts. Each delivery is one script.
func (s *Store) Redeliver(ctx context.Context, id, target string, now time.Time) ([]string, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(s.shards))
	for i, sh := range s.shards {
		cmds[i] = pipe.HGet(ctx, sh.message(id), "msg")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, err)
	}
	i := slices.IndexFunc(cmds, func(c *redis.StringCmd) bool { return c.Err() == nil })
	if i < 0 {
		return nil, fmt.Errorf("redisstore: redeliver %s: %w", id, relay.ErrNotFound)
	}
	sh := s.shards[i]
	m, err := decodeMessage(cmds[i].Val())
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
		n, err := redeliverScript.Run(ctx, s.rdb, []string{sh.delivery(did), sh.deadSet(), sh.due(t)},
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
func (s *Store) sweepHistory(ctx context.Context, sh shard, cutoff time.Time) (int, error) {
	total := 0
	lo, hi := "-", "("+deadKey(ceilMicros(cutoff))
	for {
		members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: sh.history(), Start: lo, Stop: hi, ByLex: true,
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
			cmds[i] = pipe.HGet(ctx, sh.message(mb[min(16, len(mb)):]), "msg")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return total, fmt.Errorf("redisstore: sweep history: %w", err)
		}
		for i, mb := range members {
			raw, err := cmds[i].Result()
			if errors.Is(err, redis.Nil) {
				// The message is gone (a dead letter dropped without history): drop the entry.
				if err := s.rdb.ZRem(ctx, sh.history(), mb).Err(); err != nil {
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
			keys := []string{sh.message(m.ID), sh.history(), sh.history()}
			if m.JobID != "" {
				keys[2] = sh.job(m.JobID)
			}
			for _, t := range m.Targets {
				keys = append(keys, sh.delivery(relay.DeliveryID(m.ID, t)))
			}
			for _, t := range m.Targets {
				keys = append(keys, sh.attempts(relay.DeliveryID(m.ID, t)))
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
