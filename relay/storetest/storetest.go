// Package storetest is the conformance suite of relay.Store: every backend runs the same Run from
// its own tests, so that the embedded and the Redis store behave alike.
//
// The suite uses fake times from a fixed base far from the real clock and never sleeps: wherever
// the contract passes a time, a backend must use it, not its own clock. In particular a dedupe key
// is claimed at the message's ReceivedAt and held until ReceivedAt+ttl.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// Harness tells Run how to get stores.
type Harness struct {
	// Open opens a fresh, empty store with the options. reopen opens the same data again, with the
	// same options, after the caller closed the first store, as a restarted (or crashed) process
	// would. Open arranges for the data to be removed after the test (t.TempDir, t.Cleanup); Run
	// closes every store it gets. Subtests run in parallel, so the stores Open returns must not
	// share data.
	Open func(t *testing.T, opt Options) (s relay.Store, reopen func(t *testing.T) relay.Store)
}

// Options are the store options the suite varies.
type Options struct {
	// History is the retention of history; zero turns it off (docs/DESIGN.md section 2.5).
	History time.Duration
}

// retention is the history retention of the suite's stores with history on.
const retention = 24 * time.Hour

type suiteTest struct {
	name string
	fn   func(t *testing.T, f *fixture)
}

// Run runs the suite, one subtest per behaviour, with history off and on: every behaviour of the
// queue holds either way. The history tests run with history on only, but for HistoryOff.
func Run(t *testing.T, h Harness) {
	for _, mode := range []struct {
		name  string
		opt   Options
		extra []suiteTest
	}{
		{"history_off", Options{}, []suiteTest{{"HistoryOff", testHistoryOff}}},
		{"history_on", Options{History: retention}, historyTests},
	} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			runTests(t, h, mode.opt, append(slices.Clone(baseTests), mode.extra...))
		})
	}
}

func runTests(t *testing.T, h Harness, opt Options, tests []suiteTest) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each subtest has its own store; overlapping them hides fsync latency
			s, reopen := h.Open(t, opt)
			f := &fixture{t: t, ctx: t.Context(), s: s, reopen: reopen}
			t.Cleanup(func() {
				if err := f.s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, f)
		})
	}
}

var baseTests = []suiteTest{
	{"EnqueueClaimRoundTrip", testEnqueueClaimRoundTrip},
	{"DuplicateKeyStoresNothing", testDuplicateKeyStoresNothing},
	{"EmptyKeyNeverDedupes", testEmptyKeyNeverDedupes},
	{"FanOut", testFanOut},
	{"DedupeKeyExpiresWithoutSweep", testDedupeKeyExpiresWithoutSweep},
	{"DedupeKeyExpiresWithSweep", testDedupeKeyExpiresWithSweep},
	{"ClaimDueTime", testClaimDueTime},
	{"ClaimMaxOldestFirst", testClaimMaxOldestFirst},
	{"ClaimTargetIsolation", testClaimTargetIsolation},
	{"LeaseExpiry", testLeaseExpiry},
	{"AckAfterLeaseExpiredUnclaimed", testAckAfterLeaseExpiredUnclaimed},
	{"Ack", testAck},
	{"Retry", testRetry},
	{"Bury", testBury},
	{"ListDead", testListDead},
	{"ListDeadDefaultLimit", testListDeadDefaultLimit},
	{"ReplayDead", testReplayDead},
	{"DropDead", testDropDead},
	{"UnknownDeadLetter", testUnknownDeadLetter},
	{"NextDue", testNextDue},
	{"Depth", testDepth},
	{"ConcurrentDedupe", testConcurrentDedupe},
	{"ConcurrentClaim", testConcurrentClaim},
	{"RestartRecoversLease", testRestartRecoversLease},
	{"EnqueueLeased", testEnqueueLeased},
	{"EnqueueLeasedExpires", testEnqueueLeasedExpires},
	{"EnqueueLeasedDuplicate", testEnqueueLeasedDuplicate},
	{"EnqueueLeasedBadArguments", testEnqueueLeasedBadArguments},
	{"RestartRecoversEnqueueLease", testRestartRecoversEnqueueLease},
	{"MessageOutlivesFirstAck", testMessageOutlivesFirstAck},
	{"RestartKeepsData", testRestartKeepsData},
	{"Ping", testPing},
	{"WriteStats", testWriteStats},
}

// baseUnix is the suite's clock origin, 2001-02-03T04:05:06Z: far from the real clock, so that a
// backend reading its own clock where the contract passes a time fails.
const baseUnix = 981173106

// at is the base time plus sec seconds.
func at(sec int) time.Time { return time.Unix(baseUnix+int64(sec), 0).UTC() }

const (
	hour  = time.Hour
	lease = time.Minute
)

// fixture wraps the store under test with helpers that fail the test on errors. The helpers
// must only be called from the test goroutine.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	s      relay.Store
	reopen func(t *testing.T) relay.Store
}

// msg builds a message received at received for targets, with fields derived from id.
func msg(id string, received time.Time, targets ...string) *relay.Message {
	return &relay.Message{
		ID:          id,
		Route:       "r1",
		Provider:    "generic",
		JobID:       "job-" + id,
		JobStatus:   "succeeded",
		ContentType: "application/json",
		SourceAddr:  "192.0.2.7:40000",
		ReceivedAt:  received,
		Body:        []byte(`{"id":"` + id + `"}`),
		Targets:     targets,
		Headers:     http.Header{"X-Github-Event": {"push"}, "X-Multi": {"a", "b"}},
	}
}

func (f *fixture) enqueue(m *relay.Message, key string, ttl time.Duration) (duplicate bool) {
	f.t.Helper()
	dup, err := f.s.Enqueue(f.ctx, m, key, ttl)
	if err != nil {
		f.t.Fatalf("Enqueue(%s, key %q): %v", m.ID, key, err)
	}
	return dup
}

// mustEnqueue enqueues m and fails the test if it is reported a duplicate.
func (f *fixture) mustEnqueue(m *relay.Message, key string, ttl time.Duration) {
	f.t.Helper()
	if f.enqueue(m, key, ttl) {
		f.t.Fatalf("Enqueue(%s, key %q) = duplicate, want new", m.ID, key)
	}
}

