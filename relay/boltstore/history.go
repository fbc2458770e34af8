package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
)

// History (docs/DESIGN.md sections 2.3 and 2.5). Message IDs sort by arrival, so the messages
// bucket is the history in arrival order: listings walk it backwards, the sweep forwards.

const (
	defaultMessageLimit = 100
	// listBudget bounds the messages one ListMessages call looks at, so that a filter that
	// matches little cannot hold a read transaction over the whole history.
	listBudget = 10000
)

// jobKey is the jobs index key: the job ID, length-prefixed so that no job ID is a prefix of
// another's entries, then the message ID.
func jobKey(jobID, messageID string) []byte {
	k := binary.AppendUvarint(make([]byte, 0, 2+len(jobID)+len(messageID)), uint64(len(jobID)))
	return append(append(k, jobID...), messageID...)
}

// attemptPrefix is the attempts bucket's prefix of a delivery: its ID then a 0 byte, so that no
// delivery's attempts sort among another's.
func attemptPrefix(deliveryID string) []byte { return append([]byte(deliveryID), 0) }

// appendAttempt stores an encoded attempt after the delivery's last one. The key's sequence, not
// the attempt number, orders them: a replayed dead letter counts its attempts from 1 again.
func appendAttempt(tx *bolt.Tx, deliveryID string, val []byte) error {
	prefix := attemptPrefix(deliveryID)
	b := tx.Bucket(bAttempts)
	seq := uint32(1)
	c := b.Cursor()
	k, _ := c.Seek(binary.BigEndian.AppendUint32(bytes.Clone(prefix), ^uint32(0)))
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	if k != nil && len(k) == len(prefix)+4 && bytes.HasPrefix(k, prefix) {
		seq = binary.BigEndian.Uint32(k[len(prefix):]) + 1
	}
	return b.Put(binary.BigEndian.AppendUint32(prefix, seq), val)
}

