package boltstore

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/storetest"
)

func openTest(t testing.TB, path string, opt Options) *Store {
	t.Helper()
	s, err := Open(path, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, o storetest.Options) (relay.Store, func(*testing.T) relay.Store) {
			path := filepath.Join(t.TempDir(), "relay.db")
			reopen := func(t *testing.T) relay.Store { return openTest(t, path, Options{History: o.History}) }
			return reopen(t), reopen
		},
	})
}

// at is a fake time, sec seconds after a base far from the real clock.
func at(sec int) time.Time {
	return time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).Add(time.Duration(sec) * time.Second)
}

func testMsg(id string, targets ...string) *relay.Message {
	return &relay.Message{ID: id, Route: "r", ReceivedAt: at(0), Body: []byte("{}"), Targets: targets}
}

func TestOpenValidates(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		path string
		opt  Options
	}{
		{"", Options{}},
		{filepath.Join(dir, "a.db"), Options{MaxBatchSize: -1}},
		{filepath.Join(dir, "a.db"), Options{LockTimeout: -1}},
		{filepath.Join(dir, "missing", "a.db"), Options{}},
	} {
		if s, err := Open(tc.path, tc.opt); err == nil {
			s.Close()
			t.Errorf("Open(%q, %+v) = nil error", tc.path, tc.opt)
		}
	}
}

func TestOpenLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openTest(t, path, Options{})
	defer s.Close()
	// bbolt's flock is per open file, so a second Open in this process stands for another process.
	_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "another relay may hold it") {
		t.Fatalf("second Open = %v, want a lock error naming another relay", err)
	}
}

