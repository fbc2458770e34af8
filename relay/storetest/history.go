package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// The history tests (docs/DESIGN.md section 2.5) run on stores with history on, retention long.
// Their message IDs sort like their received times, as ingress makes them.

var historyTests = []suiteTest{
	{"HistoryKeepsDeliveredAndAttempts", testHistoryKeepsDeliveredAndAttempts},
	{"HistoryStates", testHistoryStates},
	{"HistoryDuplicates", testHistoryDuplicates},
	{"HistoryList", testHistoryList},
	{"HistoryRedeliver", testHistoryRedeliver},
	{"HistorySweep", testHistorySweep},
	{"HistoryDropDead", testHistoryDropDead},
}

// hid is a message ID that sorts by i.
func hid(i int) string { return fmt.Sprintf("h%04d", i) }

func (f *fixture) getMessage(id string, now time.Time) *relay.MessageRecord {
	f.t.Helper()
	rec, err := f.s.GetMessage(f.ctx, id, now)
	if err != nil {
		f.t.Fatalf("GetMessage(%s): %v", id, err)
	}
	if rec.ID != id {
		f.t.Fatalf("GetMessage(%s) returned %s", id, rec.ID)
	}
	return rec
}

func (f *fixture) wantNoMessage(id string) {
	f.t.Helper()
	if rec, err := f.s.GetMessage(f.ctx, id, at(0)); !errors.Is(err, relay.ErrNotFound) {
		f.t.Fatalf("GetMessage(%s) = %+v, %v; want ErrNotFound", id, rec, err)
	}
}

// delivery returns rec's delivery to target.
func delivery(t *testing.T, rec *relay.MessageRecord, target string) *relay.DeliveryRecord {
	t.Helper()
	for _, d := range rec.Deliveries {
		if d.Target == target {
			return d
		}
	}
	t.Fatalf("message %s has no delivery to %s: %+v", rec.ID, target, rec.Deliveries)
	return nil
}

// tried sets the attempt d settles with.
func tried(d *relay.Delivery, start time.Time, dur time.Duration, status int, errText, resp string) *relay.Delivery {
	d.Tried = &relay.Attempt{Number: d.Attempt, Start: start, Duration: dur, Status: status, Error: errText,
		Response: []byte(resp)}
	return d
}

func checkAttempts(t *testing.T, d *relay.DeliveryRecord, want []relay.Attempt) {
	t.Helper()
	if len(d.Attempts) != len(want) {
		t.Fatalf("%s has %d attempts, want %d: %+v", d.ID, len(d.Attempts), len(want), d.Attempts)
	}
	for i, a := range d.Attempts {
		w := want[i]
		if a.Number != w.Number || !a.Start.Equal(w.Start) || a.Duration != w.Duration || a.Status != w.Status ||
			a.Error != w.Error || !bytes.Equal(a.Response, w.Response) {
			t.Errorf("%s attempt %d = %+v\nwant %+v", d.ID, i, a, w)
		}
	}
}

