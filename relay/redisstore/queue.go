package redisstore

import (
	"cmp"
	"context"
	"crypto/rand"
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

// Enqueue claims dedupeKey and stores the message and one delivery per target in one script.
// The key is claimed at m.ReceivedAt and held until m.ReceivedAt+ttl; a key whose time has passed
// counts as absent even before Sweep removes it. Enqueuing the same message twice (a retry after a
// lost reply) reports it stored, not a duplicate; another message with a stored ID is an error.
func (s *Store) Enqueue(ctx context.Context, m *relay.Message, dedupeKey string, ttl time.Duration) (bool, error) {
	dup, _, err := s.EnqueueLeased(ctx, m, dedupeKey, ttl, 0, nil)
	return dup, err
}

// EnqueueLeased is Enqueue that stores the deliveries to the leased targets claimed by the caller
// at m.ReceivedAt, and returns them. Another replica takes them over when the lease expires. With
// MinReplicas, an enqueue the replicas did not confirm fails with ErrNotReplicated but still
// returns the deliveries it stored, for the caller to deliver (at least once).
func (s *Store) EnqueueLeased(ctx context.Context, m *relay.Message, dedupeKey string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	if err := relay.ValidateEnqueue(m, dedupeKey, ttl, lease, leased); err != nil {
		return false, nil, fmt.Errorf("redisstore: enqueue: %w", err)
	}
	if err := s.CheckLayout(ctx); err != nil {
		return false, nil, err
	}
	n := len(m.Targets)
	on := s.shardFor(cmp.Or(dedupeKey, m.ID))
	sh := s.shards[on]
	var expires string
	var px int64
	if dedupeKey != "" {
		expires, px = micros(m.ReceivedAt.Add(ttl)), pxMillis(ttl)
	}
	member, job, sync := "", sh.history(), ""
	if s.history > 0 {
		member = historyMember(m.ReceivedAt, m.ID)
	}
	if m.JobID != "" {
		job = sh.job(m.JobID)
	}
	if s.enqueues.wait != nil {
		sync = "1"
	}
	keys := make([]string, 0, 6+2*n)
	keys = append(keys, sh.dedupeIndex(), sh.message(m.ID), sh.history(), job, sh.written(), sh.dedupeIndex())
	if dedupeKey != "" {
		keys[5] = sh.dedupe(dedupeKey)
	}
	args := make([]any, 0, 12+3*n)
	args = append(args, micros(m.ReceivedAt), expires, px, dedupeKey, encodeMessage(m), m.Route, m.ID,
		micros(m.ReceivedAt.Add(lease)), string(sh), member, m.JobID, sync)
	for _, t := range m.Targets {
		keys = append(keys, sh.delivery(relay.DeliveryID(m.ID, t)))
	}
	for _, t := range m.Targets {
		keys = append(keys, sh.due(t))
		args = append(args, t)
	}
	for _, t := range m.Targets {
		args = append(args, relay.DeliveryID(m.ID, t))
	}
	var claimed []*relay.Delivery
	base := ""
	for i, t := range m.Targets {
		token := ""
		if slices.Contains(leased, t) {
			if base == "" {
				base = s.leaseToken(on, rand.Text())
			}
			token = base + "." + strconv.Itoa(i)
			claimed = append(claimed, &relay.Delivery{ID: relay.DeliveryID(m.ID, t), Target: t, Message: *m,
				Attempt: 1, Lease: token, DueAt: m.ReceivedAt.Add(lease)})
		}
		args = append(args, token)
	}
	dup, err := s.enqueues.run(ctx, enqueueScript, keys, args)
	if err != nil {
		if errors.Is(err, ErrNotReplicated) && dup == 0 {
			return false, claimed, fmt.Errorf("redisstore: enqueue %s: %w", m.ID, err)
		}
		return dup == 1, nil, fmt.Errorf("redisstore: enqueue %s: %w", m.ID, err)
	}
	if dup == 1 {
		return true, nil, nil
	}
	return false, claimed, nil
}

// Sweep deletes the dedupe keys expired at now, a chunk per script so that ingress never waits
// long behind it. Redis forgets them by their TTL anyway; Sweep keeps the expiry indexes small.
// With history it then deletes the messages past retention (sweepHistory). It also checks again
// that no store of another shard count took the prefix over (layout.go).
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	s.layout.recheck()
	if err := s.CheckLayout(ctx); err != nil {
		return 0, err
	}
	total := 0
	for _, sh := range s.shards {
		n, err := s.sweepKeys(ctx, sh, now)
		total += n
		if err != nil {
			return total, err
		}
		if s.history > 0 {
			n, err := s.sweepHistory(ctx, sh, now.Add(-s.history))
			total += n
			if err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

func (s *Store) sweepKeys(ctx context.Context, sh shard, now time.Time) (int, error) {
	total := 0
	for {
		n, err := sweepScript.Run(ctx, s.rdb, []string{sh.dedupeIndex()}, string(sh), micros(now), s.sweepChunk).Int()
		if err != nil {
			return total, fmt.Errorf("redisstore: sweep: %w", err)
		}
		total += n
		if n < s.sweepChunk {
			return total, nil
		}
	}
}

// dueRef is a due entry of a target found on a shard.
type dueRef struct {
	on    int
	id    string
	score float64
}

// maxClaimRounds bounds how often Claim looks again after other claims took what it had found.
const maxClaimRounds = 4

// Claim leases up to max deliveries of target due at now, oldest due first (ties by ID) across
// the shards. The returned deliveries carry the lease expiry as DueAt. A shard that fails (its
// Cluster node down, its slot moving) is left out for the rest of the call, so that it does not
// hold up the others; Claim fails only when no shard answered.
func (s *Store) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]*relay.Delivery, error) {
	if target == "" || lease <= 0 || max <= 0 {
		return nil, fmt.Errorf("redisstore: claim %q: bad arguments (lease %v, max %d)", target, lease, max)
	}
	if err := s.CheckLayout(ctx); err != nil {
		return nil, err
	}
	var out []*relay.Delivery
	failed := map[int]error{}
	for range maxClaimRounds {
		want := max - len(out)
		due := s.peekDue(ctx, target, now, want, failed)
		if len(due) == 0 {
			break
		}
		got := s.claimDue(ctx, target, now, lease, due, failed)
		out = append(out, got...)
		if len(out) == max || len(got) == len(due) || (len(due) < want && !slices.ContainsFunc(due,
			func(d dueRef) bool { return failed[d.on] != nil })) {
			break // full; or nobody took anything meanwhile and no shard failed; or nothing more was due
		}
	}
	if len(failed) > 0 {
		var first error
		for on, err := range failed {
			first = cmp.Or(first, fmt.Errorf("shard %d: %w", on, err))
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("redisstore: claim %q: %w", target, first)
		}
		s.log.Warn("redisstore: claim: shards left out", "target", target, "shards", len(failed), "error", first)
	}
	return out, nil
}

// peekDue reads the first want due entries of every shard not failed yet and returns the oldest
// want of them. A shard that cannot answer joins failed.
func (s *Store) peekDue(ctx context.Context, target string, now time.Time, want int, failed map[int]error) []dueRef {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(s.shards))
	for i, sh := range s.shards {
		if failed[i] == nil {
			cmds[i] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: sh.due(target), Start: "-inf", Stop: micros(now),
				ByScore: true, Count: int64(want)})
		}
	}
	if pipe.Len() == 0 {
		return nil
	}
	_, _ = pipe.Exec(ctx) // each command carries its own result or error
	var due []dueRef
	for i, c := range cmds {
		if c == nil {
			continue
		}
		if c.Err() != nil {
			failed[i] = c.Err()
			continue
		}
		for _, z := range c.Val() {
			id, _ := z.Member.(string)
			due = append(due, dueRef{on: i, id: id, score: z.Score})
		}
	}
	slices.SortFunc(due, func(a, b dueRef) int { return cmp.Or(cmp.Compare(a.score, b.score), strings.Compare(a.id, b.id)) })
	return due[:min(len(due), want)]
}

