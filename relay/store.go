package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Message is one webhook as accepted from a sender: the body byte for byte plus what the relay
// learned about it. It is immutable once stored.
type Message struct {
	ID          string
	Route       string
	Provider    string
	JobID       string
	JobStatus   string
	ContentType string
	SourceAddr  string
	ReceivedAt  time.Time
	Body        []byte
	// Headers are the sender's headers that the route forwards to targets (Route.ForwardHeaders).
	Headers http.Header
	// Targets names every target the message fans out to; the store keeps one delivery per target.
	Targets []string
}

// DeliveryID is the stable identifier of a message's delivery to one target. Targets dedupe on it.
func DeliveryID(messageID, target string) string { return messageID + "." + target }

// Delivery is one message on its way to one target.
type Delivery struct {
	ID      string
	Target  string
	Message Message
	// Attempt counts claims: the first claim makes it 1. A claim that is never acknowledged (a crash)
	// still counts, so that a poison message cannot loop forever.
	Attempt int
	DueAt   time.Time
	// Lease is set by Claim and must be presented to Ack, Retry and Bury. A delivery whose lease
	// expired and was claimed again carries a new one; the old holder then gets ErrLeaseLost.
	Lease string
	// Recovered is set by Claim when the delivery's previous lease ran out unsettled: its holder
	// died or stalled. Monitoring counts these.
	Recovered  bool
	LastStatus int
	LastError  string
	DeadAt     time.Time
	// Tried is the attempt that Ack, Retry or Bury settles: a store with history on records it
	// (docs/DESIGN.md section 2.5); without history it is ignored. Nil records nothing.
	Tried *Attempt
}

// Attempt is one try at delivering, as history keeps it.
type Attempt struct {
	Number   int
	Start    time.Time
	Duration time.Duration
	Status   int // 0: no HTTP answer
	Error    string
	Response []byte // the first MaxAttemptResponse bytes of the answer's body
}

// MaxAttemptResponse is how much of a target's answer an attempt keeps.
const MaxAttemptResponse = 1024

// Delivery states in history (docs/DESIGN.md section 2.1). The first three are live.
const (
	StateQueued    = "queued"
	StateInFlight  = "in_flight"
	StateRetrying  = "retrying"
	StateDelivered = "delivered"
	StateDead      = "dead"
)

// validState reports whether s names a delivery state.
func validState(s string) bool {
	switch s {
	case StateQueued, StateInFlight, StateRetrying, StateDelivered, StateDead:
		return true
	}
	return false
}

// LiveState is the state of a delivery in its target's due index at now: leased with the lease
// running, waiting after a failure, or due.
func LiveState(leased, failed bool, due, now time.Time) string {
	switch {
	case leased && due.After(now):
		return StateInFlight
	case failed && due.After(now):
		return StateRetrying
	}
	return StateQueued
}

// MessageRecord is a message as history shows it: the message, its duplicates and each target's
// delivery. Body is only filled in when asked for.
type MessageRecord struct {
	Message
	Size            int // of the body, also when Body is not filled in
	Duplicates      int
	LastDuplicateAt time.Time
	Deliveries      []*DeliveryRecord
}

// DeliveryRecord is one delivery in history.
type DeliveryRecord struct {
	ID          string
	Target      string
	State       string
	Attempt     int
	DueAt       time.Time // live deliveries only
	LastStatus  int
	LastError   string
	DeliveredAt time.Time
	DeadAt      time.Time
	Attempts    []Attempt // GetMessage only
}

// MessageFilter selects messages in history. Zero fields match everything.
type MessageFilter struct {
	Route  string
	Target string // a message with a delivery to it
	JobID  string
	State  string // a message with a delivery in this state
	Since  time.Time
	Until  time.Time // received before
	Cursor string    // from the previous page's next cursor
	Limit  int       // 0 means the store's default (100)
}

