// Package relay is the webhook relay engine: ingress, dedupe+enqueue, delivery workers and the
// forwarder, configured by plain Go structs. Store backends live in subpackages.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Config configures a Relay. Zero durations take the defaults named on each field.
type Config struct {
	Routes  []Route
	Targets []Target
	Store   Store
	Logger  *slog.Logger     // nil: discard
	Now     func() time.Time // nil: time.Now
	// Clients says who sent a request; nil: the TCP peer, believing no header.
	Clients ClientResolver

	Lease         time.Duration // how long a claimed delivery is held; default 2m, above every target timeout
	PollInterval  time.Duration // longest a dispatcher sleeps without news; default 1s
	SweepInterval time.Duration // how often expired dedupe keys are deleted; default 1m
	StoreTimeout  time.Duration // per store operation on the ingress path; default 10s
	ShutdownGrace time.Duration // for acknowledgements and deliveries in flight at shutdown; default 10s
	UserAgent     string        // sent to targets; default "hookrelay"
	// ReadyChecks are asked by Ready after the store (TLS: a certificate is loaded).
	ReadyChecks []func(context.Context) error
}

// Relay receives webhooks and delivers them.
type Relay struct {
	cfg         Config
	log         *slog.Logger
	ingress     *ingress
	dispatchers map[string]*dispatcher
	fwd         *forwarder

	IngressStats  IngressStats
	DeliveryStats DeliveryStats
}

// New validates cfg and builds a Relay. It starts nothing; call Run.
func New(cfg Config) (*Relay, error) {
	if cfg.Store == nil {
		return nil, errors.New("relay: no store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Clients == nil {
		cfg.Clients = peerResolver{}
	}
	setDefault(&cfg.Lease, 2*time.Minute)
	setDefault(&cfg.PollInterval, time.Second)
	setDefault(&cfg.SweepInterval, time.Minute)
	setDefault(&cfg.StoreTimeout, 10*time.Second)
	setDefault(&cfg.ShutdownGrace, 10*time.Second)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "hookrelay"
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, dispatchers: map[string]*dispatcher{}}
	r.fwd = newForwarder(cfg.Now, cfg.UserAgent)
	for i := range cfg.Targets {
		t := &cfg.Targets[i]
		if err := validateTarget(t, cfg.Lease); err != nil {
			return nil, fmt.Errorf("relay: target %q: %w", t.Name, err)
		}
		if _, dup := r.dispatchers[t.Name]; dup {
			return nil, fmt.Errorf("relay: target %q defined twice", t.Name)
		}
		r.dispatchers[t.Name] = newDispatcher(t, cfg.Store, r.fwd, r.log, cfg.Now, cfg.Lease, cfg.PollInterval, &r.DeliveryStats)
	}
	routes := map[string]*Route{}
	for i := range cfg.Routes {
		rt := &cfg.Routes[i]
		if err := validateRoute(rt, r.dispatchers); err != nil {
			return nil, fmt.Errorf("relay: route %q: %w", rt.Name, err)
		}
		if other, dup := routes[rt.Path]; dup {
			return nil, fmt.Errorf("relay: routes %q and %q share the path %s", other.Name, rt.Name, rt.Path)
		}
		routes[rt.Path] = rt
	}
	var tokenPrefixes []string
	for _, rt := range routes {
		if rt.TokenInPath {
			tokenPrefixes = append(tokenPrefixes, rt.Path+"/")
		}
	}
	r.ingress = &ingress{
		routes: routes, tokenPrefixes: tokenPrefixes, clients: cfg.Clients, store: cfg.Store, log: r.log, now: cfg.Now, storeTimeout: cfg.StoreTimeout,
		enqueued: r.wake, stats: &r.IngressStats,
	}
	return r, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

func validateTarget(t *Target, lease time.Duration) error {
	if t.Name == "" {
		return errors.New("no name")
	}
	u, err := url.Parse(t.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q is not an absolute http(s) URL", t.URL)
	}
	if t.Timeout <= 0 || t.Timeout >= lease {
		return fmt.Errorf("timeout %v must be positive and below the lease %v", t.Timeout, lease)
	}
	if t.Concurrency < 1 {
		return errors.New("concurrency must be at least 1")
	}
	p := t.Retry
	if p.Initial <= 0 || p.Multiplier < 1 || p.Max < p.Initial || p.MaxAttempts < 1 || p.MaxAge <= 0 || p.MaxRetryAfter < 0 {
		return fmt.Errorf("retry policy %+v is not sane", p)
	}
	return nil
}

func validateRoute(rt *Route, targets map[string]*dispatcher) error {
	if rt.Name == "" || !strings.HasPrefix(rt.Path, "/") {
		return fmt.Errorf("needs a name and a path starting with /")
	}
	if rt.Extractor == nil {
		return errors.New("no extractor (provider preset)")
	}
	if rt.TokenInPath && rt.Verifier == nil {
		return errors.New("a token in the path needs a verifier to check it")
	}
	if len(rt.Targets) == 0 {
		return errors.New("no targets")
	}
	for _, name := range rt.Targets {
		if targets[name] == nil {
			return fmt.Errorf("unknown target %q", name)
		}
	}
	if rt.MaxBody <= 0 || rt.DedupeTTL <= 0 {
		return errors.New("max body and dedupe TTL must be positive")
	}
	if rt.AckStatus != http.StatusOK && rt.AckStatus != http.StatusAccepted {
		return fmt.Errorf("ack status %d must be 200 or 202", rt.AckStatus)
	}
	return nil
}

// Ready reports whether the relay can take webhooks: its store answers and every ReadyCheck
// passes. Readiness probes use it.
func (r *Relay) Ready(ctx context.Context) error {
	if err := r.cfg.Store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, check := range r.cfg.ReadyChecks {
		if err := check(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Handler is the public webhook handler.
func (r *Relay) Handler() http.Handler { return r.ingress }

// wake tells the named targets' dispatchers that work arrived.
func (r *Relay) wake(targets []string) {
	for _, name := range targets {
		if d := r.dispatchers[name]; d != nil {
			notify(d.wake)
		}
	}
}

// Run serves webhooks on ln and delivers them until ctx is done, then shuts down gracefully:
// it stops accepting, lets acknowledgements in flight finish, gives deliveries in flight the
// grace period, and returns. The caller closes the store afterwards.
func (r *Relay) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           r.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	stopWorkers := r.StartWorkers()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	}
	r.log.Info("shutting down: no new webhooks accepted")
	sctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownGrace)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		r.log.Warn("acknowledgements still in flight at the end of the grace period", "error", serr)
	}
	stopWorkers(sctx)
	return err
}

