package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Webhook outcomes, the outcome label of hookrelay_webhooks_received_total.
const (
	outcomeAccepted    = "accepted"
	outcomeDuplicate   = "duplicate"
	outcomeFiltered    = "filtered" // acknowledged, but no target's filter wanted it: not stored
	outcomeDeniedIP    = "denied_ip"
	outcomeRateLimited = "rate_limited"
	outcomeBadSig      = "bad_signature"
	outcomeTooLarge    = "too_large"
	outcomeInvalid     = "invalid"
	outcomeStoreError  = "store_error"
	outcomeNoRoute     = "no_route"
	outcomeError       = "error"
)

// unmatchedRoute labels requests that matched no route; real route names cannot be empty, and
// this keeps arbitrary paths out of the label values.
const unmatchedRoute = ""

// Delivery attempt outcomes, the outcome label of hookrelay_delivery_attempts_total. Each attempt
// is counted once, after the store recorded it.
const (
	attemptDelivered  = "delivered"
	attemptRetry      = "retry"
	attemptDeadLetter = "dead_letter"
	attemptReleased   = "released"    // cut short by shutdown or reload and given back
	attemptLeaseLost  = "lease_lost"  // settled too late: another worker had claimed it again
	attemptStoreError = "store_error" // the store could not record it; redelivered after the lease
)

// metrics are the relay's Prometheus series; see docs/OPERATIONS.md "Metrics".
type metrics struct {
	received        *prometheus.CounterVec   // route, outcome
	withoutJobID    *prometheus.CounterVec   // route
	dedupeHits      *prometheus.CounterVec   // route
	filtered        *prometheus.CounterVec   // route
	ackSeconds      *prometheus.HistogramVec // route
	attempts        *prometheus.CounterVec   // target, outcome
	attemptSeconds  *prometheus.HistogramVec // target
	endToEndSeconds *prometheus.HistogramVec // target
	deadLetters     *prometheus.CounterVec   // target
	leaseRecoveries *prometheus.CounterVec   // target
}

func newMetrics(reg prometheus.Registerer, queues *queueCollector) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_webhooks_received_total",
			Help: "Webhooks received, by route and outcome (accepted, duplicate, filtered, denied_ip, rate_limited, bad_signature, too_large, invalid, store_error, no_route, error).",
		}, []string{"route", "outcome"}),
		withoutJobID: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_webhooks_without_job_id_total",
			Help: "Accepted webhooks whose payload had no job ID, so they could not be deduplicated.",
		}, []string{"route"}),
		dedupeHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_dedupe_hits_total",
			Help: "Webhooks answered as duplicates of one already stored.",
		}, []string{"route"}),
		filtered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_webhooks_filtered_total",
			Help: "Webhooks acknowledged but not stored because no target's filter (when) wanted them.",
		}, []string{"route"}),
		ackSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookrelay_ack_duration_seconds",
			Help:    "Time from receiving a webhook to answering it 2xx (accepted or duplicate), the store write included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms to 4 s
		}, []string{"route"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_delivery_attempts_total",
			Help: "Delivery attempts, by target and outcome (delivered, retry, dead_letter, released, lease_lost, store_error).",
		}, []string{"target", "outcome"}),
		attemptSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookrelay_delivery_duration_seconds",
			Help:    "Duration of one delivery attempt to a target.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1 ms to 60 s
		}, []string{"target"}),
		endToEndSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookrelay_end_to_end_seconds",
			Help:    "Time from receiving a webhook to its successful delivery to a target, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 12), // 5 ms to 6 h
		}, []string{"target"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_dead_letters_total",
			Help: "Deliveries moved to the dead letters.",
		}, []string{"target"}),
		leaseRecoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_lease_recoveries_total",
			Help: "Deliveries claimed again after a lease ran out unsettled (a relay died or stalled mid-delivery).",
		}, []string{"target"}),
	}
	for _, c := range []prometheus.Collector{m.received, m.withoutJobID, m.dedupeHits, m.filtered, m.ackSeconds,
		m.attempts, m.attemptSeconds, m.endToEndSeconds, m.deadLetters, m.leaseRecoveries, queues} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// queueCollector reads each target's queue from the store when scraped, so the figures are the
