package boltstore

import (
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
)

// errClosed is returned by writes to a closed store.
var errClosed = errors.New("store closed")

// write is one caller's part of a group commit.
type write struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// writeLoop is the store's one writing goroutine. Each transaction takes every write that arrived
// while the previous one was committing, so concurrent callers share an fsync without a timer:
// one caller alone is committed at once, and under load batches grow to what the disk needs.
// (bbolt's own DB.Batch starts a new batch while the last waits for the write lock, so under
// load many small batches queue up, each paying its own fsync.)
func (s *Store) writeLoop() {
	defer close(s.writerDone)
	batch := make([]write, 0, s.maxBatch)
	for w := range s.writes {
		batch = append(batch[:0], w)
	drain:
		for len(batch) < s.maxBatch {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break drain
				}
				batch = append(batch, w)
			default:
				break drain
			}
		}
		s.commit(batch)
	}
}

// commit runs the batch in one transaction. A function that fails rolls the transaction back: it
// gets its error (as if it had run last, alone, and changed nothing), and the others run again
// without it. Functions therefore reset what they capture before they do anything.
func (s *Store) commit(batch []write) {
	for len(batch) > 0 {
		failed, ferr := -1, error(nil)
		start := time.Now()
		err := s.db.Update(func(tx *bolt.Tx) error {
			fillAppended(tx)
			for i, w := range batch {
				if err := w.fn(tx); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			if err == nil {
				s.commits.Add(1)
				s.committed.Add(uint64(len(batch)))
				s.commitNanos.Add(uint64(time.Since(start)))
			}
			for _, w := range batch {
				w.done <- err // nil, or the commit's own failure for everyone
			}
			return
		}
		batch[failed].done <- ferr
		batch = append(batch[:failed], batch[failed+1:]...)
	}
}

// WriteStats reports the write loop's commits, the writes they carried and their time, and the
// page writes of every write transaction (bbolt counts those, sweeps included).
func (s *Store) WriteStats() relay.WriteStats {
	db := s.db.Stats()
	return relay.WriteStats{Commits: s.commits.Load(), Writes: s.committed.Load(),
		Time: time.Duration(s.commitNanos.Load()), PagesCounted: true, Pages: uint64(db.TxStats.GetWrite())}
}

// appended are the buckets whose keys grow with time (message IDs and time keys lead them), so
// that writes land on their last page.
var appended = [][]byte{bMessages, bDeliveries, bLeased, bDedupeExp, bDeadIdx, bDups, bAttempts}

// fillAppended lets the pages of the appended buckets fill up before bbolt splits them. At its
// default of half full, appending writes twice the pages, and the file holds them half empty.
func fillAppended(tx *bolt.Tx) {
	for _, name := range appended {
		tx.Bucket(name).FillPercent = appendedFill
	}
	due := tx.Bucket(bDue)
	_ = due.ForEachBucket(func(k []byte) error {
		due.Bucket(k).FillPercent = appendedFill
		return nil
	})
}

const appendedFill = 0.9