// claimDue runs the claim script on each shard with due entries, in one pipeline. A shard whose
// script fails joins failed.
func (s *Store) claimDue(ctx context.Context, target string, now time.Time, lease time.Duration, due []dueRef,
	failed map[int]error) []*relay.Delivery {
	expires := now.Add(lease)
	var runs []scriptCall
	var shardOf []int
	for on, sh := range s.shards {
		var ds, ms []string
		var args []any
		for _, d := range due {
			if d.on == on {
				ds = append(ds, sh.delivery(d.id))
				ms = append(ms, sh.message(strings.TrimSuffix(d.id, "."+target)))
				args = append(args, d.id)
			}
		}
		if len(ds) > 0 {
			args = append([]any{micros(now), micros(expires), s.leaseToken(on, rand.Text())}, args...)
			runs = append(runs, scriptCall{script: claimScript, keys: slices.Concat([]string{sh.due(target)}, ds, ms), args: args})
			shardOf = append(shardOf, on)
		}
	}
	var out []*relay.Delivery
	for i, c := range evalAll(ctx, s.rdb, runs) {
		got, err := s.claimed(target, expires, c)
		out = append(out, got...)
		if err != nil {
			failed[shardOf[i]] = err
		}
	}
	order := make(map[string]int, len(due))
	for i, d := range due {
		order[d.id] = i
	}
	slices.SortFunc(out, func(a, b *relay.Delivery) int { return cmp.Compare(order[a.ID], order[b.ID]) })
	return out
}