// store's, shared by every replica, rather than what one process saw.
type queueCollector struct {
	r       *Relay
	depth   *prometheus.Desc
	age     *prometheus.Desc
	dead    *prometheus.Desc
	timeout time.Duration
	writes  *writeDescs // nil unless the store keeps WriteStats
}

// writeStatser is a store that counts its writes (WriteStats).
type writeStatser interface{ WriteStats() WriteStats }

// writeDescs are the series of a store's WriteStats; pages is nil for a store that counts none.
type writeDescs struct {
	store                           writeStatser
	commits, writes, seconds, pages *prometheus.Desc
}

func newQueueCollector(r *Relay) *queueCollector {
	c := &queueCollector{
		r: r,
		depth: prometheus.NewDesc("hookrelay_queue_depth",
			"Deliveries queued for a target, those in flight included.", []string{"target"}, nil),
		age: prometheus.NewDesc("hookrelay_queue_oldest_due_age_seconds",
			"How long the oldest due delivery of a target has been waiting; 0 when none is due.", []string{"target"}, nil),
		dead: prometheus.NewDesc("hookrelay_dead_letters",
			"Dead letters held in the store now, waiting for an operator to replay or drop them.", nil, nil),
		timeout: 5 * time.Second,
	}
	if ws, ok := r.cfg.Store.(writeStatser); ok {
		c.writes = &writeDescs{
			store: ws,
			commits: prometheus.NewDesc("hookrelay_store_commits_total",
				"Group commits of the store: bbolt transactions of its write loop, or Redis pipelines of the hot path's scripts.", nil, nil),
			writes: prometheus.NewDesc("hookrelay_store_commit_writes_total",
				"Writes (enqueues, acks, retries...) those commits carried; per commit, the batch size.", nil, nil),
			seconds: prometheus.NewDesc("hookrelay_store_write_seconds_total",
				"Time of those commits: applying, writing pages and syncing the file (embedded), or from sending a pipeline to its last answer (Redis).", nil, nil),
		}
		if ws.WriteStats().PagesCounted {
			c.writes.pages = prometheus.NewDesc("hookrelay_store_page_writes_total",
				"Embedded store: page writes of all its write transactions, sweeps included.", nil, nil)
		}
	}
	return c
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.age
	ch <- c.dead
	if c.writes != nil {
		ch <- c.writes.commits
		ch <- c.writes.writes
		ch <- c.writes.seconds
		if c.writes.pages != nil {
			ch <- c.writes.pages
		}
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	now := c.r.cfg.Now()
	if c.writes != nil {
		w := c.writes.store.WriteStats()
		ch <- prometheus.MustNewConstMetric(c.writes.commits, prometheus.CounterValue, float64(w.Commits))
		ch <- prometheus.MustNewConstMetric(c.writes.writes, prometheus.CounterValue, float64(w.Writes))
		ch <- prometheus.MustNewConstMetric(c.writes.seconds, prometheus.CounterValue, w.Time.Seconds())
		if c.writes.pages != nil {
			ch <- prometheus.MustNewConstMetric(c.writes.pages, prometheus.CounterValue, float64(w.Pages))
		}
	}
	if n, err := c.r.cfg.Store.CountDead(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(c.dead, err)
	} else {
		ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(n))
	}
	for name := range *c.r.targets.Load() {
		n, err := c.r.cfg.Store.Depth(ctx, name)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.depth, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n), name)
		at, ok, err := c.r.cfg.Store.NextDue(ctx, name)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.age, err)
			continue
		}
		age := 0.0
		if ok && !at.After(now) {
			age = now.Sub(at).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age, name)
	}
}
