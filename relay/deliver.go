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
	q       Queue
	fwd     *forwarder
	log     *slog.Logger
	now     func() time.Time
	lease   time.Duration
	poll    time.Duration // longest sleep, for work that another replica enqueued
	limiter *rate.Limiter // nil: unlimited

	wake  chan struct{} // new work enqueued here
	freed chan struct{} // a slot came free
	slots chan struct{} // one token per delivery in flight
	wg    sync.WaitGroup

	attempts        func(outcome string) prometheus.Counter
	attemptSeconds  prometheus.Observer
	endToEndSeconds prometheus.Observer
	deadLetters     prometheus.Counter
	leaseRecoveries prometheus.Counter
}

func newDispatcher(t *Target, q Queue, fwd *forwarder, log *slog.Logger, now func() time.Time,
	lease, poll time.Duration, m *metrics) *dispatcher {
	d := &dispatcher{
		t: t, q: q, fwd: fwd, now: now, lease: lease, poll: poll,
		attempts:        func(outcome string) prometheus.Counter { return m.attempts.WithLabelValues(t.Name, outcome) },
		attemptSeconds:  m.attemptSeconds.WithLabelValues(t.Name),
		endToEndSeconds: m.endToEndSeconds.WithLabelValues(t.Name),
		deadLetters:     m.deadLetters.WithLabelValues(t.Name),
		leaseRecoveries: m.leaseRecoveries.WithLabelValues(t.Name),
		log:             log.With("target", t.Name),
		wake:            make(chan struct{}, 1),
		freed:           make(chan struct{}, 1),
		slots:           make(chan struct{}, t.Concurrency),
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

// run claims and starts deliveries until ctx is done. Deliveries run under work, which outlives
// ctx so that a shutdown can give them a grace period; wait for them with d.wg.
func (d *dispatcher) run(ctx, work context.Context) {
	const storeErrorPause = time.Second
	for ctx.Err() == nil {
		free := cap(d.slots) - len(d.slots)
		if free == 0 {
			d.sleep(ctx, 0, d.freed)
			continue
		}
		batch, err := d.q.Claim(ctx, d.t.Name, d.now(), d.lease, free)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("claim failed", "error", err)
				d.sleep(ctx, storeErrorPause, nil)
			}
			continue
		}
		for _, dl := range batch {
			if dl.Recovered {
				d.leaseRecoveries.Inc()
			}
			d.slots <- struct{}{}
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				d.deliver(work, dl)
				<-d.slots
				notify(d.freed)
			}()
		}
		if len(batch) == free {
			continue // there may be more due
		}
		wait := d.poll
		if at, ok, err := d.q.NextDue(ctx, d.t.Name); err == nil && ok {
			// At least a millisecond, so the sleep below always has a timer.
			wait = min(wait, max(at.Sub(d.now()), time.Millisecond))
		}
		d.sleep(ctx, wait, d.freed)
	}
}

// sleep waits for wait (0: no timer), new work, the extra channel, or the end of ctx.
func (d *dispatcher) sleep(ctx context.Context, wait time.Duration, extra chan struct{}) {
	var timer <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	} else if extra == nil {
		return
	}
	select {
	case <-ctx.Done():
	case <-d.wake:
	case <-extra:
	case <-timer:
	}
}

// deliver makes one attempt and records its outcome: ack, retry at backoff, or dead letter.
func (d *dispatcher) deliver(ctx context.Context, dl *Delivery) {
	log := d.log.With("delivery_id", dl.ID, "route", dl.Message.Route, "provider", dl.Message.Provider, "job_id", dl.Message.JobID,
		"attempt", dl.Attempt)
	start := time.Now()
	if d.limiter != nil {
		if err := d.limiter.Wait(ctx); err != nil {
			d.release(dl, log)
			return
		}
	}
	sent := time.Now()
	res := d.fwd.forward(ctx, d.t, dl)
	d.attemptSeconds.Observe(time.Since(sent).Seconds())
	log = log.With("status", res.status, "duration", time.Since(start))
	if res.err == nil {
		if d.record(log, d.q.Ack(context.WithoutCancel(ctx), dl), "delivered", attemptDelivered) {
			d.endToEndSeconds.Observe(d.now().Sub(dl.Message.ReceivedAt).Seconds())
		}
		return
	}
	if ctx.Err() != nil {
		// Shutdown cut the attempt short: give the delivery back rather than count a failure.
		d.release(dl, log)
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
	log = log.With("error", f.Error)
	if reason != "" {
		err := d.q.Bury(context.WithoutCancel(ctx), dl, now, f)
		if d.record(log.With("reason", reason), err, "dead-lettered", attemptDeadLetter) {
			d.deadLetters.Inc()
		}
		return
	}
	err := d.q.Retry(context.WithoutCancel(ctx), dl, now.Add(delay), f)
	d.record(log.With("retry_in", delay), err, "delivery failed, will retry", attemptRetry)
}

// release gives an unattempted delivery back, due now, for another worker or the next start.
func (d *dispatcher) release(dl *Delivery, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.q.Retry(ctx, dl, d.now(), Failure{Error: "relay shut down during the attempt"})
	if err != nil {
		d.attempts(attemptStoreError).Inc()
		log.Warn("could not release delivery; it is redelivered when its lease expires", "error", err)
		return
	}
	d.attempts(attemptReleased).Inc()
}

// record logs and counts an attempt whose store update may have failed, and reports whether the
// update succeeded. A failed update is not lost work: the lease expires and the delivery is
// claimed again (at-least-once).
func (d *dispatcher) record(log *slog.Logger, err error, msg, outcome string) bool {
	switch {
	case err == nil:
		d.attempts(outcome).Inc()
		level := slog.LevelInfo
		if outcome != attemptDelivered {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, msg)
		return true
	case errors.Is(err, ErrLeaseLost):
		d.attempts(attemptLeaseLost).Inc()
		log.Warn(msg+", but the lease had expired and another worker owns the delivery", "store_error", err)
	default:
		d.attempts(attemptStoreError).Inc()
		log.Error(msg+", but the store update failed; it is retried when the lease expires", "store_error", err)
	}
	return false
}
