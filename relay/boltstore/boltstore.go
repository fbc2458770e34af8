// Package boltstore is the embedded relay.Store: one bbolt file, owned by one process.
//
// Layout (docs/DESIGN.md section 2.3; all keys are bytes; "time" is timeKey, 8 bytes ordered like
// the time):
//
//	messages    message ID -> the message with its body, written once
//	deliveries  delivery ID -> record (the delivery's state, naming its message)
//	due         one sub-bucket per target: time due + delivery ID -> nil
//	leased      delivery ID -> nil, for deliveries claimed and not yet acked, retried or buried
//	dedupe      dedupe key -> time it expires
//	dedupe_exp  time it expires + dedupe key -> nil, walked by Sweep
//	dead        delivery ID -> record with DeadAt set
//	dead_idx    DeadAt + delivery ID -> nil, the stable ListDead order
//	msg_dups    message ID -> duplicate count + last seen (history)
//	attempts    delivery ID + 0 + 4-byte sequence -> attempt (history)
//	jobs        length-prefixed job ID + message ID -> nil, the job-ID search (history)
//
// Without history a message goes when its last delivery is acked or its last dead letter
// dropped; with history an acked delivery stays, marked delivered, until Sweep deletes its
// message after the retention (history.go). A claim moves a
// delivery's due entry to the lease expiry, so an unacked lease simply becomes due again. Writers
// share fsyncs through one writer goroutine (group commit, writer.go).
package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/hookrelay/hookrelay/relay"
)

var _ relay.Store = (*Store)(nil)

// Bucket names.
var (
	bMessages   = []byte("messages")
	bDeliveries = []byte("deliveries")
	bDue        = []byte("due")
	bLeased     = []byte("leased")
	bDedupe     = []byte("dedupe")
	bDedupeExp  = []byte("dedupe_exp")
	bDead       = []byte("dead")
	bDeadIdx    = []byte("dead_idx")
	bDups       = []byte("msg_dups")
	bAttempts   = []byte("attempts")
	bJobs       = []byte("jobs")
)

// Options tune the store. The zero value is a good default.
type Options struct {
	// MaxBatchSize caps the writes that share one transaction (group commit). Default 1000.
	MaxBatchSize int
	// LockTimeout is how long Open waits for the file lock another process may hold. Default 1s.
	LockTimeout time.Duration
	// Logger receives operational events (leases recovered at Open). Nil discards them.
	Logger *slog.Logger
	// History is how long messages, settled deliveries and their attempts are kept (history.go).
	// Zero keeps nothing that is settled.
	History time.Duration
}

// Store is a relay.Store on a bbolt file. It is safe for concurrent use.
type Store struct {
	db         *bolt.DB
	log        *slog.Logger
	sweepChunk int // dedupe keys Sweep deletes per transaction, so ingress never waits long
	history    time.Duration

	maxBatch   int
	mu         sync.RWMutex // closed and sends on writes: Close waits for senders
	closed     bool
	writes     chan write
	writerDone chan struct{}
	// WriteStats
	commits, committed, commitNanos atomic.Uint64
}

// Open opens or creates the store at path. Leases left in the file by a previous process become
// due at once: bbolt's file lock means that process is gone.
func Open(path string, opt Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("boltstore: open: empty path")
	}
	if opt.MaxBatchSize < 0 || opt.LockTimeout < 0 || opt.History < 0 {
		return nil, fmt.Errorf("boltstore: open %s: negative option (MaxBatchSize %d, LockTimeout %v, History %v)",
			path, opt.MaxBatchSize, opt.LockTimeout, opt.History)
	}
	if opt.MaxBatchSize == 0 {
		opt.MaxBatchSize = 1000
	}
	if opt.LockTimeout == 0 {
		opt.LockTimeout = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opt.LockTimeout,
		// Every commit is still fsynced. These two only spare the freelist from being written on
		// each commit (Open rebuilds it by scanning) and make it fast on large files, as etcd does.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: open %s: file is locked after %v; another relay may hold it: %w",
			path, opt.LockTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	s := &Store{db: db, log: opt.Logger, sweepChunk: 1000, history: opt.History, maxBatch: opt.MaxBatchSize,
		writes: make(chan write, opt.MaxBatchSize), writerDone: make(chan struct{})}
	n, err := s.init()
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	if n > 0 {
		s.log.Info("boltstore: leases of a previous process recovered", "path", path, "deliveries", n)
	}
	go s.writeLoop()
	return s, nil
}