// claimed decodes a claim script's reply.
func (s *Store) claimed(target string, expires time.Time, c *redis.Cmd) ([]*relay.Delivery, error) {
	res, err := c.Slice()
	if err != nil {
		return nil, err
	}
	const fields = 7
	if len(res) == 0 || (len(res)-1)%fields != 0 {
		return nil, fmt.Errorf("unexpected reply of %d elements", len(res))
	}
	if orphans, _ := res[0].(int64); orphans > 0 {
		s.log.Warn("redisstore: dropped due entries without a delivery", "target", target, "entries", orphans)
	}
	out := make([]*relay.Delivery, 0, (len(res)-1)/fields)
	for r := res[1:]; len(r) > 0; r = r[fields:] {
		d := &relay.Delivery{Target: target, DueAt: expires}
		d.ID, _ = r[0].(string)
		attempt, _ := r[1].(int64)
		d.Attempt = int(attempt)
		d.Lease, _ = r[2].(string)
		msg, _ := r[3].(string)
		if d.Message, err = decodeMessage(msg); err != nil {
			// The lease stands: the delivery comes back at its expiry, and an operator sees this.
			return out, fmt.Errorf("delivery %s: %w", d.ID, err)
		}
		if d.LastStatus, err = atoiField(r[4]); err != nil {
			return out, fmt.Errorf("delivery %s: status: %w", d.ID, err)
		}
		d.LastError, _ = r[5].(string)
		recovered, _ := r[6].(int64)
		d.Recovered = recovered == 1
		out = append(out, d)
	}
	return out, nil
}

// atoiField parses a numeric hash field; an absent one ("") is 0.
func atoiField(v any) (int, error) {
	s, _ := v.(string)
	if s == "" {
		return 0, nil
	}
	return strconv.Atoi(s)
}