// Match reports whether rec satisfies the filter, ignoring the cursor and the limit. The
// deliveries' states must be filled in.
func (f MessageFilter) Match(rec *MessageRecord) bool {
	m := &rec.Message
	if (f.Route != "" && m.Route != f.Route) || (f.JobID != "" && m.JobID != f.JobID) ||
		(!f.Since.IsZero() && m.ReceivedAt.Before(f.Since)) || (!f.Until.IsZero() && !m.ReceivedAt.Before(f.Until)) {
		return false
	}
	if f.Target == "" && f.State == "" {
		return true
	}
	for _, d := range rec.Deliveries {
		if (f.Target == "" || d.Target == f.Target) && (f.State == "" || d.State == f.State) {
			return true
		}
	}
	return false
}

// History is what the inspector needs. A store with history off lists nothing and finds nothing
// but live deliveries' messages and dead letters.
type History interface {
	// ListMessages lists messages matching f, newest first, without bodies or attempts. next is
	// the cursor of the following page, "" at the end. A page may be short (a store bounds the
	// entries one call scans) and still have a next cursor.
	ListMessages(ctx context.Context, f MessageFilter, now time.Time) (page []*MessageRecord, next string, err error)
	// GetMessage returns message id with every delivery and its attempts (ErrNotFound if absent).
	GetMessage(ctx context.Context, id string, now time.Time) (*MessageRecord, error)
	// Redeliver makes the delivered or dead deliveries of message id (only target's, when target
	// is set) due at now with their IDs and attempt counts unchanged, and returns their IDs.
	// ErrNotFound: no such message or target; ErrLive: the delivery is still on its way.
	Redeliver(ctx context.Context, id, target string, now time.Time) ([]string, error)
}

// Failure is the outcome of an attempt that did not succeed.
type Failure struct {
	Status int    // HTTP status from the target, 0 when none was received
	Error  string // what went wrong, for operators
}

// DeadFilter selects dead letters. Zero fields match everything.
type DeadFilter struct {
	Route  string
	Target string
	Since  time.Time // dead at or after
	After  string    // cursor: delivery ID to continue after
	Limit  int       // 0 means the store's default (100)
}

// Match reports whether d satisfies the filter, ignoring After and Limit.
func (f DeadFilter) Match(d *Delivery) bool {
	return (f.Route == "" || d.Message.Route == f.Route) &&
		(f.Target == "" || d.Target == f.Target) &&
		(f.Since.IsZero() || !d.DeadAt.Before(f.Since))
}

// Store errors. Backends wrap them with %w.
var (
	// ErrLeaseLost: the delivery's lease expired and another claim owns it, or it is gone.
	ErrLeaseLost = errors.New("lease lost")
	// ErrNotFound: no such dead letter.
	ErrNotFound = errors.New("not found")
	// ErrLive: a redelivery of a delivery that is still queued, in flight or retrying.
	ErrLive = errors.New("delivery is still on its way")
)

// ValidateEnqueue checks an Enqueue or EnqueueLeased call's arguments; every backend refuses the
// same bad input.
func ValidateEnqueue(m *Message, dedupeKey string, ttl, lease time.Duration, leased []string) error {
	switch {
	case m == nil:
		return errors.New("nil message")
	case m.ID == "":
		return errors.New("message without ID")
	case m.ReceivedAt.IsZero():
		return fmt.Errorf("message %s without ReceivedAt", m.ID)
	case len(m.Targets) == 0:
		return fmt.Errorf("message %s without targets", m.ID)
	case dedupeKey != "" && ttl <= 0:
		return fmt.Errorf("message %s: dedupe key with ttl %v", m.ID, ttl)
	}
	for i, t := range m.Targets {
		if t == "" {
			return fmt.Errorf("message %s: empty target", m.ID)
		}
		for _, u := range m.Targets[:i] {
			if t == u {
				return fmt.Errorf("message %s: target %q twice", m.ID, t)
			}
		}
	}
	if len(leased) > 0 && lease <= 0 {
		return fmt.Errorf("message %s: leased targets with lease %v", m.ID, lease)
	}
	for i, t := range leased {
		if !slices.Contains(m.Targets, t) || slices.Contains(leased[:i], t) {
			return fmt.Errorf("message %s: leased target %q is not one of its targets, or named twice", m.ID, t)
		}
	}
	return nil
}