func readAttempts(tx *bolt.Tx, deliveryID string) ([]relay.Attempt, error) {
	prefix := attemptPrefix(deliveryID)
	var out []relay.Attempt
	c := tx.Bucket(bAttempts).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		a, err := decodeAttempt(v)
		if err != nil {
			return nil, fmt.Errorf("attempt of %s: %w", deliveryID, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func deleteAttempts(tx *bolt.Tx, deliveryID string) error {
	return deletePrefix(tx.Bucket(bAttempts), attemptPrefix(deliveryID))
}

func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// countDuplicate counts a duplicate of message id seen at at. A key of an earlier release names
// no message, and a message already swept has no counters to keep.
func countDuplicate(tx *bolt.Tx, id string, at time.Time) error {
	if id == "" || tx.Bucket(bMessages).Get([]byte(id)) == nil {
		return nil
	}
	b := tx.Bucket(bDups)
	n, _ := decodeDups(b.Get([]byte(id)))
	e := encoder{}
	e.uint(uint64(n + 1))
	e.time(at)
	return b.Put([]byte(id), e.b)
}

func decodeDups(v []byte) (int, time.Time) {
	if v == nil {
		return 0, time.Time{}
	}
	d := decoder{b: v}
	n, at := int(d.uint()), d.time()
	if d.end() != nil {
		return 0, time.Time{}
	}
	return n, at
}

// deliveriesOf returns the records of message m's deliveries, live, delivered or dead, in the
// order of its targets. A dead letter dropped with history on has none.
func deliveriesOf(tx *bolt.Tx, m *relay.Message) ([]*record, error) {
	var out []*record
	for _, t := range m.Targets {
		id := []byte(relay.DeliveryID(m.ID, t))
		r, err := getRecord(tx, bDeliveries, id)
		if err == nil && r == nil {
			r, err = getRecord(tx, bDead, id)
		}
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// stateOf is r's state at now.
func stateOf(r *record, now time.Time) string {
	switch {
	case !r.DeadAt.IsZero():
		return relay.StateDead
	case !r.DeliveredAt.IsZero():
		return relay.StateDelivered
	}
	return relay.LiveState(r.Lease != "", r.LastStatus != 0 || r.LastError != "", r.DueAt, now)
}

// recordOf builds the history view of message value v; attempts only when asked.
func recordOf(tx *bolt.Tx, v []byte, now time.Time, withAttempts bool) (*relay.MessageRecord, error) {
	m, err := decodeMessage(v)
	if err != nil {
		return nil, err
	}
	rec := &relay.MessageRecord{Message: m, Size: len(m.Body), Deliveries: []*relay.DeliveryRecord{}}
	rec.Duplicates, rec.LastDuplicateAt = decodeDups(tx.Bucket(bDups).Get([]byte(m.ID)))
	rs, err := deliveriesOf(tx, &m)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		d := &relay.DeliveryRecord{ID: r.ID, Target: r.Target, State: stateOf(r, now), Attempt: r.Attempt,
			LastStatus: r.LastStatus, LastError: r.LastError, DeliveredAt: r.DeliveredAt, DeadAt: r.DeadAt}
		if d.State != relay.StateDead && d.State != relay.StateDelivered {
			d.DueAt = r.DueAt
		}
		if withAttempts {
			if d.Attempts, err = readAttempts(tx, r.ID); err != nil {
				return nil, err
			}
		}
		rec.Deliveries = append(rec.Deliveries, d)
	}
	return rec, nil
}

// ListMessages lists messages matching f, newest first; the cursor is the last message ID listed.
func (s *Store) ListMessages(ctx context.Context, f relay.MessageFilter, now time.Time) ([]*relay.MessageRecord, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("boltstore: list messages: %w", err)
	}
	if s.history == 0 {
		return nil, "", nil // the messages bucket holds only live messages then, which Redis cannot list
	}
	limit := f.Limit
	if limit <= 0 {
		limit = defaultMessageLimit
	}
	var out []*relay.MessageRecord
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		out, next = nil, ""
		msgs := tx.Bucket(bMessages)
		// ids yields message IDs newest first from the cursor on: from the job index when the
		// filter names a job, else from the messages bucket.
		var ids func(yield func(id, v []byte) bool)
		if f.JobID != "" {
			prefix := jobKey(f.JobID, "")
			var found [][]byte
			c := tx.Bucket(bJobs).Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				found = append(found, bytes.Clone(k[len(prefix):]))
			}
			slices.Reverse(found)
			ids = func(yield func(id, v []byte) bool) {
				for _, id := range found {
					if f.Cursor != "" && string(id) >= f.Cursor {
						continue
					}
					if v := msgs.Get(id); v != nil && !yield(id, v) {
						return
					}
				}
			}
		} else {
			ids = func(yield func(id, v []byte) bool) {
				c := msgs.Cursor()
				var k, v []byte
				if f.Cursor != "" {
					k, v = c.Seek([]byte(f.Cursor))
					if k == nil {
						k, v = c.Last()
					}
					for k != nil && string(k) >= f.Cursor {
						k, v = c.Prev()
					}
				} else {
					k, v = c.Last()
				}
				for ; k != nil; k, v = c.Prev() {
					if !yield(k, v) {
						return
					}
				}
			}
		}
		scanned := 0
		var ferr error
		for id, v := range ids {
			if scanned == listBudget {
				// Resume at this message, not looked at: the cursor is exclusive, and id plus
				// a 0 byte is the smallest string after id.
				next = string(id) + "\x00"
				break
			}
			scanned++
			rec, err := recordOf(tx, v, now, false)
			if err != nil {
				ferr = fmt.Errorf("message %s: %w", id, err)
				break
			}
			if !f.Since.IsZero() && rec.ReceivedAt.Before(f.Since) {
				break // IDs sort by arrival: everything further is older
			}
			if !f.Match(rec) {
				continue
			}
			rec.Body = nil
			out = append(out, rec)
			if len(out) == limit {
				next = rec.ID
				break
			}
		}
		return ferr
	})
	if err != nil {
		return nil, "", fmt.Errorf("boltstore: list messages: %w", err)
	}
	return out, next, nil
}

// GetMessage returns message id with its deliveries and their attempts.
func (s *Store) GetMessage(ctx context.Context, id string, now time.Time) (*relay.MessageRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: get message %s: %w", id, err)
	}
	var rec *relay.MessageRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bMessages).Get([]byte(id))
		if v == nil {
			return relay.ErrNotFound
		}
		var err error
		rec, err = recordOf(tx, v, now, true)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: get message %s: %w", id, err)
	}
	return rec, nil
}