// NextDue reports the earliest due time of target, a leased delivery counting at its lease expiry.
func (s *Store) NextDue(ctx context.Context, target string) (time.Time, bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(s.shards))
	for i, sh := range s.shards {
		cmds[i] = pipe.ZRangeWithScores(ctx, sh.due(target), 0, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return time.Time{}, false, fmt.Errorf("redisstore: next due %q: %w", target, err)
	}
	first, ok := 0.0, false
	for _, c := range cmds {
		if zs := c.Val(); len(zs) > 0 && (!ok || zs[0].Score < first) {
			first, ok = zs[0].Score, true
		}
	}
	if !ok {
		return time.Time{}, false, nil
	}
	if first != math.Trunc(first) || math.Abs(first) > 1<<53 {
		return time.Time{}, false, fmt.Errorf("redisstore: next due %q: score %v is no microsecond time", target, first)
	}
	return time.UnixMicro(int64(first)).UTC(), true, nil
}

// Depth counts target's deliveries, leased ones included.
func (s *Store) Depth(ctx context.Context, target string) (int, error) {
	n, err := s.sum(ctx, shard.due, target)
	if err != nil {
		return 0, fmt.Errorf("redisstore: depth %q: %w", target, err)
	}
	return n, nil
}

// sum adds up the sizes of one sorted set of every shard, in one pipeline.
func (s *Store) sum(ctx context.Context, key func(shard, string) string, arg string) (int, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(s.shards))
	for i, sh := range s.shards {
		cmds[i] = pipe.ZCard(ctx, key(sh, arg))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	total := 0
	for _, c := range cmds {
		total += int(c.Val())
	}
	return total, nil
}

// Ack removes a delivered delivery, or with history marks it done and records its attempt.
func (s *Store) Ack(ctx context.Context, d *relay.Delivery) error {
	done := ""
	if s.history > 0 {
		at := time.Now()
		if d.Tried != nil {
			at = d.Tried.Start.Add(d.Tried.Duration)
		}
		done = micros(at)
	}
	return s.settle(ctx, "ack", ackScript, d, shard.message, d.Message.ID, done)
}

// Retry releases the lease and makes d due at at, recording f.
func (s *Store) Retry(ctx context.Context, d *relay.Delivery, at time.Time, f relay.Failure) error {
	return s.settle(ctx, "retry", retryScript, d, nil, "", micros(at), f.Status, f.Error)
}

// Bury moves d to the dead letters, recording f and now as its death time.
func (s *Store) Bury(ctx context.Context, d *relay.Delivery, now time.Time, f relay.Failure) error {
	return s.settle(ctx, "bury", buryScript, d, func(sh shard, _ string) string { return sh.deadSet() }, "",
		deadKey(now.UnixMicro()), f.Status, f.Error)
}

// settle runs a settle script (see settleCheck) for d in the shard its lease names; a result of 0
// means d's lease is lost. extraKey(shard, extraArg) is the script's KEYS[4] (nil for none).
func (s *Store) settle(ctx context.Context, op string, sc *redis.Script, d *relay.Delivery,
	extraKey func(shard, string) string, extraArg string, extraArgs ...any) error {
	sh, ok := s.leaseShard(d.Lease)
	if !ok {
		return fmt.Errorf("redisstore: %s %s: %w", op, d.ID, relay.ErrLeaseLost)
	}
	keys := []string{sh.delivery(d.ID), sh.due(d.Target), sh.attempts(d.ID)}
	if extraKey != nil {
		keys = append(keys, extraKey(sh, extraArg))
	}
	tried := ""
	if s.history > 0 && d.Tried != nil {
		tried = encodeAttempt(d.Tried)
	}
	args := append([]any{d.Lease, d.Target, d.ID, tried}, extraArgs...)
	ok1, err := s.scripts.run(ctx, sc, keys, args)
	if err != nil {
		return fmt.Errorf("redisstore: %s %s: %w", op, d.ID, err)
	}
	if ok1 != 1 {
		return fmt.Errorf("redisstore: %s %s: %w", op, d.ID, relay.ErrLeaseLost)
	}
	return nil
}
