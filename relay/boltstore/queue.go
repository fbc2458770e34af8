package boltstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
)

// Enqueue claims dedupeKey and stores the message with one delivery per target in one
// transaction, shared with concurrent callers (group commit). The key is claimed at m.ReceivedAt
// and held until m.ReceivedAt+ttl; a key whose time has passed counts as absent even before Sweep
// removes it.
func (s *Store) Enqueue(ctx context.Context, m *relay.Message, dedupeKey string, ttl time.Duration) (bool, error) {
	dup, _, err := s.EnqueueLeased(ctx, m, dedupeKey, ttl, 0, nil)
	return dup, err
}

// EnqueueLeased is Enqueue that stores the deliveries to the leased targets claimed by the caller
// at m.ReceivedAt, and returns them.
func (s *Store) EnqueueLeased(ctx context.Context, m *relay.Message, dedupeKey string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	if err := relay.ValidateEnqueue(m, dedupeKey, ttl, lease, leased); err != nil {
		return false, nil, fmt.Errorf("boltstore: enqueue: %w", err)
	}
	// Encode outside the transaction: the batch runs every caller's function on one goroutine.
	msgVal := encodeMessage(m)
	recs := make([]*record, len(m.Targets))
	vals := make([][]byte, len(m.Targets))
	var claimed []*relay.Delivery
	for i, t := range m.Targets {
		r := &record{Delivery: relay.Delivery{ID: relay.DeliveryID(m.ID, t), Target: t, DueAt: m.ReceivedAt}}
		r.Message.ID = m.ID
		if slices.Contains(leased, t) {
			r.Attempt, r.Lease, r.ClaimedAt, r.DueAt = 1, rand.Text(), m.ReceivedAt, m.ReceivedAt.Add(lease)
			d := r.Delivery
			d.Message = *m
			claimed = append(claimed, &d)
		}
		recs[i], vals[i] = r, encodeRecord(r)
	}
	expires := m.ReceivedAt.Add(ttl)
	// With history the dedupe key names its message, so that duplicates are counted on it; without,
	// the value stays the expiry alone, as releases before history wrote and read it.
	holderID := ""
	if s.history > 0 {
		holderID = m.ID
	}

	var duplicate bool
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		duplicate = false
		if dedupeKey != "" {
			took, holder, err := claimKey(tx, []byte(dedupeKey), holderID, m.ReceivedAt, expires)
			if err != nil {
				return err
			}
			if !took {
				duplicate = true
				if s.history > 0 {
					return countDuplicate(tx, holder, m.ReceivedAt)
				}
				return nil
			}
		}
		if tx.Bucket(bMessages).Get([]byte(m.ID)) != nil {
			// Returning an error also rolls back the dedupe claim above.
			return fmt.Errorf("message %s already stored: message IDs must be unique", m.ID)
		}
		if err := tx.Bucket(bMessages).Put([]byte(m.ID), msgVal); err != nil {
			return err
		}
		if s.history > 0 && m.JobID != "" {
			if err := tx.Bucket(bJobs).Put(jobKey(m.JobID, m.ID), nil); err != nil {
				return err
			}
		}
		deliveries, dead := tx.Bucket(bDeliveries), tx.Bucket(bDead)
		for i, r := range recs {
			id := []byte(r.ID)
			if deliveries.Get(id) != nil || dead.Get(id) != nil {
				return fmt.Errorf("delivery %s already stored: message IDs must be unique", r.ID)
			}
			idx, err := tx.Bucket(bDue).CreateBucketIfNotExists([]byte(r.Target))
			if err != nil {
				return fmt.Errorf("due bucket of target %q: %w", r.Target, err)
			}
			if err := idx.Put(indexKey(r.DueAt, r.ID), nil); err != nil {
				return err
			}
			if err := deliveries.Put(id, vals[i]); err != nil {
				return err
			}
			if r.Lease != "" {
				if err := tx.Bucket(bLeased).Put(id, nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return false, nil, fmt.Errorf("boltstore: enqueue %s: %w", m.ID, err)
	}
	if duplicate {
		return true, nil, nil
	}
	return false, claimed, nil
}

// claimKey takes key for message id ("" to name none) until expires unless it is held at now. It
// reports false when it is held, and then the message ID holding it ("" for a key that names none).
func claimKey(tx *bolt.Tx, key []byte, id string, now, expires time.Time) (bool, string, error) {
	keys, exp := tx.Bucket(bDedupe), tx.Bucket(bDedupeExp)
	if v := keys.Get(key); v != nil {
		if len(v) < 8 {
			return false, "", fmt.Errorf("dedupe key %q: corrupt expiry", key)
		}
		old := keyTime(v)
		if old.After(now) {
			return false, string(v[8:]), nil
		}
		// Expired but not swept yet: take it over, and drop its old expiry entry so that Sweep
		// neither deletes the new claim early nor counts the key twice.
		if err := exp.Delete(append(bytes.Clone(v[:8]), key...)); err != nil {
			return false, "", err
		}
	}
	if err := keys.Put(key, append(timeKey(expires), id...)); err != nil {
		return false, "", err
	}
	if err := exp.Put(append(timeKey(expires), key...), nil); err != nil {
		return false, "", err
	}
	return true, "", nil
}

// Sweep deletes the dedupe keys expired at now, then with history the messages past retention
// (sweepHistory), in chunks of one transaction each so that Enqueue never waits behind a long
// sweep.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	n, err := s.sweepKeys(ctx, now)
	if err != nil || s.history == 0 {
		return n, err
	}
	m, err := s.sweepHistory(ctx, now.Add(-s.history))
	return n + m, err
}

func (s *Store) sweepKeys(ctx context.Context, now time.Time) (int, error) {
	limit := timeKey(now)
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("boltstore: sweep: %w", err)
		}
		var n int
		var more bool
		err := s.db.Update(func(tx *bolt.Tx) error {
			n, more = 0, false
			keys, exp := tx.Bucket(bDedupe), tx.Bucket(bDedupeExp)
			var found [][]byte
			c := exp.Cursor()
			for k, _ := c.First(); k != nil && bytes.Compare(k[:8], limit) <= 0; k, _ = c.Next() {
				if len(found) == s.sweepChunk {
					more = true
					break
				}
				found = append(found, bytes.Clone(k))
			}
			for _, k := range found {
				if err := exp.Delete(k); err != nil {
					return err
				}
				if err := keys.Delete(k[8:]); err != nil {
					return err
				}
			}
			n = len(found)
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("boltstore: sweep: %w", err)
		}
		total += n
		if !more {
			return total, nil
		}
	}
}

