package boltstore

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
)

// defaultDeadLimit is ListDead's page size when the filter sets none.
const defaultDeadLimit = 100

// ListDead lists dead letters matching f, oldest death first, then by ID. f.After must name a
// dead letter that still exists (ErrNotFound otherwise): its position is where the page starts.
func (s *Store) ListDead(ctx context.Context, f relay.DeadFilter) ([]*relay.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: list dead: %w", err)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = defaultDeadLimit
	}
	var out []*relay.Delivery
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bDeadIdx).Cursor()
		var k []byte
		switch {
		case f.After != "":
			after, err := getRecord(tx, bDead, []byte(f.After))
			if err != nil {
				return err
			}
			if after == nil {
				return fmt.Errorf("cursor %s: %w", f.After, relay.ErrNotFound)
			}
			start := indexKey(after.DeadAt, after.ID)
			if k, _ = c.Seek(start); bytes.Equal(k, start) {
				k, _ = c.Next()
			}
		case !f.Since.IsZero():
			k, _ = c.Seek(timeKey(f.Since))
		default:
			k, _ = c.First()
		}
		for ; k != nil && len(out) < limit; k, _ = c.Next() {
			r, err := getRecord(tx, bDead, k[8:])
			if err != nil {
				return err
			}
			if r == nil {
				return fmt.Errorf("dead index entry for missing dead letter %s", k[8:])
			}
			if err := loadMessage(tx, r); err != nil {
				return err
			}
			if f.Match(&r.Delivery) {
				out = append(out, &r.Delivery)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: list dead: %w", err)
	}
	return out, nil
}

// GetDead returns the dead letter id.
func (s *Store) GetDead(ctx context.Context, id string) (*relay.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: get dead %s: %w", id, err)
	}
	var r *record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if r, err = getRecord(tx, bDead, []byte(id)); err == nil && r == nil {
			err = relay.ErrNotFound
		}
		if err != nil {
			return err
		}
		return loadMessage(tx, r)
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: get dead %s: %w", id, err)
	}
	return &r.Delivery, nil
}

// ReplayDead queues the dead letter id again, due at now, as if never attempted.
func (s *Store) ReplayDead(ctx context.Context, id string, now time.Time) error {
	return s.removeDead(ctx, "replay dead", id, func(tx *bolt.Tx, r *record) error {
		if tx.Bucket(bDeliveries).Get([]byte(id)) != nil {
			return fmt.Errorf("delivery %s is queued already", id)
		}
		r.Attempt, r.DeadAt, r.DueAt = 0, time.Time{}, time.Time{}
		return reschedule(tx, r, now)
	})
}

// DropDead deletes the dead letter id.
func (s *Store) DropDead(ctx context.Context, id string) error {
	return s.removeDead(ctx, "drop dead", id, func(tx *bolt.Tx, r *record) error {
		if r.legacy {
			return nil // its message went with it
		}
		return releaseMessage(tx, r.Message.ID)
	})
}

// removeDead takes the dead letter id out of the dead letters and passes it to fn.
func (s *Store) removeDead(ctx context.Context, op, id string, fn func(*bolt.Tx, *record) error) error {
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		dead := tx.Bucket(bDead)
		r, err := getRecord(tx, bDead, []byte(id))
		if err != nil {
			return err
		}
		if r == nil {
			return relay.ErrNotFound
		}
		if err := tx.Bucket(bDeadIdx).Delete(indexKey(r.DeadAt, r.ID)); err != nil {
			return err
		}
		if err := dead.Delete([]byte(id)); err != nil {
			return err
		}
		return fn(tx, r)
	})
	if err != nil {
		return fmt.Errorf("boltstore: %s %s: %w", op, id, err)
	}
	return nil
}