// StartWorkers starts the delivery dispatchers and the dedupe sweeper. The returned stop
// function stops claiming, waits for deliveries in flight until ctx is done, then cancels them
// (they are given back to the queue) and returns when all have finished.
func (r *Relay) StartWorkers() (stop func(ctx context.Context)) {
	claimCtx, stopClaims := context.WithCancel(context.Background())
	workCtx, stopWork := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	for _, d := range r.dispatchers {
		loops.Go(func() { d.run(claimCtx, workCtx) })
	}
	loops.Go(func() { r.sweep(claimCtx) })
	return func(ctx context.Context) {
		stopClaims()
		loops.Wait()
		done := make(chan struct{})
		go func() {
			for _, d := range r.dispatchers {
				d.wg.Wait()
			}
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			r.log.Warn("deliveries still in flight at the end of the grace period; cancelling them")
			stopWork()
			<-done
		}
		stopWork()
		r.fwd.close()
	}
}

// sweep deletes expired dedupe keys now and then, so the store does not grow forever.
func (r *Relay) sweep(ctx context.Context) {
	t := time.NewTicker(r.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := r.cfg.Store.Sweep(ctx, r.cfg.Now())
			if err != nil && ctx.Err() == nil {
				r.log.Error("dedupe sweep failed", "error", err)
			} else if n > 0 {
				r.log.Debug("expired dedupe keys deleted", "count", n)
			}
		}
	}
}