// Claim leases up to max deliveries of target due at now, oldest due first. The returned
// deliveries carry the lease expiry as DueAt.
func (s *Store) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]*relay.Delivery, error) {
	if target == "" || lease <= 0 || max <= 0 {
		return nil, fmt.Errorf("boltstore: claim %q: bad arguments (lease %v, max %d)", target, lease, max)
	}
	// Idle workers poll: look first in a read transaction, which needs no lock and no fsync.
	if at, ok, err := s.NextDue(ctx, target); err != nil || !ok || at.After(now) {
		return nil, err
	}

	limit := timeKey(now)
	var out []*relay.Delivery
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		out = nil
		idx := tx.Bucket(bDue).Bucket([]byte(target))
		if idx == nil {
			return nil
		}
		// Collect first: deleting under a cursor makes it skip entries.
		var keys [][]byte
		c := idx.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < max && bytes.Compare(k[:8], limit) <= 0; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			r, err := getRecord(tx, bDeliveries, k[8:])
			if err != nil {
				return err
			}
			if r == nil {
				return fmt.Errorf("due entry for missing delivery %s", k[8:])
			}
			if err := loadMessage(tx, r); err != nil {
				return err
			}
			r.Attempt++
			r.Recovered = r.Lease != ""
			r.Lease = rand.Text()
			r.ClaimedAt = now
			if err := reschedule(tx, r, now.Add(lease)); err != nil {
				return err
			}
			if err := tx.Bucket(bLeased).Put(k[8:], nil); err != nil {
				return err
			}
			out = append(out, &r.Delivery)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: claim %q: %w", target, err)
	}
	return out, nil
}