// Leases in the file belong to a dead process: they are due at once, not at their expiry.
func TestOpenRecoversLeases(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openTest(t, path, Options{})
	for _, id := range []string{"m1", "m2", "m3"} {
		m := testMsg(id, "a")
		m.ReceivedAt = at(int(id[1] - '0'))
		if _, err := s.Enqueue(ctx, m, "", 0); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := s.Claim(ctx, "a", at(10), time.Hour, 2) // m1, m2 leased
	if err != nil || len(ds) != 2 {
		t.Fatalf("Claim = %v, %v", ds, err)
	}
	s.Close()

	s = openTest(t, path, Options{})
	defer s.Close()
	if due, ok, err := s.NextDue(ctx, "a"); err != nil || !ok || !due.Equal(at(3)) {
		t.Fatalf("NextDue after reopen = %v, %v, %v; want m3's due time", due, ok, err)
	}
	// Claimed at 10 with an hour's lease, yet due again at 10.
	ds, err = s.Claim(ctx, "a", at(10), time.Hour, 10)
	if err != nil || len(ds) != 3 {
		t.Fatalf("Claim after reopen = %d deliveries, %v; want 3", len(ds), err)
	}
	for _, d := range ds {
		want := map[string]int{"m1.a": 2, "m2.a": 2, "m3.a": 1}[d.ID]
		if d.Attempt != want {
			t.Errorf("%s: Attempt %d, want %d", d.ID, d.Attempt, want)
		}
	}
	if n := leased(t, s); n != 3 {
		t.Fatalf("leased bucket holds %d keys, want 3", n)
	}
	if err := s.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Retry(ctx, ds[1], at(20), relay.Failure{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Bury(ctx, ds[2], at(20), relay.Failure{}); err != nil {
		t.Fatal(err)
	}
	if n := leased(t, s); n != 0 {
		t.Fatalf("leased bucket holds %d keys after settling all, want 0", n)
	}
}

func leased(t *testing.T, s *Store) (n int) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bLeased).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestListDeadUnknownCursor(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	defer s.Close()
	if _, err := s.ListDead(t.Context(), relay.DeadFilter{After: "gone.a"}); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("ListDead after an unknown cursor = %v, want ErrNotFound", err)
	}
}

func TestEnqueueValidates(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	defer s.Close()
	noTime := testMsg("m", "a")
	noTime.ReceivedAt = time.Time{}
	for name, tc := range map[string]struct {
		m   *relay.Message
		key string
		ttl time.Duration
	}{
		"nil":          {nil, "", 0},
		"no id":        {testMsg("", "a"), "", 0},
		"no time":      {noTime, "", 0},
		"no target":    {testMsg("m"), "", 0},
		"empty target": {testMsg("m", ""), "", 0},
		"same target":  {testMsg("m", "a", "a"), "", 0},
		"key, no ttl":  {testMsg("m", "a"), "k", 0},
	} {
		if _, err := s.Enqueue(ctx, tc.m, tc.key, tc.ttl); err == nil {
			t.Errorf("%s: Enqueue = nil error", name)
		}
	}
	if _, err := s.Enqueue(ctx, testMsg("m", "a"), "k", time.Hour); err != nil {
		t.Fatal(err)
	}
	// A reused message ID is a caller bug; it must neither overwrite nor hold the new key.
	if _, err := s.Enqueue(ctx, testMsg("m", "a"), "k2", time.Hour); err == nil {
		t.Fatal("Enqueue of a stored message ID = nil error")
	}
	if dup, err := s.Enqueue(ctx, testMsg("m2", "a"), "k2", time.Hour); err != nil || dup {
		t.Fatalf("k2 after the failed enqueue = %v, %v; want new", dup, err)
	}
}

func TestSweepChunks(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	defer s.Close()
	s.sweepChunk = 3
	for i := range 10 {
		if _, err := s.Enqueue(ctx, testMsg(fmt.Sprint("m", i), "a"), fmt.Sprint("k", i), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Sweep(ctx, at(3600)); err != nil || n != 10 {
		t.Fatalf("Sweep = %d, %v; want 10", n, err)
	}
}

// The history sweep works in chunks and still finds every message past retention.
func TestSweepHistoryChunks(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{History: time.Hour})
	defer s.Close()
	s.sweepChunk = 3
	for i := range 10 {
		m := testMsg(fmt.Sprintf("m%02d", i), "a")
		m.ReceivedAt = at(i)
		if _, err := s.Enqueue(ctx, m, "", 0); err != nil {
			t.Fatal(err)
		}
		ds, err := s.Claim(ctx, "a", at(i), time.Minute, 1)
		if err != nil || len(ds) != 1 {
			t.Fatalf("Claim = %v, %v", ds, err)
		}
		if i != 4 { // m04 stays in flight, and is kept
			if err := s.Ack(ctx, ds[0]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := s.Sweep(ctx, at(100).Add(time.Hour)); err != nil || n != 9 {
		t.Fatalf("Sweep = %d, %v; want 9", n, err)
	}
	page, _, err := s.ListMessages(ctx, relay.MessageFilter{}, at(100))
	if err != nil || len(page) != 1 || page[0].ID != "m04" {
		t.Fatalf("history after the sweep = %v, %v; want m04", page, err)
	}
}

// A dedupe key written by an earlier release holds only its expiry: it still dedupes, and with
// history on the duplicate is simply not counted (the key names no message).
func TestOldDedupeValue(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{History: time.Hour})
	defer s.Close()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bDedupe).Put([]byte("k"), timeKey(at(3600))); err != nil {
			return err
		}
		return tx.Bucket(bDedupeExp).Put(append(timeKey(at(3600)), 'k'), nil)
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		recv time.Time
		dup  bool
	}{{"m1", at(10), true}, {"m2", at(3600), false}, {"m3", at(3601), true}} {
		m := testMsg(tc.id, "a")
		m.ReceivedAt = tc.recv
		dup, err := s.Enqueue(ctx, m, "k", time.Hour)
		if err != nil || dup != tc.dup {
			t.Fatalf("Enqueue(%s) = %v, %v; want duplicate %v", tc.id, dup, err, tc.dup)
		}
	}
	rec, err := s.GetMessage(ctx, "m2", at(3601))
	if err != nil || rec.Duplicates != 1 {
		t.Fatalf("GetMessage(m2) = %+v, %v; want the duplicate counted on the new claim", rec, err)
	}
}

// With history off the file holds what releases before history wrote: version 2 records and
// dedupe values that are the expiry alone.
func TestHistoryOffKeepsTheLayout(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	defer s.Close()
	if _, err := s.Enqueue(ctx, testMsg("m1", "a"), "k", time.Hour); err != nil {
		t.Fatal(err)
	}
	ds, err := s.Claim(ctx, "a", at(0), time.Minute, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Claim = %v, %v", ds, err)
	}
	if err := s.Retry(ctx, ds[0], at(1), relay.Failure{Status: 500}); err != nil {
		t.Fatal(err)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bDeliveries).Get([]byte("m1.a")); len(v) == 0 || v[0] != recordV2 {
			return fmt.Errorf("delivery record %x, want version 2", v)
		}
		if v := tx.Bucket(bDedupe).Get([]byte("k")); len(v) != 8 {
			return fmt.Errorf("dedupe value %x, want the 8-byte expiry", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestClosed(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	s.Close()
	if _, err := s.Enqueue(ctx, testMsg("m", "a"), "", 0); err == nil {
		t.Error("Enqueue on a closed store = nil error")
	}
	if _, err := s.Claim(ctx, "a", at(0), time.Minute, 1); err == nil {
		t.Error("Claim on a closed store = nil error")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := &record{
		Delivery: relay.Delivery{
			ID: "m.a", Target: "a", Attempt: 3, DueAt: at(-70 * 365 * 24 * 3600), Lease: "l",
			LastStatus: -1, LastError: "e", DeadAt: at(0), Message: relay.Message{ID: "m"},
		},
	}
	m := &relay.Message{ID: "m", Route: "r", Provider: "p", JobID: "j", JobStatus: "s",
		ContentType: "c", SourceAddr: "x", ReceivedAt: at(0).Add(123), Body: []byte{0, 0xff}, Targets: []string{"a", ""},
		Headers: http.Header{"X-Github-Event": {"push"}, "X-Two": {"1", ""}}}
	b := encodeRecord(r)
	got, err := decodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeRecord(got), b) || !got.ClaimedAt.IsZero() || !got.DueAt.Equal(r.DueAt) || got.Message.ID != "m" {
		t.Fatalf("round trip changed the record: %+v", got)
	}
	if b[0] != recordV2 {
		t.Fatalf("a record not delivered is version %d, want 2 (readable by releases before history)", b[0])
	}
	r.DeliveredAt = at(5).Add(7)
	db := encodeRecord(r)
	if got, err := decodeRecord(db); err != nil || db[0] != recordVersion || !got.DeliveredAt.Equal(r.DeliveredAt) {
		t.Fatalf("delivered record round trip = %+v, %v", got, err)
	}
	a := &relay.Attempt{Number: 2, Start: at(1).Add(9), Duration: 1500 * time.Microsecond, Status: 503, Error: "e",
		Response: bytes.Repeat([]byte{0xff}, relay.MaxAttemptResponse+1)}
	ab := encodeAttempt(a)
	if ga, err := decodeAttempt(ab); err != nil || ga.Number != 2 || !ga.Start.Equal(a.Start) || ga.Duration != a.Duration ||
		ga.Status != 503 || ga.Error != "e" || len(ga.Response) != relay.MaxAttemptResponse {
		t.Fatalf("attempt round trip = %+v, %v", ga, err)
	}
	mb := encodeMessage(m)
	gm, err := decodeMessage(mb)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeMessage(&gm), mb) || !gm.ReceivedAt.Equal(m.ReceivedAt) || gm.Headers.Get("X-Github-Event") != "push" {
		t.Fatalf("round trip changed the message: %+v", gm)
	}
	// A message of an earlier release, without headers, still decodes.
	old := encoder{b: []byte{messageV1}}
	old.message(m)
	if gm, err := decodeMessage(old.b); err != nil || gm.Headers != nil || string(gm.Body) != string(m.Body) {
		t.Fatalf("decoding a version 1 message = %+v, %v", gm, err)
	}
	for _, dec := range []func([]byte) error{
		func(b []byte) error { _, err := decodeRecord(b); return err },
		func(b []byte) error { _, err := decodeMessage(b); return err },
		func(b []byte) error { _, err := decodeAttempt(b); return err },
	} {
		for _, enc := range [][]byte{b, db, mb, ab} {
			if dec(enc) != nil {
				continue // the other kind
			}
			for i := range enc {
				if err := dec(enc[:i]); err == nil {
					t.Fatalf("decoding %d of %d bytes = nil error", i, len(enc))
				}
			}
			if err := dec(append(bytes.Clone(enc), 0)); err == nil {
				t.Fatal("decoding trailing garbage = nil error")
			}
		}
	}
}

// legacyRecord encodes r as releases before the messages bucket did: the message inside.
func legacyRecord(r *record) []byte {
	e := encoder{b: []byte{recordV1}}
	e.state(r)
	e.message(&r.Message)
	return e.b
}

// A file written by an earlier release (deliveries carrying their message) is still served: its
// deliveries are claimed, retried, buried, replayed and acked, and the message moves to the
// messages bucket on the first rewrite and goes with the last delivery.
func TestLegacyRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openTest(t, path, Options{})
	m := relay.Message{ID: "old", Route: "r", Provider: "generic", JobID: "j", ReceivedAt: at(0),
		Body: []byte(`{"id":"j"}`), Targets: []string{"a", "b"}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, target := range m.Targets {
			r := &record{Delivery: relay.Delivery{ID: relay.DeliveryID(m.ID, target), Target: target, Message: m, DueAt: at(0)}}
			if err := tx.Bucket(bDeliveries).Put([]byte(r.ID), legacyRecord(r)); err != nil {
				return err
			}
			idx, err := tx.Bucket(bDue).CreateBucketIfNotExists([]byte(target))
			if err != nil {
				return err
			}
			if err := idx.Put(indexKey(at(0), r.ID), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	claim := func(target string, now time.Time) *relay.Delivery {
		t.Helper()
		ds, err := s.Claim(ctx, target, now, time.Minute, 10)
		if err != nil || len(ds) != 1 || string(ds[0].Message.Body) != string(m.Body) || ds[0].Message.Route != "r" {
			t.Fatalf("Claim(%s) = %v, %v; want the legacy delivery with its message", target, ds, err)
		}
		return ds[0]
	}
	a := claim("a", at(1))
	if err := s.Retry(ctx, a, at(2), relay.Failure{Status: 503}); err != nil {
		t.Fatal(err)
	}
	b := claim("b", at(1))
	if err := s.Bury(ctx, b, at(1), relay.Failure{Status: 400}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplayDead(ctx, b.ID, at(3)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*relay.Delivery{claim("a", at(3)), claim("b", at(3))} {
		if err := s.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	wantBucketsEmpty(t, s)
}

// wantBucketsEmpty fails unless every message, delivery and index entry is gone.
func wantBucketsEmpty(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bMessages, bDeliveries, bLeased, bDead, bDeadIdx} {
			if n := tx.Bucket(name).Stats().KeyN; n != 0 {
				return fmt.Errorf("bucket %s holds %d keys", name, n)
			}
		}
		return tx.Bucket(bDue).ForEachBucket(func(k []byte) error {
			if n := tx.Bucket(bDue).Bucket(k).Stats().KeyN; n != 0 {
				return fmt.Errorf("due bucket %s holds %d keys", k, n)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Nothing stays behind once every delivery of a message is acked or its dead letter dropped.
func TestSettledMessagesLeaveNothing(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{})
	ctx := t.Context()
	for i := range 20 {
		m := &relay.Message{ID: fmt.Sprintf("m%02d", i), Route: "r", ReceivedAt: at(i), Body: []byte("{}"), Targets: []string{"a", "b"}}
		if _, claimed, err := s.EnqueueLeased(ctx, m, "", 0, time.Minute, []string{"a"}); err != nil || len(claimed) != 1 {
			t.Fatalf("EnqueueLeased: %v", err)
		} else if err := s.Ack(ctx, claimed[0]); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := s.Claim(ctx, "b", at(100), time.Minute, 100)
	if err != nil || len(ds) != 20 {
		t.Fatalf("Claim(b) = %d, %v", len(ds), err)
	}
	for i, d := range ds {
		if i%2 == 0 {
			err = s.Ack(ctx, d)
		} else if err = s.Bury(ctx, d, at(101), relay.Failure{Status: 400}); err == nil {
			err = s.DropDead(ctx, d.ID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	wantBucketsEmpty(t, s)
}

func benchmarkEnqueue(b *testing.B, parallel bool) {
	s := openTest(b, filepath.Join(b.TempDir(), "relay.db"), Options{})
	defer s.Close()
	body := bytes.Repeat([]byte("x"), 1024)
	var seq atomic.Int64
	ctx := b.Context()
	enqueue := func() {
		id := fmt.Sprint("m", seq.Add(1))
		m := &relay.Message{ID: id, Route: "r", ReceivedAt: at(0), Body: body, Targets: []string{"a"}}
		if _, err := s.Enqueue(ctx, m, "r/"+id+"/succeeded", time.Hour); err != nil {
			b.Error(err)
		}
	}
	b.ResetTimer()
	if parallel {
		b.SetParallelism(32) // 64 goroutines on 2 cores: a busy ingress
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				enqueue()
			}
		})
	} else {
		for range b.N {
			enqueue()
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enqueues/s")
}

// Concurrent callers share fsyncs (group commit): compare with BenchmarkEnqueueSerial.
func BenchmarkEnqueueParallel(b *testing.B) { benchmarkEnqueue(b, true) }

// One caller at a time pays one fsync per enqueue (plus the batch delay).
func BenchmarkEnqueueSerial(b *testing.B) { benchmarkEnqueue(b, false) }

// Buckets keyed by time fill their pages before they split: appending at bbolt's default split
// point (half full) would leave every page half empty and write twice the pages.
func TestAppendedBucketsFillTheirPages(t *testing.T) {
	ctx := t.Context()
	s := openTest(t, filepath.Join(t.TempDir(), "relay.db"), Options{History: time.Hour})
	defer s.Close()
	const n = 1500
	body := bytes.Repeat([]byte("x"), 300)
	for i := range n {
		m := testMsg(fmt.Sprintf("%026d", i), "a")
		m.Body = body
		if _, err := s.Enqueue(ctx, m, fmt.Sprintf("key-%06d", i), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := s.Claim(ctx, "a", at(1), time.Hour, n)
	if err != nil || len(ds) != n {
		t.Fatalf("Claim = %d deliveries, %v", len(ds), err)
	}
	for _, d := range ds {
		d.Tried = &relay.Attempt{Number: 1, Start: at(1), Status: http.StatusOK}
		if err := s.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bMessages, bDeliveries, bAttempts, bDedupeExp} {
			st := tx.Bucket(name).Stats()
			if fill := float64(st.LeafInuse) / float64(st.LeafAlloc); fill < 0.7 {
				t.Errorf("%s: leaf pages %.0f%% full (%d keys on %d pages), want at least 70%%",
					name, 100*fill, st.KeyN, st.LeafPageN)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
