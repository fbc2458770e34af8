package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// dispatcher claims a target's due deliveries and forwards them, at most Concurrency at a time.
// The backlog stays in the store: only claimed deliveries are in memory.
type dispatcher struct {
	t       *Target
	client  *targetClient
	q       Queue
	fwd     *forwarder
	log     *slog.Logger
	now     func() time.Time
	lease   time.Duration
	poll    time.Duration // longest sleep, for work that another replica enqueued
	limiter *rate.Limiter // nil: unlimited

	wake  chan struct{} // new work in the store: look there at once
	freed chan struct{} // a slot came free
	slots chan struct{} // one token per delivery in flight
	// settling bounds the deliveries whose target has answered but whose store update (an ack in
	// the next group commit) has not landed, so that a slow store holds back new attempts rather
	// than piling up goroutines and bodies.
	settling chan struct{}
	wg       sync.WaitGroup

	// Hand-offs: deliveries that ingress stored already leased to this dispatcher (docs/DESIGN.md
	// section 2.2). Ingress reserves room before the store write, so handOff never blocks, and
	// nothing is reserved unless the claim loop runs to take it.
	handoffs chan *Delivery
	hmu      sync.Mutex
	open     bool // the claim loop runs
	reserved int  // reservations not yet taken by the loop
	// storeDue is when the store may next have due work: the loop does not look before it
	// unless woken. Zero: look now.
	dueMu    sync.Mutex
	storeDue time.Time

	attempts        func(outcome string) prometheus.Counter
	attemptSeconds  prometheus.Observer
	endToEndSeconds prometheus.Observer
	deadLetters     prometheus.Counter
	leaseRecoveries prometheus.Counter
}

func newDispatcher(t *Target, client *targetClient, q Queue, fwd *forwarder, log *slog.Logger, now func() time.Time,
	lease, poll time.Duration, m *metrics) *dispatcher {
	d := &dispatcher{
		t: t, client: client, q: q, fwd: fwd, now: now, lease: lease, poll: poll,
		attempts:        func(outcome string) prometheus.Counter { return m.attempts.WithLabelValues(t.Name, outcome) },
		attemptSeconds:  m.attemptSeconds.WithLabelValues(t.Name),
		endToEndSeconds: m.endToEndSeconds.WithLabelValues(t.Name),
		deadLetters:     m.deadLetters.WithLabelValues(t.Name),
		leaseRecoveries: m.leaseRecoveries.WithLabelValues(t.Name),
		log:             log,
		wake:            make(chan struct{}, 1),
		freed:           make(chan struct{}, 1),
		slots:           make(chan struct{}, t.Concurrency),
		settling:        make(chan struct{}, t.Concurrency),
		handoffs:        make(chan *Delivery, t.Concurrency),
	}
	if t.RateLimit > 0 {
		d.limiter = rate.NewLimiter(rate.Limit(t.RateLimit), max(t.RateBurst, 1))
	}
	return d
}

// notify wakes the dispatcher without blocking.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// reserve makes room for one hand-off, if the claim loop runs and a slot is free for it (slots in
// use plus reservations never pass the concurrency, so a hand-off does not wait and cannot crowd
// out what waits in the store); ingress then stores the delivery leased and calls handOff, or
// cancelReservation if nothing was stored.
func (d *dispatcher) reserve() bool {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	if !d.open || len(d.slots)+d.reserved >= cap(d.slots) {
		return false
	}
	d.reserved++
	return true
}

func (d *dispatcher) cancelReservation() {
	d.hmu.Lock()
	d.reserved--
	d.hmu.Unlock()
	notify(d.freed) // the slot may be claimed again
}

// handOff passes a delivery leased at enqueue to the claim loop. If the loop stopped meanwhile,
// the delivery is given back to the store, due now.
func (d *dispatcher) handOff(dl *Delivery) {
	d.hmu.Lock()
	if d.open {
		d.handoffs <- dl // room was reserved
		d.hmu.Unlock()
		return
	}
	d.reserved--
	d.hmu.Unlock()
	d.release(dl)
}

// take starts a handed-off delivery. One whose lease could run out before its attempt ends (it
// can wait only when a claim took its slot between reserve and take) is left to expire in the
// store instead, where a claim finds it: delivering it now could race that claim.
func (d *dispatcher) take(work context.Context, dl *Delivery) {
	d.hmu.Lock()
	d.reserved--
	d.hmu.Unlock()
	if d.now().Add(d.t.Timeout).After(dl.DueAt) {
		d.noteDue(dl.DueAt)
		return
	}
	d.start(work, dl)
}