func testHistoryKeepsDeliveredAndAttempts(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "a", "b")
	f.mustEnqueue(m, "k", hour)
	long := strings.Repeat("x", relay.MaxAttemptResponse+500)
	f.ack(tried(f.claimOne("a", at(1), m.ID+".a"), at(1), 2*time.Second, 200, "", "ok"))
	f.retry(tried(f.claimOne("b", at(1), m.ID+".b"), at(1), time.Second, 503, "status 503", long),
		at(60), relay.Failure{Status: 503, Error: "status 503"})
	f.claimNone("a", at(1e6))
	if n, err := f.s.Depth(f.ctx, "a"); err != nil || n != 0 {
		t.Fatalf("Depth(a) after ack = %d, %v; want 0", n, err)
	}
	b := f.claimOne("b", at(60), m.ID+".b")
	f.bury(tried(b, at(60), 3*time.Second, 0, "connection refused", ""), at(63),
		relay.Failure{Error: "connection refused"})

	check := func(rec *relay.MessageRecord) {
		t.Helper()
		checkMessage(t, &rec.Message, m)
		if rec.Size != len(m.Body) {
			t.Errorf("Size = %d, want %d", rec.Size, len(m.Body))
		}
		a := delivery(t, rec, "a")
		if a.State != relay.StateDelivered || !a.DeliveredAt.Equal(at(3)) || a.Attempt != 1 {
			t.Errorf("delivery a = %+v, want delivered at %v after 1 attempt", a, at(3))
		}
		checkAttempts(t, a, []relay.Attempt{{Number: 1, Start: at(1), Duration: 2 * time.Second, Status: 200,
			Response: []byte("ok")}})
		bd := delivery(t, rec, "b")
		if bd.State != relay.StateDead || !bd.DeadAt.Equal(at(63)) || bd.Attempt != 2 ||
			bd.LastError != "connection refused" || !bd.DueAt.IsZero() {
			t.Errorf("delivery b = %+v, want dead at %v after 2 attempts", bd, at(63))
		}
		checkAttempts(t, bd, []relay.Attempt{
			{Number: 1, Start: at(1), Duration: time.Second, Status: 503, Error: "status 503",
				Response: []byte(long[:relay.MaxAttemptResponse])},
			{Number: 2, Start: at(60), Duration: 3 * time.Second, Error: "connection refused"},
		})
	}
	check(f.getMessage(m.ID, at(100)))
	if err := f.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.s = f.reopen(t)
	check(f.getMessage(m.ID, at(100)))
	// A settle without an attempt (a delivery given back at shutdown) records none.
	m2 := msg(hid(2), at(0), "a")
	f.mustEnqueue(m2, "", 0)
	f.retry(f.claimOne("a", at(1), m2.ID+".a"), at(1), relay.Failure{Error: "shut down"})
	if got := delivery(t, f.getMessage(m2.ID, at(1)), "a"); len(got.Attempts) != 0 {
		t.Errorf("attempts after a release = %+v, want none", got.Attempts)
	}
}

func testHistoryStates(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "q", "f", "r")
	f.mustEnqueue(m, "", 0)
	f.claimOne("f", at(1), m.ID+".f") // leased until at(61)
	f.retry(f.claimOne("r", at(1), m.ID+".r"), at(30), relay.Failure{Status: 500})
	for _, tc := range []struct {
		now  time.Time
		want map[string]string
		due  map[string]time.Time
	}{
		{at(2), map[string]string{"q": relay.StateQueued, "f": relay.StateInFlight, "r": relay.StateRetrying},
			map[string]time.Time{"q": at(0), "f": at(61), "r": at(30)}},
		// A retry that came due and a lease that ran out are queued again.
		{at(100), map[string]string{"q": relay.StateQueued, "f": relay.StateQueued, "r": relay.StateQueued},
			map[string]time.Time{"q": at(0), "f": at(61), "r": at(30)}},
	} {
		rec := f.getMessage(m.ID, tc.now)
		for target, want := range tc.want {
			d := delivery(t, rec, target)
			if d.State != want || !d.DueAt.Equal(tc.due[target]) {
				t.Errorf("at %v: %s is %s due %v, want %s due %v", tc.now, target, d.State, d.DueAt, want, tc.due[target])
			}
		}
	}
}

func testHistoryDuplicates(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "a")
	f.mustEnqueue(m, "k", hour)
	if rec := f.getMessage(m.ID, at(1)); rec.Duplicates != 0 || !rec.LastDuplicateAt.IsZero() {
		t.Fatalf("fresh message: %d duplicates, last %v", rec.Duplicates, rec.LastDuplicateAt)
	}
	for _, sec := range []int{5, 7} {
		if !f.enqueue(msg(hid(sec), at(sec), "a"), "k", hour) {
			t.Fatalf("enqueue at %d not a duplicate", sec)
		}
	}
	f.enqueue(msg(hid(9), at(9), "x"), "other", hour)
	rec := f.getMessage(m.ID, at(10))
	if rec.Duplicates != 2 || !rec.LastDuplicateAt.Equal(at(7)) {
		t.Fatalf("after two duplicates: %d duplicates, last %v; want 2, %v", rec.Duplicates, rec.LastDuplicateAt, at(7))
	}
	f.wantNoMessage(hid(5))
	// The delivery being settled changes nothing: duplicates are the message's.
	f.ack(f.claimOne("a", at(10), m.ID+".a"))
	f.enqueue(msg(hid(11), at(11), "a"), "k", hour)
	if rec := f.getMessage(m.ID, at(12)); rec.Duplicates != 3 {
		t.Fatalf("duplicate after the ack: %d duplicates, want 3", rec.Duplicates)
	}
}