func (f *fixture) claim(target string, now time.Time, leaseFor time.Duration, max int) []*relay.Delivery {
	f.t.Helper()
	ds, err := f.s.Claim(f.ctx, target, now, leaseFor, max)
	if err != nil {
		f.t.Fatalf("Claim(%q, %v): %v", target, now, err)
	}
	if len(ds) > max {
		f.t.Fatalf("Claim(%q, max %d) returned %d deliveries", target, max, len(ds))
	}
	return ds
}

// claimOne claims at now and requires exactly one delivery, with the given ID.
func (f *fixture) claimOne(target string, now time.Time, wantID string) *relay.Delivery {
	f.t.Helper()
	ds := f.claim(target, now, lease, 10)
	if len(ds) != 1 || ds[0].ID != wantID {
		f.t.Fatalf("Claim(%q, %v) = %v, want [%s]", target, now, ids(ds), wantID)
	}
	d := ds[0]
	if d.Target != target {
		f.t.Fatalf("claimed %s has Target %q, want %q", d.ID, d.Target, target)
	}
	if d.Lease == "" {
		f.t.Fatalf("claimed %s has no lease", d.ID)
	}
	return d
}

// claimNone requires that nothing of target is due at now.
func (f *fixture) claimNone(target string, now time.Time) {
	f.t.Helper()
	if ds := f.claim(target, now, lease, 10); len(ds) != 0 {
		f.t.Fatalf("Claim(%q, %v) = %v, want none", target, now, ids(ds))
	}
}

func (f *fixture) nextDue(target string) (time.Time, bool) {
	f.t.Helper()
	at, ok, err := f.s.NextDue(f.ctx, target)
	if err != nil {
		f.t.Fatalf("NextDue(%q): %v", target, err)
	}
	return at, ok
}

// wantNextDue requires that target's earliest due time is want.
func (f *fixture) wantNextDue(target string, want time.Time) {
	f.t.Helper()
	got, ok := f.nextDue(target)
	if !ok || !got.Equal(want) {
		f.t.Fatalf("NextDue(%q) = %v, %v; want %v, true", target, got, ok, want)
	}
}

// wantEmpty requires that target has no delivery at all.
func (f *fixture) wantEmpty(target string) {
	f.t.Helper()
	if got, ok := f.nextDue(target); ok {
		f.t.Fatalf("NextDue(%q) = %v, true; want none", target, got)
	}
}

func (f *fixture) ack(d *relay.Delivery) {
	f.t.Helper()
	if err := f.s.Ack(f.ctx, d); err != nil {
		f.t.Fatalf("Ack(%s): %v", d.ID, err)
	}
}

func (f *fixture) retry(d *relay.Delivery, at time.Time, fl relay.Failure) {
	f.t.Helper()
	if err := f.s.Retry(f.ctx, d, at, fl); err != nil {
		f.t.Fatalf("Retry(%s): %v", d.ID, err)
	}
}

func (f *fixture) bury(d *relay.Delivery, now time.Time, fl relay.Failure) {
	f.t.Helper()
	if err := f.s.Bury(f.ctx, d, now, fl); err != nil {
		f.t.Fatalf("Bury(%s): %v", d.ID, err)
	}
}

func (f *fixture) getDead(id string) *relay.Delivery {
	f.t.Helper()
	d, err := f.s.GetDead(f.ctx, id)
	if err != nil {
		f.t.Fatalf("GetDead(%s): %v", id, err)
	}
	if d.ID != id {
		f.t.Fatalf("GetDead(%s) returned %s", id, d.ID)
	}
	return d
}

func (f *fixture) wantCountDead(want int) {
	f.t.Helper()
	if n, err := f.s.CountDead(f.ctx); err != nil || n != want {
		f.t.Fatalf("CountDead = %d, %v; want %d", n, err, want)
	}
}

// wantNotDead requires that id is not among the dead letters.
func (f *fixture) wantNotDead(id string) {
	f.t.Helper()
	if d, err := f.s.GetDead(f.ctx, id); !errors.Is(err, relay.ErrNotFound) {
		f.t.Fatalf("GetDead(%s) = %v, %v; want ErrNotFound", id, d, err)
	}
}

func (f *fixture) listDead(fl relay.DeadFilter) []string {
	f.t.Helper()
	ds, err := f.s.ListDead(f.ctx, fl)
	if err != nil {
		f.t.Fatalf("ListDead(%+v): %v", fl, err)
	}
	return ids(ds)
}

// claimAndBury enqueues a message for target, claims it and buries it at dead.
func (f *fixture) claimAndBury(m *relay.Message, dead time.Time, fl relay.Failure) {
	f.t.Helper()
	f.mustEnqueue(m, "", 0)
	d := f.claimOne(m.Targets[0], m.ReceivedAt, relay.DeliveryID(m.ID, m.Targets[0]))
	f.bury(d, dead, fl)
}

func ids(ds []*relay.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

// wantLeaseLost requires that err is ErrLeaseLost.
func wantLeaseLost(t *testing.T, op string, err error) {
	t.Helper()
	if !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("%s with a stale lease = %v, want ErrLeaseLost", op, err)
	}
}

// checkMessage compares a stored message with what was enqueued.
func checkMessage(t *testing.T, got, want *relay.Message) {
	t.Helper()
	if got.ID != want.ID || got.Route != want.Route || got.Provider != want.Provider ||
		got.JobID != want.JobID || got.JobStatus != want.JobStatus ||
		got.ContentType != want.ContentType || got.SourceAddr != want.SourceAddr {
		t.Errorf("message fields = %+v\nwant %+v", got, want)
	}
	if !got.ReceivedAt.Equal(want.ReceivedAt) {
		t.Errorf("ReceivedAt = %v, want %v", got.ReceivedAt, want.ReceivedAt)
	}
	if !bytes.Equal(got.Body, want.Body) {
		t.Errorf("Body = %q, want %q", got.Body, want.Body)
	}
	if !slices.Equal(got.Targets, want.Targets) {
		t.Errorf("Targets = %q, want %q", got.Targets, want.Targets)
	}
	if !maps.EqualFunc(got.Headers, want.Headers, slices.Equal) {
		t.Errorf("Headers = %q, want %q", got.Headers, want.Headers)
	}
}