// Redeliver queues the delivered and dead deliveries of message id (target's only, when set)
// again, due at now, keeping their IDs and attempt counts.
func (s *Store) Redeliver(ctx context.Context, id, target string, now time.Time) ([]string, error) {
	var done []string
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		done = nil
		v := tx.Bucket(bMessages).Get([]byte(id))
		if v == nil {
			return relay.ErrNotFound
		}
		m, err := decodeMessage(v)
		if err != nil {
			return err
		}
		if target != "" && !slices.Contains(m.Targets, target) {
			return fmt.Errorf("target %q: %w", target, relay.ErrNotFound)
		}
		rs, err := deliveriesOf(tx, &m)
		if err != nil {
			return err
		}
		live := false
		for _, r := range rs {
			if target != "" && r.Target != target {
				continue
			}
			switch {
			case !r.DeadAt.IsZero():
				if err := tx.Bucket(bDeadIdx).Delete(indexKey(r.DeadAt, r.ID)); err != nil {
					return err
				}
				if err := tx.Bucket(bDead).Delete([]byte(r.ID)); err != nil {
					return err
				}
				r.DeadAt = time.Time{}
			case !r.DeliveredAt.IsZero():
				r.DeliveredAt = time.Time{}
			default:
				live = true
				continue
			}
			r.DueAt = time.Time{}
			if err := reschedule(tx, r, now); err != nil {
				return err
			}
			done = append(done, r.ID)
		}
		if len(done) == 0 {
			if live {
				return relay.ErrLive
			}
			return fmt.Errorf("no delivery left to redeliver: %w", relay.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: redeliver %s: %w", id, err)
	}
	return done, nil
}

// sweepHistory deletes the messages received before cutoff whose deliveries are all delivered,
// with everything naming them, a chunk of messages looked at per transaction. A message with a
// live delivery or a dead letter stays.
func (s *Store) sweepHistory(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	var from []byte
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("boltstore: sweep history: %w", err)
		}
		var n int
		var more bool
		err := s.db.Update(func(tx *bolt.Tx) error {
			n, more = 0, false
			var old []relay.Message
			c := tx.Bucket(bMessages).Cursor()
			k, v := c.First()
			if from != nil {
				k, v = c.Seek(from)
			}
			for ; k != nil; k, v = c.Next() {
				if len(old) == s.sweepChunk {
					more, from = true, bytes.Clone(k)
					break
				}
				m, err := decodeMessage(v)
				if err != nil {
					return fmt.Errorf("message %s: %w", k, err)
				}
				if !m.ReceivedAt.Before(cutoff) {
					break
				}
				old = append(old, m)
			}
			for i := range old {
				swept, err := sweepMessage(tx, &old[i])
				if err != nil {
					return err
				}
				if swept {
					n++
				}
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("boltstore: sweep history: %w", err)
		}
		total += n
		if !more {
			return total, nil
		}
	}
}

// sweepMessage deletes m with its deliveries, attempts and index entries unless one of its
// deliveries is live or dead.
func sweepMessage(tx *bolt.Tx, m *relay.Message) (bool, error) {
	prefix := []byte(m.ID + ".")
	if k, _ := tx.Bucket(bDead).Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
		return false, nil
	}
	var ids [][]byte
	c := tx.Bucket(bDeliveries).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		r, err := decodeRecord(v)
		if err != nil {
			return false, fmt.Errorf("delivery %s: %w", k, err)
		}
		if r.DeliveredAt.IsZero() {
			return false, nil
		}
		ids = append(ids, bytes.Clone(k))
	}
	for _, id := range ids {
		if err := tx.Bucket(bDeliveries).Delete(id); err != nil {
			return false, err
		}
	}
	for _, t := range m.Targets {
		if err := deleteAttempts(tx, relay.DeliveryID(m.ID, t)); err != nil {
			return false, err
		}
	}
	if m.JobID != "" {
		if err := tx.Bucket(bJobs).Delete(jobKey(m.JobID, m.ID)); err != nil {
			return false, err
		}
	}
	if err := tx.Bucket(bDups).Delete([]byte(m.ID)); err != nil {
		return false, err
	}
	return true, tx.Bucket(bMessages).Delete([]byte(m.ID))
}