// noteDue tells the loop that the store has a delivery due at at.
func (d *dispatcher) noteDue(at time.Time) {
	d.dueMu.Lock()
	if d.storeDue.IsZero() || at.Before(d.storeDue) {
		d.storeDue = at
	}
	d.dueMu.Unlock()
	notify(d.freed)
}

// start runs one delivery in a slot, which the caller has checked is free.
func (d *dispatcher) start(work context.Context, dl *Delivery) {
	d.slots <- struct{}{}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// free trades the slot for a settling token once the target has answered; the token goes
		// when the store update is done. Paths that never call it give the slot back at the end.
		settling := false
		free := func() {
			if !settling {
				settling = true
				d.settling <- struct{}{}
				<-d.slots
				notify(d.freed)
			}
		}
		defer func() {
			if settling {
				<-d.settling
			} else {
				<-d.slots
				notify(d.freed)
			}
		}()
		d.deliver(work, dl, free)
	}()
}

// run takes hand-offs and claims due deliveries from the store, and starts them, until ctx is
// done. Deliveries run under work, which outlives ctx so that a shutdown can give them a grace
// period; wait for them with d.wg. Hand-offs still waiting when ctx ends are given back to the
// store. The starter opens hand-offs first (openHandoffs).
func (d *dispatcher) run(ctx, work context.Context) {
	defer d.close()
	d.dueMu.Lock()
	d.storeDue = time.Time{} // look in the store at once
	d.dueMu.Unlock()
	const storeErrorPause = time.Second
	for ctx.Err() == nil {
		d.hmu.Lock()
		slotsFree := cap(d.slots) - len(d.slots)
		free := slotsFree - d.reserved // what claims may take: reserved slots are for hand-offs
		d.hmu.Unlock()
		if slotsFree <= 0 {
			d.sleep(ctx, 0, d.freed, false)
			continue
		}
		select {
		case dl := <-d.handoffs:
			d.take(work, dl)
			continue
		default:
		}
		if free <= 0 {
			if dl := d.sleep(ctx, 0, d.freed, true); dl != nil {
				d.take(work, dl)
			}
			continue
		}
		now := d.now()
		d.dueMu.Lock()
		due := d.storeDue
		lookNow := !due.After(now)
		if lookNow {
			d.storeDue = now.Add(d.poll) // unless told otherwise while we look
		}
		d.dueMu.Unlock()
		if !lookNow {
			if dl := d.sleep(ctx, due.Sub(now), d.freed, true); dl != nil {
				d.take(work, dl)
			}
			continue
		}
		batch, err := d.q.Claim(ctx, d.t.Name, now, d.lease, free)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("claim failed", "target", d.t.Name, "error", err)
				d.noteDue(now.Add(storeErrorPause))
			}
			continue
		}
		for _, dl := range batch {
			if dl.Recovered {
				d.leaseRecoveries.Inc()
			}
			d.start(work, dl)
		}
		if len(batch) == free {
			d.noteDue(now) // there may be more due
			continue
		}
		if at, ok, err := d.q.NextDue(ctx, d.t.Name); err == nil && ok {
			d.noteDue(at)
		}
	}
}

// openHandoffs lets ingress hand deliveries to the loop; the loop's starter calls it before it
// starts the loop, so that webhooks taken from then on are handed off.
func (d *dispatcher) openHandoffs() {
	d.hmu.Lock()
	d.open = true
	d.hmu.Unlock()
}

// close stops hand-offs and gives back those not taken.
func (d *dispatcher) close() {
	d.hmu.Lock()
	d.open = false
	d.hmu.Unlock()
	for {
		select {
		case dl := <-d.handoffs:
			d.hmu.Lock()
			d.reserved--
			d.hmu.Unlock()
			d.release(dl)
		default:
			return
		}
	}
}

// sleep waits for wait (0: no timer), new work, the extra channel, a hand-off when handoffs is
// set (then it returns it), or the end of ctx. New work in the store makes the loop look there at
// once.
func (d *dispatcher) sleep(ctx context.Context, wait time.Duration, extra chan struct{}, handoffs bool) *Delivery {
	var timer <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	var hc chan *Delivery
	if handoffs {
		hc = d.handoffs
	}
	select {
	case <-ctx.Done():
	case <-d.wake:
		d.noteDue(d.now())
	case <-extra:
	case <-timer:
	case dl := <-hc:
		return dl
	}
	return nil
}