func testEnqueueClaimRoundTrip(t *testing.T, f *fixture) {
	recv := time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.FixedZone("X", 2*3600))
	m := &relay.Message{
		ID:          "msg-1",
		Route:       "fal-results",
		Provider:    "fal",
		JobID:       "req-42",
		JobStatus:   "succeeded",
		ContentType: "application/json; charset=utf-8",
		SourceAddr:  "[2001:db8::1]:443",
		ReceivedAt:  recv,
		// Not valid UTF-8, with NUL and CR LF: stored byte for byte.
		Body:    []byte("{\"a\":\"\xff\xfe\x00\r\n\"}\n"),
		Targets: []string{"t1"},
	}
	want := *m
	want.Body = bytes.Clone(m.Body)
	want.Targets = slices.Clone(m.Targets)

	f.mustEnqueue(m, "fal-results/req-42/succeeded", 72*hour)
	m.Body[0] = 'X' // the store must have kept its own copy
	m.Targets[0] = "changed"

	f.claimNone("t1", recv.Add(-time.Second))
	d := f.claimOne("t1", recv.Add(time.Second), relay.DeliveryID("msg-1", "t1"))
	if d.Attempt != 1 {
		t.Errorf("Attempt = %d, want 1", d.Attempt)
	}
	if d.LastStatus != 0 || d.LastError != "" || !d.DeadAt.IsZero() {
		t.Errorf("fresh delivery has LastStatus %d, LastError %q, DeadAt %v", d.LastStatus, d.LastError, d.DeadAt)
	}
	checkMessage(t, &d.Message, &want)
}

func testDuplicateKeyStoresNothing(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "k", hour)
	if !f.enqueue(msg("m2", at(10), "a", "b"), "k", hour) {
		t.Fatal("second Enqueue with the same key = new, want duplicate")
	}
	f.mustEnqueue(msg("m3", at(20), "a"), "other", hour)

	ds := f.claim("a", at(100), lease, 10)
	if got, want := ids(ds), []string{"m1.a", "m3.a"}; !slices.Equal(got, want) {
		t.Fatalf("Claim(a) = %v, want %v: the duplicate must store nothing", got, want)
	}
	f.wantEmpty("b")
	f.claimNone("b", at(100))
}

func testEmptyKeyNeverDedupes(t *testing.T, f *fixture) {
	for i := range 3 {
		m := msg(fmt.Sprint("m", i), at(i), "a")
		m.JobID = "same-job" // same job, no key: still three webhooks
		f.mustEnqueue(m, "", 0)
	}
	if got, want := ids(f.claim("a", at(10), lease, 10)), []string{"m0.a", "m1.a", "m2.a"}; !slices.Equal(got, want) {
		t.Fatalf("Claim = %v, want %v", got, want)
	}
}

func testFanOut(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a", "b")
	f.mustEnqueue(m, "k", hour)

	da := f.claimOne("a", at(1), relay.DeliveryID("m1", "a"))
	checkMessage(t, &da.Message, m)
	f.ack(da)
	f.wantEmpty("a")

	// Claiming and acking a left b alone.
	f.wantNextDue("b", at(0))
	db := f.claimOne("b", at(2), relay.DeliveryID("m1", "b"))
	if db.Attempt != 1 {
		t.Errorf("b: Attempt = %d, want 1", db.Attempt)
	}
	checkMessage(t, &db.Message, m)
	f.claimNone("c", at(3))
	f.wantEmpty("c")
}

func testDedupeKeyExpiresWithoutSweep(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "k", hour)
	if !f.enqueue(msg("m2", at(3599), "a"), "k", hour) {
		t.Fatal("key released before its ttl")
	}
	f.mustEnqueue(msg("m3", at(3601), "a"), "k", hour) // expired, never swept

	// The new claim holds for a full ttl from m3, and Sweep does not see the old one.
	if n, err := f.s.Sweep(f.ctx, at(3700)); err != nil || n != 0 {
		t.Fatalf("Sweep after the key was claimed again = %d, %v; want 0, nil", n, err)
	}
	if !f.enqueue(msg("m4", at(3601+3599), "a"), "k", hour) {
		t.Fatal("key claimed again by m3 released before m3's ttl")
	}
	if got, want := ids(f.claim("a", at(9999), lease, 10)), []string{"m1.a", "m3.a"}; !slices.Equal(got, want) {
		t.Fatalf("Claim = %v, want %v", got, want)
	}
}

func testDedupeKeyExpiresWithSweep(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "k1", hour)    // expires at 3600
	f.mustEnqueue(msg("m2", at(0), "a"), "k2", 3*hour)  // expires at 10800
	f.mustEnqueue(msg("m3", at(1800), "a"), "k3", hour) // expires at 5400
	f.mustEnqueue(msg("m4", at(0), "a"), "", 0)         // no key: nothing to sweep
	sweep := func(now time.Time, want int) {
		t.Helper()
		if n, err := f.s.Sweep(f.ctx, now); err != nil || n != want {
			t.Fatalf("Sweep(%v) = %d, %v; want %d", now, n, err, want)
		}
	}
	sweep(at(3599), 0)
	sweep(at(3601), 1)
	sweep(at(3601), 0)

	f.mustEnqueue(msg("m5", at(3602), "a"), "k1", hour) // swept: new again, expires at 7202
	for _, k := range []string{"k1", "k2", "k3"} {
		if !f.enqueue(msg("dup-"+k, at(3603), "a"), k, hour) {
			t.Fatalf("key %s accepted again before its ttl", k)
		}
	}
	sweep(at(5401), 1) // k3
	sweep(at(7203), 1) // k1's second claim
	sweep(at(10801), 1)
	sweep(at(99999), 0)
	for _, k := range []string{"k1", "k2", "k3"} {
		f.mustEnqueue(msg("new-"+k, at(99999), "a"), k, hour)
	}
}

func testClaimDueTime(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(10), "a"), "", 0)
	f.claimNone("a", at(9))
	f.claimNone("a", at(-100))
	f.wantNextDue("a", at(10))
	d := f.claimOne("a", at(10), "m1.a") // due at now is due
	if d.Attempt != 1 {
		t.Errorf("Attempt = %d, want 1", d.Attempt)
	}
}