// listIDs lists with fl and returns the IDs and the next cursor.
func (f *fixture) listIDs(fl relay.MessageFilter, now time.Time) ([]string, string) {
	f.t.Helper()
	page, next, err := f.s.ListMessages(f.ctx, fl, now)
	if err != nil {
		f.t.Fatalf("ListMessages(%+v): %v", fl, err)
	}
	out := make([]string, len(page))
	for i, rec := range page {
		if rec.Body != nil {
			f.t.Errorf("ListMessages returned the body of %s", rec.ID)
		}
		if rec.Size == 0 {
			f.t.Errorf("ListMessages: %s without its size", rec.ID)
		}
		out[i] = rec.ID
	}
	return out, next
}

func testHistoryList(t *testing.T, f *fixture) {
	// h0001..h0006 received 10 s apart; odd ones on route r2 with job "j-odd"; 2 and 4 delivered
	// to a, 6 dead at a; each has a second target b, queued.
	for i := 1; i <= 6; i++ {
		m := msg(hid(i), at(10*i), "a", "b")
		if i%2 == 1 {
			m.Route, m.JobID = "r2", "j-odd"
		}
		f.mustEnqueue(m, "", 0)
		d := f.claimOne("a", at(10*i), hid(i)+".a") // odd ones stay in flight until the end
		switch i {
		case 2, 4:
			f.ack(d)
		case 6:
			f.bury(d, at(61), relay.Failure{Status: 410})
		}
	}
	now := at(62)

	// Paging, newest first, down to the end.
	var got []string
	cursor := ""
	for range 10 {
		page, next := f.listIDs(relay.MessageFilter{Limit: 4, Cursor: cursor}, now)
		got = append(got, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	if want := []string{hid(6), hid(5), hid(4), hid(3), hid(2), hid(1)}; !slices.Equal(got, want) {
		t.Fatalf("pages = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		name string
		f    relay.MessageFilter
		want []int
	}{
		{"route", relay.MessageFilter{Route: "r2"}, []int{5, 3, 1}},
		{"job", relay.MessageFilter{JobID: "j-odd"}, []int{5, 3, 1}},
		{"job and route", relay.MessageFilter{JobID: "j-odd", Route: "r1"}, nil},
		{"unknown job", relay.MessageFilter{JobID: "nope"}, nil},
		{"delivered", relay.MessageFilter{State: relay.StateDelivered}, []int{4, 2}},
		{"dead", relay.MessageFilter{State: relay.StateDead}, []int{6}},
		{"in flight at a", relay.MessageFilter{State: relay.StateInFlight, Target: "a"}, []int{5, 3, 1}},
		{"queued at a", relay.MessageFilter{State: relay.StateQueued, Target: "a"}, nil},
		{"target b", relay.MessageFilter{Target: "b"}, []int{6, 5, 4, 3, 2, 1}},
		{"unknown target", relay.MessageFilter{Target: "zz"}, nil},
		{"since", relay.MessageFilter{Since: at(40)}, []int{6, 5, 4}},
		{"until", relay.MessageFilter{Until: at(30)}, []int{2, 1}},
		{"since and until", relay.MessageFilter{Since: at(20), Until: at(50)}, []int{4, 3, 2}},
		{"job with limit", relay.MessageFilter{JobID: "j-odd", Limit: 2}, []int{5, 3}},
	} {
		want := make([]string, len(tc.want))
		for i, n := range tc.want {
			want[i] = hid(n)
		}
		// The cursor of the last page of a filter is opaque: follow it to the end.
		var got []string
		fl := tc.f
		for range 10 {
			page, next := f.listIDs(fl, now)
			got = append(got, page...)
			if next == "" || (tc.f.Limit > 0 && len(got) >= tc.f.Limit) {
				break
			}
			fl.Cursor = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, want)
		}
	}
}

func testHistoryRedeliver(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "a", "b", "c")
	f.mustEnqueue(m, "", 0)
	f.ack(f.claimOne("a", at(1), m.ID+".a"))
	f.bury(f.claimOne("b", at(1), m.ID+".b"), at(2), relay.Failure{Status: 400})
	// c stays queued.

	if _, err := f.s.Redeliver(f.ctx, m.ID, "c", at(3)); !errors.Is(err, relay.ErrLive) {
		t.Fatalf("Redeliver of a queued delivery = %v, want ErrLive", err)
	}
	if _, err := f.s.Redeliver(f.ctx, m.ID, "zz", at(3)); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("Redeliver to an unknown target = %v, want ErrNotFound", err)
	}
	if _, err := f.s.Redeliver(f.ctx, "nope", "", at(3)); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("Redeliver of an unknown message = %v, want ErrNotFound", err)
	}
	done, err := f.s.Redeliver(f.ctx, m.ID, "", at(5))
	if err != nil {
		t.Fatalf("Redeliver: %v", err)
	}
	if want := []string{m.ID + ".a", m.ID + ".b"}; !slices.Equal(done, want) {
		t.Fatalf("Redeliver = %v, want %v", done, want)
	}
	f.wantNotDead(m.ID + ".b")
	rec := f.getMessage(m.ID, at(5))
	for _, target := range []string{"a", "b", "c"} {
		if d := delivery(t, rec, target); d.State != relay.StateQueued {
			t.Errorf("after redeliver %s is %s, want queued", target, d.State)
		}
	}
	f.claimNone("a", at(4))
	for _, target := range []string{"a", "b"} {
		d := f.claimOne(target, at(5), m.ID+"."+target)
		if d.Attempt != 2 {
			t.Errorf("redelivered %s: Attempt %d, want 2 (the count continues)", d.ID, d.Attempt)
		}
		checkMessage(t, &d.Message, m)
		f.ack(d)
	}
	if d := delivery(t, f.getMessage(m.ID, at(6)), "b"); d.State != relay.StateDelivered {
		t.Errorf("b after its redelivery was acked: %s", d.State)
	}
}