// deliver makes one attempt and records its outcome: ack, retry at backoff, or dead letter. It
// calls free once the target has answered: the slot bounds requests to the target, and the next
// one need not wait for this one's store update (a group commit, an fsync) to land.
func (d *dispatcher) deliver(ctx context.Context, dl *Delivery, free func()) {
	start := time.Now()
	if d.limiter != nil {
		if err := d.limiter.Wait(ctx); err != nil {
			d.release(dl)
			return
		}
	}
	sent, sentAt := time.Now(), d.now()
	res := d.fwd.forward(ctx, d.client, d.t, dl)
	took := time.Since(sent)
	d.attemptSeconds.Observe(took.Seconds())
	free()
	// One log line per attempt, its attributes gathered here (Logger.With would build a logger per
	// delivery).
	attrs := append(make([]slog.Attr, 0, 12), d.attrsOf(dl)...)
	attrs = append(attrs, slog.Int("status", res.status), slog.Duration("duration", time.Since(start)))
	// The attempt, for a store that keeps history (Delivery.Tried).
	dl.Tried = &Attempt{Number: dl.Attempt, Start: sentAt, Duration: took, Status: res.status, Response: res.response}
	if res.err != nil {
		dl.Tried.Error = res.err.Error()
	}
	if res.err == nil {
		if d.record(attrs, d.q.Ack(context.WithoutCancel(ctx), dl), "delivered", attemptDelivered) {
			d.endToEndSeconds.Observe(d.now().Sub(dl.Message.ReceivedAt).Seconds())
		}
		return
	}
	if ctx.Err() != nil {
		// Shutdown cut the attempt short: give the delivery back rather than count a failure.
		dl.Tried = nil
		d.release(dl)
		return
	}
	now := d.now()
	f := Failure{Status: res.status, Error: res.err.Error()}
	p := d.t.Retry
	delay := p.Backoff(dl.Attempt)
	if res.hasRetry {
		delay = min(res.retryAfter, p.MaxRetryAfter)
	}
	reason := ""
	switch {
	case !retryable(res.status):
		reason = "permanent failure"
	case dl.Attempt >= p.MaxAttempts:
		reason = "max attempts reached"
	case now.Add(delay).Sub(dl.Message.ReceivedAt) > p.MaxAge:
		reason = "max age reached"
	}
	attrs = append(attrs, slog.String("error", f.Error))
	if reason != "" {
		err := d.q.Bury(context.WithoutCancel(ctx), dl, now, f)
		if d.record(append(attrs, slog.String("reason", reason)), err, "dead-lettered", attemptDeadLetter) {
			d.deadLetters.Inc()
		}
		return
	}
	err := d.q.Retry(context.WithoutCancel(ctx), dl, now.Add(delay), f)
	if d.record(append(attrs, slog.Duration("retry_in", delay)), err, "delivery failed, will retry", attemptRetry) {
		d.noteDue(now.Add(delay))
	}
}

// attrsOf names a delivery in log lines.
func (d *dispatcher) attrsOf(dl *Delivery) []slog.Attr {
	return []slog.Attr{slog.String("target", d.t.Name), slog.String("delivery_id", dl.ID),
		slog.String("route", dl.Message.Route), slog.String("provider", dl.Message.Provider),
		slog.String("job_id", dl.Message.JobID), slog.Int("attempt", dl.Attempt)}
}

// release gives an unattempted delivery back, due now, for another worker or the next start.
func (d *dispatcher) release(dl *Delivery) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.q.Retry(ctx, dl, d.now(), Failure{Error: "relay shut down during the attempt"})
	if err != nil {
		d.attempts(attemptStoreError).Inc()
		d.log.LogAttrs(ctx, slog.LevelWarn, "could not release delivery; it is redelivered when its lease expires",
			append(d.attrsOf(dl), slog.String("error", err.Error()))...)
		return
	}
	d.attempts(attemptReleased).Inc()
	d.noteDue(d.now())
}

// record logs and counts an attempt whose store update may have failed, and reports whether the
// update succeeded. A failed update is not lost work: the lease expires and the delivery is
// claimed again (at-least-once).
func (d *dispatcher) record(attrs []slog.Attr, err error, msg, outcome string) bool {
	ctx := context.Background()
	switch {
	case err == nil:
		d.attempts(outcome).Inc()
		level := slog.LevelInfo
		if outcome != attemptDelivered {
			level = slog.LevelWarn
		}
		d.log.LogAttrs(ctx, level, msg, attrs...)
		return true
	case errors.Is(err, ErrLeaseLost):
		d.attempts(attemptLeaseLost).Inc()
		d.log.LogAttrs(ctx, slog.LevelWarn, msg+", but the lease had expired and another worker owns the delivery",
			append(attrs, slog.String("store_error", err.Error()))...)
	default:
		d.attempts(attemptStoreError).Inc()
		d.log.LogAttrs(ctx, slog.LevelError, msg+", but the store update failed; it is retried when the lease expires",
			append(attrs, slog.String("store_error", err.Error()))...)
	}
	return false
}