func testClaimMaxOldestFirst(t *testing.T, f *fixture) {
	for _, sec := range []int{3, 1, 4, 0, 2, 50} {
		f.mustEnqueue(msg(fmt.Sprint("m", sec), at(sec), "a"), "", 0)
	}
	if got, want := ids(f.claim("a", at(10), lease, 2)), []string{"m0.a", "m1.a"}; !slices.Equal(got, want) {
		t.Fatalf("Claim(max 2) = %v, want %v", got, want)
	}
	if got, want := ids(f.claim("a", at(10), lease, 10)), []string{"m2.a", "m3.a", "m4.a"}; !slices.Equal(got, want) {
		t.Fatalf("Claim(max 10) = %v, want %v (m50 is not due)", got, want)
	}
	f.claimNone("a", at(11))
	f.claimOne("a", at(50), "m50.a")
}

func testClaimTargetIsolation(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "", 0)
	f.mustEnqueue(msg("m2", at(0), "b"), "", 0)
	f.mustEnqueue(msg("m3", at(0), "ab"), "", 0) // a prefix of another target's name is no match
	f.claimOne("a", at(1), "m1.a")
	f.claimNone("a", at(1))
	f.claimNone("c", at(1))
	f.claimOne("b", at(1), "m2.b")
	f.claimOne("ab", at(1), "m3.ab")
}

func testLeaseExpiry(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "", 0)
	d1 := f.claimOne("a", at(10), "m1.a")
	if d1.Recovered {
		t.Error("first claim says Recovered")
	}

	f.claimNone("a", at(10))
	f.claimNone("a", at(10).Add(lease-time.Second))
	f.wantNextDue("a", at(10).Add(lease))

	d2 := f.claimOne("a", at(10).Add(lease+time.Second), "m1.a")
	if d2.Attempt != 2 || !d2.Recovered {
		t.Errorf("after the lease expired: Attempt = %d, Recovered = %v, want 2, true", d2.Attempt, d2.Recovered)
	}
	if d2.Lease == d1.Lease {
		t.Fatalf("second claim has the same lease %q", d2.Lease)
	}

	wantLeaseLost(t, "Ack", f.s.Ack(f.ctx, d1))
	wantLeaseLost(t, "Retry", f.s.Retry(f.ctx, d1, at(20), relay.Failure{Status: 500}))
	wantLeaseLost(t, "Bury", f.s.Bury(f.ctx, d1, at(20), relay.Failure{Status: 400}))
	forged := *d2
	forged.Lease = "not-a-lease"
	wantLeaseLost(t, "Ack with a forged lease", f.s.Ack(f.ctx, &forged))
	forged.Lease = ""
	wantLeaseLost(t, "Ack without a lease", f.s.Ack(f.ctx, &forged))

	// The failed calls changed nothing: d2 still holds it.
	f.wantNotDead("m1.a")
	f.claimNone("a", at(10).Add(lease+2*time.Second))
	f.wantNextDue("a", at(10).Add(2*lease+time.Second))
	f.ack(d2)
	f.wantEmpty("a")
	wantLeaseLost(t, "second Ack", f.s.Ack(f.ctx, d2))

	unknown := &relay.Delivery{ID: "nope.a", Target: "a", Lease: d2.Lease}
	wantLeaseLost(t, "Ack of an unknown delivery", f.s.Ack(f.ctx, unknown))
}

// A holder whose lease ran out may still settle as long as nobody claimed the delivery again:
// that spares the target a duplicate. (By the real clock these leases ran out decades ago.)
func testAckAfterLeaseExpiredUnclaimed(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "", 0)
	f.mustEnqueue(msg("m2", at(0), "a"), "", 0)
	ds := f.claim("a", at(0), lease, 10)
	if len(ds) != 2 {
		t.Fatalf("Claim = %v, want 2", ids(ds))
	}
	f.ack(ds[0])
	f.retry(ds[1], at(500), relay.Failure{Status: 503})
	f.claimNone("a", at(499))
	f.claimOne("a", at(500), ds[1].ID)
}

func testAck(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "", 0)
	f.mustEnqueue(msg("m2", at(5), "a"), "", 0)
	d := f.claimOne("a", at(1), "m1.a")
	f.ack(d)
	f.wantNextDue("a", at(5)) // only m2 is left
	f.ack(f.claimOne("a", at(1e6), "m2.a"))
	f.claimNone("a", at(2e6))
	f.wantEmpty("a")
	f.wantNotDead("m1.a")
}

func testRetry(t *testing.T, f *fixture) {
	f.mustEnqueue(msg("m1", at(0), "a"), "", 0)
	ds := f.claim("a", at(10), 10*time.Minute, 1)
	if len(ds) != 1 {
		t.Fatalf("Claim = %v", ids(ds))
	}
	d1 := ds[0]
	// Due before the lease would have expired: Retry releases the lease.
	retryAt := at(10).Add(5 * time.Minute)
	f.retry(d1, retryAt, relay.Failure{Status: 503, Error: "target said: busy"})
	wantLeaseLost(t, "Ack after Retry released the lease", f.s.Ack(f.ctx, d1))
	f.wantNextDue("a", retryAt)
	f.claimNone("a", retryAt.Add(-time.Second))

	d2 := f.claimOne("a", retryAt, "m1.a")
	if d2.Attempt != 2 || d2.LastStatus != 503 || d2.LastError != "target said: busy" {
		t.Errorf("after Retry: Attempt %d, LastStatus %d, LastError %q; want 2, 503, %q",
			d2.Attempt, d2.LastStatus, d2.LastError, "target said: busy")
	}
	if d2.Lease == d1.Lease {
		t.Errorf("claim after Retry reuses lease %q", d1.Lease)
	}
	wantLeaseLost(t, "Ack with the lease from before Retry", f.s.Ack(f.ctx, d1))

	// A second failure replaces the first.
	f.retry(d2, retryAt.Add(time.Second), relay.Failure{Status: 0, Error: "connection refused"})
	d3 := f.claimOne("a", retryAt.Add(time.Second), "m1.a")
	if d3.Attempt != 3 || d3.LastStatus != 0 || d3.LastError != "connection refused" {
		t.Errorf("after second Retry: Attempt %d, LastStatus %d, LastError %q", d3.Attempt, d3.LastStatus, d3.LastError)
	}
	f.wantNotDead("m1.a")
}

