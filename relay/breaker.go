package relay

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// storeBreaker lets ingress answer 503 at once while the store is known to be down, instead of
// making every sender wait for the store client's timeouts and retries. A failed enqueue opens it;
// while open, a prober pings the store in the background (at once, then every interval) and closes
// it on the first answer. It only ever refuses sooner: a 2xx still needs a committed enqueue.
type storeBreaker struct {
	store    Store
	log      *slog.Logger
	interval time.Duration // between probes
	timeout  time.Duration // per probe
	life     context.Context

	open atomic.Bool
}

// isOpen reports whether the store is known to be down.
func (b *storeBreaker) isOpen() bool { return b.open.Load() }

// failed opens the breaker after a failed store operation and starts the prober, once.
func (b *storeBreaker) failed(err error) {
	if !b.open.CompareAndSwap(false, true) {
		return
	}
	b.log.Error("store unavailable: answering 503 at once until it answers a probe", "error", err)
	go b.probe()
}

// probe pings the store until it answers (then closes the breaker) or the relay stops.
func (b *storeBreaker) probe() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-b.life.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(b.life, b.timeout)
		err := b.store.Ping(ctx)
		cancel()
		if err == nil {
			b.open.Store(false)
			b.log.Info("store answers again: accepting webhooks")
			return
		}
		t.Reset(b.interval)
	}
}