func testHistorySweep(t *testing.T, f *fixture) {
	// 1: delivered (swept); 2: a live delivery (kept); 3: dead (kept); 5: delivered to a, b
	// retried and then delivered (swept); 9: delivered but new (kept).
	for _, i := range []int{1, 2, 3, 5, 9} {
		recv := at(i)
		if i == 9 {
			recv = at(7200)
		}
		m := msg(hid(i), recv, "a", "b")
		switch i {
		case 2:
			m.Targets = []string{"c"}
		case 3:
			m.Targets = []string{"a"}
		}
		f.mustEnqueue(m, "k"+hid(i), hour)
	}
	f.ack(tried(f.claimOne("a", at(1), hid(1)+".a"), at(1), time.Second, 200, "", "ok"))
	f.ack(f.claimOne("b", at(1), hid(1)+".b"))
	f.bury(f.claimOne("a", at(3), hid(3)+".a"), at(3), relay.Failure{Status: 400})
	f.ack(f.claimOne("a", at(5), hid(5)+".a"))
	f.retry(tried(f.claimOne("b", at(5), hid(5)+".b"), at(5), time.Second, 500, "boom", ""), at(6),
		relay.Failure{Status: 500})
	f.ack(f.claimOne("b", at(6), hid(5)+".b"))
	for _, target := range []string{"a", "b"} {
		f.ack(f.claimOne(target, at(7200), hid(9)+"."+target))
	}
	// hid(2) stays queued at c.

	if n, err := f.s.Sweep(f.ctx, at(3600)); err != nil || n != 0 {
		t.Fatalf("Sweep before any retention ran out = %d, %v; want 0", n, err)
	}
	// At retention + 100 s the five dedupe keys have expired, and the messages received before
	// 100 s are past retention.
	now := at(100).Add(retention)
	if n, err := f.s.Sweep(f.ctx, now); err != nil || n != 5+2 {
		t.Fatalf("Sweep = %d, %v; want 5 keys + 2 messages", n, err)
	}
	f.wantNoMessage(hid(1))
	f.wantNoMessage(hid(5))
	for _, i := range []int{2, 3, 9} {
		f.getMessage(hid(i), now)
	}
	if got := f.listDead(relay.DeadFilter{}); !slices.Equal(got, []string{hid(3) + ".a"}) {
		t.Fatalf("dead letters after sweep = %v", got)
	}
	f.claimOne("c", now, hid(2)+".c")
	if ids, _ := f.listIDs(relay.MessageFilter{}, now); !slices.Equal(ids, []string{hid(9), hid(3), hid(2)}) {
		t.Fatalf("history after sweep = %v", ids)
	}
	if ids, _ := f.listIDs(relay.MessageFilter{JobID: "job-" + hid(1)}, now); len(ids) != 0 {
		t.Fatalf("job index after sweep = %v", ids)
	}
	// Nothing of a swept message is left: the same ID stores afresh, without attempts.
	m := msg(hid(1), now, "a", "b")
	f.mustEnqueue(m, "", 0)
	rec := f.getMessage(hid(1), now)
	for _, d := range rec.Deliveries {
		if d.State != relay.StateQueued || len(d.Attempts) != 0 || d.Attempt != 0 {
			t.Errorf("re-enqueued %s: %+v", d.ID, d)
		}
	}
	if n, err := f.s.Sweep(f.ctx, now); err != nil || n != 0 {
		t.Fatalf("second Sweep = %d, %v; want 0", n, err)
	}
}