func testBury(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a", "b")
	f.mustEnqueue(m, "", 0)
	d := f.claimOne("a", at(1), "m1.a")
	f.bury(d, at(60), relay.Failure{Status: 410, Error: "gone"})

	f.claimNone("a", at(1e6))
	f.wantEmpty("a")
	wantLeaseLost(t, "Ack after Bury", f.s.Ack(f.ctx, d))
	f.claimOne("b", at(2), "m1.b") // the other target is unaffected

	dead := f.getDead("m1.a")
	if dead.Target != "a" || dead.LastStatus != 410 || dead.LastError != "gone" || !dead.DeadAt.Equal(at(60)) || dead.Attempt != 1 {
		t.Errorf("dead letter: Target %q, LastStatus %d, LastError %q, DeadAt %v, Attempt %d; want a, 410, gone, %v, 1",
			dead.Target, dead.LastStatus, dead.LastError, dead.DeadAt, dead.Attempt, at(60))
	}
	checkMessage(t, &dead.Message, m)
}

func testListDead(t *testing.T, f *fixture) {
	type letter struct {
		id, route, target string
		dead              int
	}
	// Buried out of order; three share a death time and sort by ID.
	for _, l := range []letter{
		{"m4", "r2", "b", 200},
		{"m1", "r1", "a", 100},
		{"m3", "r1", "b", 100},
		{"m2", "r2", "a", 50},
		{"m0", "r1", "a", 100},
	} {
		m := msg(l.id, at(0), l.target)
		m.Route = l.route
		f.claimAndBury(m, at(l.dead), relay.Failure{Status: 400, Error: "bad " + l.id})
	}
	all := []string{"m2.a", "m0.a", "m1.a", "m3.b", "m4.b"}

	for _, tc := range []struct {
		name string
		f    relay.DeadFilter
		want []string
	}{
		{"all", relay.DeadFilter{}, all},
		{"route", relay.DeadFilter{Route: "r1"}, []string{"m0.a", "m1.a", "m3.b"}},
		{"target", relay.DeadFilter{Target: "b"}, []string{"m3.b", "m4.b"}},
		{"route and target", relay.DeadFilter{Route: "r2", Target: "a"}, []string{"m2.a"}},
		{"since is inclusive", relay.DeadFilter{Since: at(100)}, []string{"m0.a", "m1.a", "m3.b", "m4.b"}},
		{"since", relay.DeadFilter{Since: at(101)}, []string{"m4.b"}},
		{"since and route", relay.DeadFilter{Since: at(60), Route: "r2"}, []string{"m4.b"}},
		{"no match", relay.DeadFilter{Route: "nope"}, nil},
		{"limit", relay.DeadFilter{Limit: 2}, []string{"m2.a", "m0.a"}},
		{"after", relay.DeadFilter{After: "m0.a", Limit: 2}, []string{"m1.a", "m3.b"}},
		{"after the last", relay.DeadFilter{After: "m4.b"}, nil},
		{"after with filter", relay.DeadFilter{After: "m0.a", Target: "b"}, []string{"m3.b", "m4.b"}},
	} {
		if got := f.listDead(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: ListDead(%+v) = %v, want %v", tc.name, tc.f, got, tc.want)
		}
	}

	// Paging one by one visits everything once, in order, with or without a filter.
	for _, base := range []relay.DeadFilter{{}, {Route: "r1"}} {
		var got []string
		fl := base
		fl.Limit = 1
		for range 10 {
			page := f.listDead(fl)
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			fl.After = page[len(page)-1]
		}
		want := f.listDead(base)
		if !slices.Equal(got, want) {
			t.Errorf("paging %+v by one = %v, want %v", base, got, want)
		}
	}

	ds, err := f.s.ListDead(f.ctx, relay.DeadFilter{Target: "b"})
	if err != nil || len(ds) != 2 {
		t.Fatalf("ListDead(target b) = %v, %v", ids(ds), err)
	}
	if d := ds[1]; d.Message.Route != "r2" || !d.DeadAt.Equal(at(200)) || d.LastError != "bad m4" || d.LastStatus != 400 {
		t.Errorf("listed dead letter %s: Route %q, DeadAt %v, LastStatus %d, LastError %q", d.ID, d.Message.Route, d.DeadAt, d.LastStatus, d.LastError)
	}
}