// NextDue reports the earliest due time of target, a leased delivery counting at its lease expiry.
func (s *Store) NextDue(ctx context.Context, target string) (time.Time, bool, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, false, fmt.Errorf("boltstore: next due %q: %w", target, err)
	}
	var at time.Time
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if idx := tx.Bucket(bDue).Bucket([]byte(target)); idx != nil {
			if k, _ := idx.Cursor().First(); k != nil {
				at, ok = keyTime(k), true
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("boltstore: next due %q: %w", target, err)
	}
	return at, ok, nil
}

// Depth counts target's deliveries, leased ones included.
func (s *Store) Depth(ctx context.Context, target string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("boltstore: depth %q: %w", target, err)
	}
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		if idx := tx.Bucket(bDue).Bucket([]byte(target)); idx != nil {
			n = idx.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("boltstore: depth %q: %w", target, err)
	}
	return n, nil
}

// Ack removes a delivered delivery, or with history marks it delivered and records its attempt.
func (s *Store) Ack(ctx context.Context, d *relay.Delivery) error {
	return s.settle(ctx, "ack", d, func(tx *bolt.Tx, r *record) error {
		if err := unqueue(tx, r); err != nil {
			return err
		}
		if s.history == 0 {
			return releaseMessage(tx, r.Message.ID)
		}
		r.Lease, r.ClaimedAt, r.DueAt = "", time.Time{}, time.Time{}
		r.DeliveredAt = time.Now().UTC()
		if d.Tried != nil {
			r.DeliveredAt = d.Tried.Start.Add(d.Tried.Duration)
		}
		return putRecord(tx, bDeliveries, r)
	})
}

// Retry releases the lease and makes d due at at, recording f.
func (s *Store) Retry(ctx context.Context, d *relay.Delivery, at time.Time, f relay.Failure) error {
	return s.settle(ctx, "retry", d, func(tx *bolt.Tx, r *record) error {
		r.Lease, r.ClaimedAt = "", time.Time{}
		r.LastStatus, r.LastError = f.Status, f.Error
		if err := tx.Bucket(bLeased).Delete([]byte(r.ID)); err != nil {
			return err
		}
		return reschedule(tx, r, at)
	})
}

// Bury moves d to the dead letters, recording f and now as its death time.
func (s *Store) Bury(ctx context.Context, d *relay.Delivery, now time.Time, f relay.Failure) error {
	return s.settle(ctx, "bury", d, func(tx *bolt.Tx, r *record) error {
		if err := unqueue(tx, r); err != nil {
			return err
		}
		r.Lease, r.ClaimedAt, r.DueAt = "", time.Time{}, time.Time{}
		r.LastStatus, r.LastError = f.Status, f.Error
		r.DeadAt = now
		if err := tx.Bucket(bDeadIdx).Put(indexKey(now, r.ID), nil); err != nil {
			return err
		}
		return putRecord(tx, bDead, r)
	})
}

// settle runs fn on d's stored record if d still holds its lease, and with history records the
// attempt d.Tried.
func (s *Store) settle(ctx context.Context, op string, d *relay.Delivery, fn func(*bolt.Tx, *record) error) error {
	var tried []byte
	if s.history > 0 && d.Tried != nil {
		tried = encodeAttempt(d.Tried)
	}
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		r, err := getRecord(tx, bDeliveries, []byte(d.ID))
		if err != nil {
			return err
		}
		if r == nil || r.Lease == "" || r.Lease != d.Lease {
			return relay.ErrLeaseLost
		}
		if tried != nil {
			if err := appendAttempt(tx, d.ID, tried); err != nil {
				return err
			}
		}
		return fn(tx, r)
	})
	if err != nil {
		return fmt.Errorf("boltstore: %s %s: %w", op, d.ID, err)
	}
	return nil
}