func testHistoryDropDead(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "a", "b")
	f.mustEnqueue(m, "", 0)
	f.bury(tried(f.claimOne("a", at(1), m.ID+".a"), at(1), time.Second, 400, "no", ""), at(2),
		relay.Failure{Status: 400})
	f.ack(f.claimOne("b", at(1), m.ID+".b"))
	if err := f.s.DropDead(f.ctx, m.ID+".a"); err != nil {
		t.Fatalf("DropDead: %v", err)
	}
	// The message stays in history with its delivered delivery until the sweep.
	rec := f.getMessage(m.ID, at(3))
	if len(rec.Deliveries) != 1 || rec.Deliveries[0].Target != "b" {
		t.Fatalf("deliveries after drop = %+v, want only b", rec.Deliveries)
	}
	if n, err := f.s.Sweep(f.ctx, at(10).Add(retention)); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the message", n, err)
	}
	f.wantNoMessage(m.ID)
}

// testHistoryOff: with history off nothing settled is kept; the history methods still serve what
// is there, and Redeliver brings back a dead letter.
func testHistoryOff(t *testing.T, f *fixture) {
	m := msg(hid(1), at(0), "a", "b")
	f.mustEnqueue(m, "k", hour)
	f.ack(tried(f.claimOne("a", at(1), m.ID+".a"), at(1), time.Second, 200, "", "ok"))
	rec := f.getMessage(m.ID, at(2))
	if len(rec.Deliveries) != 1 || rec.Deliveries[0].Target != "b" || rec.Deliveries[0].State != relay.StateQueued {
		t.Fatalf("deliveries = %+v, want b queued only", rec.Deliveries)
	}
	if !f.enqueue(msg(hid(2), at(2), "a"), "k", hour) {
		t.Fatal("duplicate not detected")
	}
	if rec := f.getMessage(m.ID, at(2)); rec.Duplicates != 0 {
		t.Fatalf("duplicates counted with history off: %d", rec.Duplicates)
	}
	f.bury(tried(f.claimOne("b", at(3), m.ID+".b"), at(3), time.Second, 400, "no", ""), at(4),
		relay.Failure{Status: 400})
	if d := delivery(t, f.getMessage(m.ID, at(5)), "b"); d.State != relay.StateDead || len(d.Attempts) != 0 {
		t.Fatalf("dead delivery = %+v, want dead without attempts", d)
	}
	if ids, _ := f.listIDs(relay.MessageFilter{}, at(5)); len(ids) != 0 {
		t.Fatalf("ListMessages with history off = %v, want none", ids)
	}
	if _, err := f.s.Redeliver(f.ctx, m.ID, "", at(6)); err != nil {
		t.Fatalf("Redeliver of the dead letter: %v", err)
	}
	f.ack(f.claimOne("b", at(6), m.ID+".b"))
	f.wantNoMessage(m.ID)
}