// init creates the buckets and makes leased deliveries due at the time they were claimed.
func (s *Store) init() (recovered int, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bMessages, bDeliveries, bDue, bLeased, bDedupe, bDedupeExp, bDead, bDeadIdx,
			bDups, bAttempts, bJobs} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		var ids [][]byte
		if err := tx.Bucket(bLeased).ForEach(func(k, _ []byte) error {
			ids = append(ids, bytes.Clone(k))
			return nil
		}); err != nil {
			return err
		}
		for _, id := range ids {
			r, err := getRecord(tx, bDeliveries, id)
			if err != nil {
				return err
			}
			// The lease stays recorded, so that the next claim reports the delivery as recovered.
			if r != nil { // a leased entry without its delivery is harmless: just drop it
				if err := reschedule(tx, r, r.ClaimedAt); err != nil {
					return err
				}
			}
		}
		// Not inside ForEach: a bucket must not change while it is iterated.
		for _, id := range ids {
			if err := tx.Bucket(bLeased).Delete(id); err != nil {
				return err
			}
		}
		recovered = len(ids)
		return nil
	})
	return recovered, err
}

// Ping checks that the file is open and readable.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: ping: %w", err)
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bDeliveries) == nil {
			return errors.New("deliveries bucket missing")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstore: ping: %w", err)
	}
	return nil
}

// Close commits the writes already submitted, then closes the file. Later writes get an error.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.writes)
	}
	s.mu.Unlock()
	<-s.writerDone
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close: %w", err)
	}
	return nil
}

// batch runs fn in a group-committed write transaction (see writeLoop). fn may run more than once
// when another function of the same batch fails, so it must reset whatever it captures first.
// Once submitted, a write is waited for whatever ctx says: returning early would not undo it.
func (s *Store) batch(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	s.writes <- write{fn: fn, done: done}
	s.mu.RUnlock()
	return <-done
}

// getRecord returns the record under id in bucket, nil if there is none. Its Message has only
// its ID unless the record is a legacy one; loadMessage reads the rest.
func getRecord(tx *bolt.Tx, bucket, id []byte) (*record, error) {
	v := tx.Bucket(bucket).Get(id)
	if v == nil {
		return nil, nil
	}
	r, err := decodeRecord(v)
	if err != nil {
		return nil, fmt.Errorf("delivery %s: %w", id, err)
	}
	return r, nil
}

// loadMessage fills in r's message from the messages bucket.
func loadMessage(tx *bolt.Tx, r *record) error {
	if r.legacy {
		return nil
	}
	v := tx.Bucket(bMessages).Get([]byte(r.Message.ID))
	if v == nil {
		return fmt.Errorf("delivery %s: message %s missing", r.ID, r.Message.ID)
	}
	m, err := decodeMessage(v)
	if err != nil {
		return fmt.Errorf("delivery %s: %w", r.ID, err)
	}
	r.Message = m
	return nil
}

// putRecord stores r in bucket. A legacy record's message moves to the messages bucket first.
func putRecord(tx *bolt.Tx, bucket []byte, r *record) error {
	if r.legacy {
		if tx.Bucket(bMessages).Get([]byte(r.Message.ID)) == nil {
			if err := tx.Bucket(bMessages).Put([]byte(r.Message.ID), encodeMessage(&r.Message)); err != nil {
				return err
			}
		}
		r.legacy = false
	}
	return tx.Bucket(bucket).Put([]byte(r.ID), encodeRecord(r))
}

// releaseMessage deletes message id once no delivery or dead letter names it. Delivery IDs are
// "<message ID>.<target>", so a prefix seek in each bucket answers without decoding anything.
func releaseMessage(tx *bolt.Tx, id string) error {
	prefix := []byte(id + ".")
	for _, b := range [][]byte{bDeliveries, bDead} {
		if k, _ := tx.Bucket(b).Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
			return nil
		}
	}
	return tx.Bucket(bMessages).Delete([]byte(id))
}

// reschedule stores r as due at at, moving its entry in the due index. r.DueAt is where the entry
// is now, or zero when r is new to the queue.
func reschedule(tx *bolt.Tx, r *record, at time.Time) error {
	idx, err := tx.Bucket(bDue).CreateBucketIfNotExists([]byte(r.Target))
	if err != nil {
		return fmt.Errorf("due bucket of target %q: %w", r.Target, err)
	}
	if !r.DueAt.IsZero() {
		if err := idx.Delete(indexKey(r.DueAt, r.ID)); err != nil {
			return err
		}
	}
	r.DueAt = at
	if err := idx.Put(indexKey(at, r.ID), nil); err != nil {
		return err
	}
	return putRecord(tx, bDeliveries, r)
}

// unqueue removes a live delivery from the deliveries bucket and its indexes.
func unqueue(tx *bolt.Tx, r *record) error {
	if idx := tx.Bucket(bDue).Bucket([]byte(r.Target)); idx != nil {
		if err := idx.Delete(indexKey(r.DueAt, r.ID)); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bLeased).Delete([]byte(r.ID)); err != nil {
		return err
	}
	return tx.Bucket(bDeliveries).Delete([]byte(r.ID))
}