// Enqueuer is what ingress needs: the dedupe claim and the enqueue as one atomic, durable operation.
type Enqueuer interface {
	// Enqueue stores m with one delivery per target, due at m.ReceivedAt, unless dedupeKey is
	// non-empty and already held (then it stores nothing and reports duplicate). A held key expires
	// ttl after it was claimed. When Enqueue returns nil the message is durable.
	Enqueue(ctx context.Context, m *Message, dedupeKey string, ttl time.Duration) (duplicate bool, err error)
	// EnqueueLeased is Enqueue that also stores the deliveries to the targets named in leased as
	// claimed by the caller, as a Claim at m.ReceivedAt with lease would (Attempt 1, a lease token,
	// due again at m.ReceivedAt+lease), and returns them, so that the caller can deliver them at
	// once without a Claim write (docs/DESIGN.md section 2.2). A duplicate returns none. With an
	// error, claimed may still name deliveries that were stored but whose durability the store
	// could not confirm (redisstore's MinReplicas): the caller delivers them and answers 503.
	EnqueueLeased(ctx context.Context, m *Message, dedupeKey string, ttl, lease time.Duration, leased []string) (duplicate bool, claimed []*Delivery, err error)
}

// Queue is what delivery workers need.
type Queue interface {
	// Claim leases up to max deliveries of target that are due at now, oldest due first, and makes
	// them due again at now+lease so that a holder that dies gives them up. It increments Attempt.
	Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]*Delivery, error)
	// NextDue reports when the earliest delivery of target is due (leased ones included, at their
	// lease expiry); ok is false when target has none.
	NextDue(ctx context.Context, target string) (at time.Time, ok bool, err error)
	// Depth counts target's deliveries, leased ones included.
	Depth(ctx context.Context, target string) (int, error)
	// Ack removes a delivered delivery.
	Ack(ctx context.Context, d *Delivery) error
	// Retry releases the lease and makes d due again at at, recording the failure.
	Retry(ctx context.Context, d *Delivery, at time.Time, f Failure) error
	// Bury moves d to the dead letters, recording the failure and now as its death time.
	Bury(ctx context.Context, d *Delivery, now time.Time, f Failure) error
}

// DeadLetters is what operators need to repair what never got through.
type DeadLetters interface {
	ListDead(ctx context.Context, f DeadFilter) ([]*Delivery, error)
	GetDead(ctx context.Context, id string) (*Delivery, error)
	// ReplayDead puts a dead letter back in its target's queue, due at now, with Attempt reset.
	ReplayDead(ctx context.Context, id string, now time.Time) error
	DropDead(ctx context.Context, id string) error
	// CountDead counts the dead letters held now.
	CountDead(ctx context.Context) (int, error)
}

// Store is the whole contract a backend implements (docs/DESIGN.md section 2.6); relay/storetest
// checks it.
type Store interface {
	Enqueuer
	Queue
	DeadLetters
	History
	// Sweep deletes dedupe keys that expired at now and, with history on, messages received
	// longer than the retention before now whose deliveries are all delivered, with their
	// deliveries and attempts. It reports how many keys and messages it removed.
	Sweep(ctx context.Context, now time.Time) (int, error)
	// Ping reports whether the store can serve; readiness follows it.
	Ping(ctx context.Context) error
	Close() error
}

// WriteStats are a store's figures on how it writes, counted since it opened; a store that keeps
// them has a WriteStats() WriteStats method, and /metrics shows them (docs/OPERATIONS.md). Writes
// per commit is the group commit's batch size, and time per commit what the disk or Redis takes.
type WriteStats struct {
	// Commits: group commits that succeeded. Embedded: transactions of the write loop, which
	// carries every write but sweeps. Redis: pipelines of the hot path's scripts (enqueue, ack,
	// retry, bury) that Redis answered; claims and the admin API's writes go on their own.
	Commits uint64
	// Writes: the callers' writes those commits carried.
	Writes uint64
	// Time: those commits from start to end. Embedded: applying, writing pages, syncing the file;
	// Redis: from sending the pipeline to its last answer, a WAIT for replicas included.
	Time time.Duration
	// PagesCounted says the store writes pages (embedded), and Pages counts the page writes of
	// all its write transactions, sweeps included (one per page or run of overflow pages, and the
	// meta page).
	PagesCounted bool
	Pages        uint64
}