func testListDeadDefaultLimit(t *testing.T, f *fixture) {
	const n = 105
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := f.s.Enqueue(f.ctx, msg(fmt.Sprintf("m%03d", i), at(0), "a"), "", 0); err != nil {
				t.Errorf("Enqueue: %v", err)
			}
		})
	}
	wg.Wait()
	ds := f.claim("a", at(0), lease, 200)
	if len(ds) != n {
		t.Fatalf("claimed %d, want %d", len(ds), n)
	}
	for _, d := range ds {
		wg.Go(func() {
			if err := f.s.Bury(f.ctx, d, at(10), relay.Failure{Status: 400}); err != nil {
				t.Errorf("Bury(%s): %v", d.ID, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	first := f.listDead(relay.DeadFilter{})
	if len(first) != 100 {
		t.Fatalf("ListDead without a limit returned %d, want the default 100", len(first))
	}
	rest := f.listDead(relay.DeadFilter{After: first[len(first)-1]})
	all := append(first, rest...)
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("m%03d.a", i) // same death time: ID order
	}
	if !slices.Equal(all, want) {
		t.Fatalf("two default pages = %v, want %v", all, want)
	}
}

func testReplayDead(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a")
	f.mustEnqueue(m, "", 0)
	d := f.claimOne("a", at(0), "m1.a")
	f.retry(d, at(10), relay.Failure{Status: 500})
	d = f.claimOne("a", at(10), "m1.a")
	if d.Attempt != 2 {
		t.Fatalf("Attempt = %d, want 2", d.Attempt)
	}
	f.bury(d, at(20), relay.Failure{Status: 404, Error: "no such hook"})

	if err := f.s.ReplayDead(f.ctx, "m1.a", at(1000)); err != nil {
		t.Fatalf("ReplayDead: %v", err)
	}
	f.wantNotDead("m1.a")
	if got := f.listDead(relay.DeadFilter{}); len(got) != 0 {
		t.Fatalf("ListDead after replay = %v", got)
	}
	f.wantNextDue("a", at(1000))
	f.claimNone("a", at(999))
	r := f.claimOne("a", at(1000), "m1.a")
	if r.Attempt != 1 {
		t.Errorf("Attempt after replay = %d, want 1", r.Attempt)
	}
	checkMessage(t, &r.Message, m)
	wantLeaseLost(t, "Ack with the lease from before the burial", f.s.Ack(f.ctx, d))
	f.ack(r)

	if err := f.s.ReplayDead(f.ctx, "m1.a", at(2000)); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("second ReplayDead = %v, want ErrNotFound", err)
	}
	f.wantEmpty("a")
}

func testDropDead(t *testing.T, f *fixture) {
	f.claimAndBury(msg("m1", at(0), "a"), at(5), relay.Failure{Status: 400})
	f.claimAndBury(msg("m2", at(0), "a"), at(6), relay.Failure{Status: 400})
	f.wantCountDead(2)
	if err := f.s.DropDead(f.ctx, "m1.a"); err != nil {
		t.Fatalf("DropDead: %v", err)
	}
	f.wantCountDead(1)
	f.wantNotDead("m1.a")
	if got, want := f.listDead(relay.DeadFilter{}), []string{"m2.a"}; !slices.Equal(got, want) {
		t.Fatalf("ListDead after drop = %v, want %v", got, want)
	}
	f.claimNone("a", at(1e6))
	f.wantEmpty("a")
	if err := f.s.DropDead(f.ctx, "m1.a"); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("second DropDead = %v, want ErrNotFound", err)
	}
}

func testUnknownDeadLetter(t *testing.T, f *fixture) {
	// A live delivery is no dead letter either.
	f.mustEnqueue(msg("live", at(0), "a"), "", 0)
	for _, id := range []string{"nope.a", "live.a"} {
		f.wantNotDead(id)
		if err := f.s.ReplayDead(f.ctx, id, at(1)); !errors.Is(err, relay.ErrNotFound) {
			t.Errorf("ReplayDead(%s) = %v, want ErrNotFound", id, err)
		}
		if err := f.s.DropDead(f.ctx, id); !errors.Is(err, relay.ErrNotFound) {
			t.Errorf("DropDead(%s) = %v, want ErrNotFound", id, err)
		}
	}
	f.claimOne("a", at(0), "live.a") // untouched
}

func testNextDue(t *testing.T, f *fixture) {
	f.wantEmpty("a")
	f.mustEnqueue(msg("m5", at(5), "a"), "", 0)
	f.mustEnqueue(msg("m2", at(2), "a"), "", 0)
	f.mustEnqueue(msg("x", at(1), "b"), "", 0)
	f.wantNextDue("a", at(2))

	f.claimOne("a", at(3), "m2.a") // leased until 3+60
	f.wantNextDue("a", at(5))
	f.claimOne("a", at(6), "m5.a") // leased until 6+60
	f.wantNextDue("a", at(3).Add(lease))
	f.wantNextDue("b", at(1))
}

func testDepth(t *testing.T, f *fixture) {
	wantDepth := func(target string, want int) {
		t.Helper()
		if n, err := f.s.Depth(f.ctx, target); err != nil || n != want {
			t.Errorf("Depth(%q) = %d, %v; want %d", target, n, err, want)
		}
	}
	wantDepth("a", 0)
	f.mustEnqueue(msg("m1", at(1), "a", "b"), "", 0)
	f.mustEnqueue(msg("m2", at(2), "a"), "", 0)
	f.mustEnqueue(msg("m3", at(3), "a"), "", 0)
	wantDepth("a", 3)
	wantDepth("b", 1)
	d := f.claimOne("a", at(1), "m1.a")
	wantDepth("a", 3) // a leased delivery is still queued
	f.ack(d)
	wantDepth("a", 2)
	d = f.claimOne("a", at(2), "m2.a")
	f.retry(d, at(100), relay.Failure{Status: 503})
	wantDepth("a", 2)
	d = f.claimOne("a", at(3), "m3.a")
	f.bury(d, at(3), relay.Failure{Status: 400})
	wantDepth("a", 1) // dead letters are not queued
	wantDepth("b", 1)
}

func testConcurrentDedupe(t *testing.T, f *fixture) {
	const n = 50
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		fresh []string
	)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprint("m", i)
			dup, err := f.s.Enqueue(f.ctx, msg(id, at(i), "a"), "same-key", hour)
			if err != nil {
				t.Errorf("Enqueue(%s): %v", id, err)
				return
			}
			if !dup {
				mu.Lock()
				fresh = append(fresh, id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(fresh) != 1 {
		t.Fatalf("%d of %d concurrent enqueues with one key were new (%v), want exactly 1", len(fresh), n, fresh)
	}
	f.claimOne("a", at(1000), relay.DeliveryID(fresh[0], "a"))
	f.claimNone("a", at(1000))
}

// testWriteStats: the store counts each enqueue and ack once in WriteStats, in at least one and at
// most that many commits, and the time they took; one that writes pages counts those too.
func testWriteStats(t *testing.T, f *fixture) {
	ws, ok := f.s.(interface{ WriteStats() relay.WriteStats })
	if !ok {
		t.Fatalf("%T has no WriteStats method", f.s)
	}
	before := ws.WriteStats()
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprint("w", i)
			_, claimed, err := f.s.EnqueueLeased(f.ctx, msg(id, at(i), "a"), "key-"+id, hour, time.Minute, []string{"a"})
			if err != nil || len(claimed) != 1 {
				t.Errorf("EnqueueLeased(%s): %d claimed, %v", id, len(claimed), err)
				return
			}
			if err := f.s.Ack(f.ctx, claimed[0]); err != nil {
				t.Errorf("Ack(%s): %v", claimed[0].ID, err)
			}
		})
	}
	wg.Wait()
	after := ws.WriteStats()
	commits, writes := after.Commits-before.Commits, after.Writes-before.Writes
	if writes != 2*n || commits < 1 || commits > writes {
		t.Errorf("%d enqueues and %d acks counted as %d writes in %d commits, want %d writes in 1..%d commits",
			n, n, writes, commits, 2*n, 2*n)
	}
	if after.Time <= before.Time {
		t.Errorf("write time %v, then %v: want it to grow", before.Time, after.Time)
	}
	if after.PagesCounted && after.Pages <= before.Pages {
		t.Errorf("page writes %d, then %d: want them to grow", before.Pages, after.Pages)
	}
	if !after.PagesCounted && after.Pages != 0 {
		t.Errorf("%d page writes from a store that counts none", after.Pages)
	}
}

