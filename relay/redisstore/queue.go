package redisstore

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"slices"
	"strconv"
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
// at m.ReceivedAt, and returns them. Another replica takes them over when the lease expires.
func (s *Store) EnqueueLeased(ctx context.Context, m *relay.Message, dedupeKey string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	if err := relay.ValidateEnqueue(m, dedupeKey, ttl, lease, leased); err != nil {
		return false, nil, fmt.Errorf("redisstore: enqueue: %w", err)
	}
	n := len(m.Targets)
	var expires string
	var px int64
	if dedupeKey != "" {
		expires, px = micros(m.ReceivedAt.Add(ttl)), pxMillis(ttl)
	}
	keys := make([]string, 2, 3+2*n)
	keys[0], keys[1] = s.dedupeIndexKey(), s.messageKey(m.ID)
	args := make([]any, 0, 8+3*n)
	args = append(args, micros(m.ReceivedAt), expires, px, dedupeKey, encodeMessage(m), m.Route, m.ID,
		micros(m.ReceivedAt.Add(lease)))
	for _, t := range m.Targets {
		keys = append(keys, s.deliveryKey(relay.DeliveryID(m.ID, t)))
	}
	for _, t := range m.Targets {
		keys = append(keys, s.dueKey(t))
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
				base = rand.Text()
			}
			token = base + "." + strconv.Itoa(i)
			claimed = append(claimed, &relay.Delivery{ID: relay.DeliveryID(m.ID, t), Target: t, Message: *m,
				Attempt: 1, Lease: token, DueAt: m.ReceivedAt.Add(lease)})
		}
		args = append(args, token)
	}
	if dedupeKey != "" {
		keys = append(keys, s.dedupeKey(dedupeKey))
	}
	dup, err := s.scripts.run(ctx, enqueueScript, keys, args)
	if err != nil {
		return false, nil, fmt.Errorf("redisstore: enqueue %s: %w", m.ID, err)
	}
	if dup == 1 {
		return true, nil, nil
	}
	return false, claimed, nil
}

// Sweep deletes the dedupe keys expired at now, a chunk per script so that ingress never waits
// long behind it. Redis forgets them by their TTL anyway; Sweep keeps the expiry index small.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for {
		n, err := sweepScript.Run(ctx, s.rdb, []string{s.dedupeIndexKey()}, s.base, micros(now), s.sweepChunk).Int()
		if err != nil {
			return total, fmt.Errorf("redisstore: sweep: %w", err)
		}
		total += n
		if n < s.sweepChunk {
			return total, nil
		}
	}
}

// Claim leases up to max deliveries of target due at now, oldest due first (ties by ID). The
// returned deliveries carry the lease expiry as DueAt.
func (s *Store) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]*relay.Delivery, error) {
	if target == "" || lease <= 0 || max <= 0 {
		return nil, fmt.Errorf("redisstore: claim %q: bad arguments (lease %v, max %d)", target, lease, max)
	}
	expires := now.Add(lease)
	res, err := claimScript.Run(ctx, s.rdb, []string{s.dueKey(target)},
		s.base, micros(now), micros(expires), max, rand.Text()).Slice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim %q: %w", target, err)
	}
	const fields = 7
	if len(res) == 0 || (len(res)-1)%fields != 0 {
		return nil, fmt.Errorf("redisstore: claim %q: unexpected reply of %d elements", target, len(res))
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
			return nil, fmt.Errorf("redisstore: claim %q: delivery %s: %w", target, d.ID, err)
		}
		if d.LastStatus, err = atoiField(r[4]); err != nil {
			return nil, fmt.Errorf("redisstore: claim %q: delivery %s: status: %w", target, d.ID, err)
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
	zs, err := s.rdb.ZRangeWithScores(ctx, s.dueKey(target), 0, 0).Result()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("redisstore: next due %q: %w", target, err)
	}
	if len(zs) == 0 {
		return time.Time{}, false, nil
	}
	us := zs[0].Score
	if us != math.Trunc(us) || math.Abs(us) > 1<<53 {
		return time.Time{}, false, fmt.Errorf("redisstore: next due %q: score %v is no microsecond time", target, us)
	}
	return time.UnixMicro(int64(us)).UTC(), true, nil
}

// Depth counts target's deliveries, leased ones included.
func (s *Store) Depth(ctx context.Context, target string) (int, error) {
	n, err := s.rdb.ZCard(ctx, s.dueKey(target)).Result()
	if err != nil {
		return 0, fmt.Errorf("redisstore: depth %q: %w", target, err)
	}
	return int(n), nil
}

// Ack removes a delivered delivery.
func (s *Store) Ack(ctx context.Context, d *relay.Delivery) error {
	return s.settle(ctx, "ack", ackScript, d, []string{s.messageKey(d.Message.ID)})
}

// Retry releases the lease and makes d due at at, recording f.
func (s *Store) Retry(ctx context.Context, d *relay.Delivery, at time.Time, f relay.Failure) error {
	return s.settle(ctx, "retry", retryScript, d, nil, micros(at), f.Status, f.Error)
}

// Bury moves d to the dead letters, recording f and now as its death time.
func (s *Store) Bury(ctx context.Context, d *relay.Delivery, now time.Time, f relay.Failure) error {
	return s.settle(ctx, "bury", buryScript, d, []string{s.deadSetKey()},
		deadKey(now.UnixMicro()), f.Status, f.Error)
}

// settle runs a settle script (see settleCheck) for d; a result of 0 means d's lease is lost.
func (s *Store) settle(ctx context.Context, op string, sc *redis.Script, d *relay.Delivery, extraKeys []string, extraArgs ...any) error {
	keys := append([]string{s.deliveryKey(d.ID), s.dueKey(d.Target)}, extraKeys...)
	args := append([]any{d.Lease, d.Target, d.ID}, extraArgs...)
	ok, err := s.scripts.run(ctx, sc, keys, args)
	if err != nil {
		return fmt.Errorf("redisstore: %s %s: %w", op, d.ID, err)
	}
	if ok != 1 {
		return fmt.Errorf("redisstore: %s %s: %w", op, d.ID, relay.ErrLeaseLost)
	}
	return nil
}