func testConcurrentClaim(t *testing.T, f *fixture) {
	const (
		messages = 200
		claimers = 8
	)
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Go(func() {
			for i := w; i < messages; i += 10 {
				if _, err := f.s.Enqueue(f.ctx, msg(fmt.Sprint("m", i), at(i%7), "a"), "", 0); err != nil {
					t.Errorf("Enqueue: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	claimed := make([][]string, claimers)
	for w := range claimers {
		wg.Go(func() {
			for {
				ds, err := f.s.Claim(f.ctx, "a", at(100), hour, 5)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if len(ds) > 5 {
					t.Errorf("Claim(max 5) returned %d", len(ds))
				}
				if len(ds) == 0 {
					return
				}
				for _, d := range ds {
					if d.Attempt != 1 {
						t.Errorf("%s claimed with Attempt %d", d.ID, d.Attempt)
					}
					claimed[w] = append(claimed[w], d.ID)
					if err := f.s.Ack(f.ctx, d); err != nil {
						t.Errorf("Ack(%s): %v", d.ID, err)
					}
				}
			}
		})
	}
	wg.Wait()

	seen := make(map[string]int)
	for _, c := range claimed {
		for _, id := range c {
			seen[id]++
		}
	}
	for i := range messages {
		id := relay.DeliveryID(fmt.Sprint("m", i), "a")
		if seen[id] != 1 {
			t.Errorf("%s claimed %d times, want once", id, seen[id])
		}
		delete(seen, id)
	}
	if len(seen) != 0 {
		t.Errorf("claimed unknown deliveries %v", seen)
	}
	f.wantEmpty("a")
}

func testRestartRecoversLease(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a")
	f.mustEnqueue(m, "", 0)
	d := f.claimOne("a", at(10), "m1.a")

	// A crash: the holder never acks.
	if err := f.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := f.s.Ping(f.ctx); err == nil {
		t.Error("Ping on a closed store = nil, want an error")
	}
	f.s = f.reopen(t)

	// A backend may give the lease up at open already; at the latest it is due when it expires.
	again := f.claimOne("a", at(10).Add(lease+time.Second), "m1.a")
	if again.Attempt != 2 || !again.Recovered {
		t.Errorf("after the crash: Attempt = %d, Recovered = %v, want 2 (an unacked claim counts), true",
			again.Attempt, again.Recovered)
	}
	if again.Lease == d.Lease {
		t.Errorf("claim after restart reuses lease %q", d.Lease)
	}
	checkMessage(t, &again.Message, m)
	wantLeaseLost(t, "Ack with the lease from before the restart", f.s.Ack(f.ctx, d))
	f.ack(again)
	f.wantEmpty("a")
}

func testRestartKeepsData(t *testing.T, f *fixture) {
	m1 := msg("m1", at(0), "a")
	f.mustEnqueue(m1, "k", hour)
	f.mustEnqueue(msg("m2", at(0), "b"), "", 0)
	f.retry(f.claimOne("b", at(1), "m2.b"), at(500), relay.Failure{Status: 502, Error: "bad gateway"})
	m3 := msg("m3", at(0), "c")
	f.claimAndBury(m3, at(20), relay.Failure{Status: 404, Error: "not found"})

	if err := f.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.s = f.reopen(t)

	if !f.enqueue(msg("m4", at(30), "a"), "k", hour) {
		t.Error("dedupe key lost in the restart")
	}
	d1 := f.claimOne("a", at(40), "m1.a")
	checkMessage(t, &d1.Message, m1)
	f.claimNone("b", at(499))
	d2 := f.claimOne("b", at(500), "m2.b")
	if d2.Attempt != 2 || d2.LastStatus != 502 || d2.LastError != "bad gateway" {
		t.Errorf("retried delivery after restart: Attempt %d, LastStatus %d, LastError %q", d2.Attempt, d2.LastStatus, d2.LastError)
	}
	dead := f.getDead("m3.c")
	if !dead.DeadAt.Equal(at(20)) || dead.LastStatus != 404 || dead.LastError != "not found" {
		t.Errorf("dead letter after restart: DeadAt %v, LastStatus %d, LastError %q", dead.DeadAt, dead.LastStatus, dead.LastError)
	}
	checkMessage(t, &dead.Message, m3)
	if n, err := f.s.Sweep(f.ctx, at(3601)); err != nil || n != 1 {
		t.Errorf("Sweep after restart = %d, %v; want 1", n, err)
	}
}

func testPing(t *testing.T, f *fixture) {
	if err := f.s.Ping(f.ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// enqueueLeased enqueues m with the leased targets claimed at m.ReceivedAt and checks what comes back.
func (f *fixture) enqueueLeased(m *relay.Message, key string, leased ...string) []*relay.Delivery {
	f.t.Helper()
	dup, claimed, err := f.s.EnqueueLeased(f.ctx, m, key, hour, lease, leased)
	if err != nil || dup {
		f.t.Fatalf("EnqueueLeased(%s, %v) = duplicate %v, %v", m.ID, leased, dup, err)
	}
	if len(claimed) != len(leased) {
		f.t.Fatalf("EnqueueLeased(%s, %v) returned %d deliveries, want %d", m.ID, leased, len(claimed), len(leased))
	}
	for i, d := range claimed {
		if d.ID != relay.DeliveryID(m.ID, leased[i]) || d.Target != leased[i] || d.Attempt != 1 || d.Lease == "" ||
			!d.DueAt.Equal(m.ReceivedAt.Add(lease)) || d.Recovered {
			f.t.Fatalf("EnqueueLeased(%s): delivery %d = %+v, want %s, attempt 1, a lease, due at the lease expiry",
				m.ID, i, d, relay.DeliveryID(m.ID, leased[i]))
		}
		checkMessage(f.t, &d.Message, m)
	}
	return claimed
}

// The leased targets' deliveries are the caller's: no claim finds them while the lease runs, and
// the returned lease settles them. The other targets' are queued as by Enqueue.
func testEnqueueLeased(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a", "b", "c")
	claimed := f.enqueueLeased(m, "k1", "a", "c")
	f.claimNone("a", at(30))
	f.claimNone("c", at(30))
	f.wantNextDue("a", at(0).Add(lease))
	if n, err := f.s.Depth(f.ctx, "a"); err != nil || n != 1 {
		t.Errorf("Depth(a) = %d, %v, want 1: a leased delivery is still in the queue", n, err)
	}
	b := f.claimOne("b", at(1), "m1.b")
	if b.Attempt != 1 {
		t.Errorf("b: Attempt %d, want 1", b.Attempt)
	}
	checkMessage(t, &b.Message, m)
	f.ack(claimed[0])
	f.wantEmpty("a")
	f.retry(claimed[1], at(40), relay.Failure{Status: 503, Error: "busy"})
	c := f.claimOne("c", at(40), "m1.c")
	if c.Attempt != 2 || c.LastStatus != 503 || c.Recovered {
		t.Errorf("c after a retry: Attempt %d, LastStatus %d, Recovered %v, want 2, 503, false", c.Attempt, c.LastStatus, c.Recovered)
	}
	checkMessage(t, &c.Message, m)
	f.ack(c)
	f.ack(b)
	if !f.enqueue(msg("m2", at(50), "a"), "k1", hour) {
		t.Error("the dedupe key of an EnqueueLeased message was not held")
	}
}

// A holder that never settles gives the delivery up when the lease expires, as after a Claim.
func testEnqueueLeasedExpires(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a")
	d := f.enqueueLeased(m, "", "a")[0]
	again := f.claimOne("a", at(0).Add(lease), "m1.a")
	if again.Attempt != 2 || !again.Recovered || again.Lease == d.Lease {
		t.Errorf("after the lease: Attempt %d, Recovered %v, lease reused %v, want 2, true, false",
			again.Attempt, again.Recovered, again.Lease == d.Lease)
	}
	checkMessage(t, &again.Message, m)
	wantLeaseLost(t, "Ack with the expired enqueue lease", f.s.Ack(f.ctx, d))
	f.ack(again)
	f.wantEmpty("a")
}

func testEnqueueLeasedDuplicate(t *testing.T, f *fixture) {
	f.enqueueLeased(msg("m1", at(0), "a"), "k", "a")
	dup, claimed, err := f.s.EnqueueLeased(f.ctx, msg("m2", at(1), "a"), "k", hour, lease, []string{"a"})
	if err != nil || !dup || len(claimed) != 0 {
		t.Fatalf("EnqueueLeased of a duplicate = %v, %d deliveries, %v; want duplicate and none", dup, len(claimed), err)
	}
	if n, err := f.s.Depth(f.ctx, "a"); err != nil || n != 1 {
		t.Errorf("Depth(a) = %d, %v, want 1", n, err)
	}
}

func testEnqueueLeasedBadArguments(t *testing.T, f *fixture) {
	for _, tc := range []struct {
		name   string
		lease  time.Duration
		leased []string
	}{
		{"target not of the message", lease, []string{"z"}},
		{"target twice", lease, []string{"a", "a"}},
		{"no lease", 0, []string{"a"}},
	} {
		if _, _, err := f.s.EnqueueLeased(f.ctx, msg("m1", at(0), "a", "b"), "", 0, tc.lease, tc.leased); err == nil {
			t.Errorf("%s: EnqueueLeased = nil error", tc.name)
		}
	}
	f.wantEmpty("a")
	f.wantEmpty("b")
}

// A process that stored a delivery leased to itself and died leaves it to be claimed again: at
// open already (embedded) or when the lease expires (Redis).
func testRestartRecoversEnqueueLease(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a")
	f.enqueueLeased(m, "", "a")
	if err := f.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.s = f.reopen(t)
	again := f.claimOne("a", at(0).Add(lease+time.Second), "m1.a")
	if again.Attempt != 2 || !again.Recovered {
		t.Errorf("after the crash: Attempt %d, Recovered %v, want 2, true", again.Attempt, again.Recovered)
	}
	checkMessage(t, &again.Message, m)
	f.ack(again)
	f.wantEmpty("a")
}

// The message is stored once for all its targets: acking one delivery, or dropping one dead
// letter, leaves it whole for the others.
func testMessageOutlivesFirstAck(t *testing.T, f *fixture) {
	m := msg("m1", at(0), "a", "b", "c")
	f.mustEnqueue(m, "", 0)
	f.ack(f.claimOne("a", at(1), "m1.a"))
	f.bury(f.claimOne("b", at(1), "m1.b"), at(2), relay.Failure{Status: 400, Error: "no"})
	checkMessage(t, &f.getDead("m1.b").Message, m)
	c := f.claimOne("c", at(3), "m1.c")
	checkMessage(t, &c.Message, m)
	f.ack(c)
	checkMessage(t, &f.getDead("m1.b").Message, m)
	if err := f.s.ReplayDead(f.ctx, "m1.b", at(4)); err != nil {
		t.Fatalf("ReplayDead: %v", err)
	}
	b := f.claimOne("b", at(4), "m1.b")
	checkMessage(t, &b.Message, m)
	f.ack(b)
	f.wantEmpty("b")

	// Dropping a dead letter keeps the message while another delivery still needs it.
	m2 := msg("m2", at(10), "a", "b")
	f.mustEnqueue(m2, "", 0)
	f.bury(f.claimOne("a", at(11), "m2.a"), at(12), relay.Failure{Status: 400, Error: "no"})
	if err := f.s.DropDead(f.ctx, "m2.a"); err != nil {
		t.Fatalf("DropDead: %v", err)
	}
	b2 := f.claimOne("b", at(13), "m2.b")
	checkMessage(t, &b2.Message, m2)
	f.ack(b2)
	f.wantEmpty("b")
}
