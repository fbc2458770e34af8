// Package relay is the webhook relay engine: ingress, dedupe+enqueue, delivery workers and the
// forwarder, configured by plain Go structs. Store backends live in subpackages.
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	// Metrics receives the relay's Prometheus collectors; nil: a registry of its own. Either way
	// (*Relay).Metrics gathers them.
	Metrics *prometheus.Registry
	// ReadyChecks are further readiness conditions beside the store (certificates, say).
	ReadyChecks []func(context.Context) error

	Lease         time.Duration // how long a claimed delivery is held; default 2m, above every target timeout
	PollInterval  time.Duration // longest a dispatcher sleeps without news; default 1s
	SweepInterval time.Duration // how often expired dedupe keys are deleted; default 1m
	StoreTimeout  time.Duration // per store operation on the ingress path; default 10s
	// StoreProbeInterval is how often a store that failed is pinged until it answers; meanwhile
	// webhooks are answered 503 at once. Default 1s.
	StoreProbeInterval time.Duration
	ShutdownGrace      time.Duration // for acknowledgements and deliveries in flight at shutdown; default 10s
	UserAgent          string        // sent to targets; default "hookrelay"

	// The public listener's limits on a sender's connection (net/http's): headers within
	// ReadHeaderTimeout (default 10s), the whole request within ReadTimeout (default 1m), the
	// answer within WriteTimeout (default 1m), idle keep-alive for IdleTimeout (default 2m).
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// Relay receives webhooks and delivers them.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	fwd     *forwarder
	metrics *metrics

	// The routing generation: Reload swaps both, and requests and wake-ups in flight keep the
	// generation they loaded.
	ingress atomic.Pointer[ingress]
	targets atomic.Pointer[map[string]*dispatcher]

	mu      sync.Mutex // serialises Reload against starting and stopping the workers
	workers *workers   // nil unless StartWorkers ran and its stop did not

	breaker *storeBreaker // shared by every routing generation
	ids     *idSource     // likewise
	endLife context.CancelFunc
}

// Validate checks cfg exactly as New does (routes, targets, their TLS files), without a store:
// relay check runs it, so that a file it passes is one serve starts with.
func Validate(cfg Config) error {
	if cfg.Store == nil {
		cfg.Store = struct{ Store }{} // New calls no store method
	}
	_, err := New(cfg)
	return err
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
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	cfg = cfg.WithDefaults()
	for _, d := range cfg.durations() {
		if *d.p < 0 {
			return nil, fmt.Errorf("relay: %s %v is negative", d.name, *d.p)
		}
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "hookrelay"
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, ids: &idSource{}}
	life, endLife := context.WithCancel(context.Background())
	r.endLife = endLife
	r.breaker = &storeBreaker{store: cfg.Store, log: cfg.Logger, interval: cfg.StoreProbeInterval,
		timeout: cfg.StoreTimeout, life: life}
	r.fwd = &forwarder{now: cfg.Now, userAgent: cfg.UserAgent}
	m, err := newMetrics(cfg.Metrics, newQueueCollector(r))
	if err != nil {
		return nil, fmt.Errorf("relay: metrics: %w", err)
	}
	r.metrics = m
	in, targets, err := r.build(cfg.Routes, cfg.Targets, cfg.Clients, nil)
	if err != nil {
		return nil, err
	}
	r.ingress.Store(in)
	r.targets.Store(&targets)
	return r, nil
}

// build validates a routing generation and makes its ingress and dispatchers. A dispatcher of
// reuse whose target is unchanged is kept rather than made anew.
func (r *Relay) build(routeList []Route, targetList []Target, clients ClientResolver,
	reuse map[string]*dispatcher) (*ingress, map[string]*dispatcher, error) {
	if clients == nil {
		clients = peerResolver{}
	}
	targets := map[string]*dispatcher{}
	for i := range targetList {
		t := new(targetList[i]) // a copy: validation fills in derived fields
		if err := validateTarget(t, r.cfg.Lease); err != nil {
			return nil, nil, fmt.Errorf("relay: target %q: %w", t.Name, err)
		}
		if _, dup := targets[t.Name]; dup {
			return nil, nil, fmt.Errorf("relay: target %q defined twice", t.Name)
		}
		if old := reuse[t.Name]; old != nil && reflect.DeepEqual(*old.t, *t) {
			targets[t.Name] = old
			continue
		}
		client, err := newTargetClient(t, r.log)
		if err != nil {
			return nil, nil, fmt.Errorf("relay: target %q: %w", t.Name, err)
		}
		targets[t.Name] = newDispatcher(t, client, r.cfg.Store, r.fwd, r.log, r.cfg.Now, r.cfg.Lease, r.cfg.PollInterval, r.metrics)
	}
	routes := map[string]*Route{}
	for i := range routeList {
		rt := new(routeList[i].WithDefaults())
		if err := validateRoute(rt, targets); err != nil {
			return nil, nil, fmt.Errorf("relay: route %q: %w", rt.Name, err)
		}
		if other, dup := routes[rt.Path]; dup {
			return nil, nil, fmt.Errorf("relay: routes %q and %q share the path %s", other.Name, rt.Name, rt.Path)
		}
		routes[rt.Path] = rt
	}
	var routePaths []string
	for _, rt := range routes {
		routePaths = append(routePaths, strings.ToLower(rt.Path))
	}
	in := &ingress{
		routes: routes, routePaths: routePaths, clients: clients, store: r.cfg.Store, log: r.log,
		now: r.cfg.Now, storeTimeout: r.cfg.StoreTimeout, dispatchers: targets, lease: r.cfg.Lease, metrics: r.metrics,
		breaker: r.breaker, ids: r.ids,
	}
	return in, targets, nil
}

// Routing is what Reload replaces: the routes with their checks, the targets, and who is believed
// about a sender's address.
type Routing struct {
	Routes  []Route
	Targets []Target
	Clients ClientResolver // nil: the TCP peer
}

// ReloadResult says what a reload changed. Reload fills Targets; the configuration layer, which
// knows the file, fills Routes and Restart.
type ReloadResult struct {
	Routes  Changes `json:"routes"`
	Targets Changes `json:"targets"` // Changed: dispatchers replaced; Removed: queued deliveries stay in the store
	// Restart names the settings that changed in the file but keep their running value until a
	// restart.
	Restart []string `json:"restart_needed"`
}

// Changes names what was added, removed and changed, each sorted.
type Changes struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
}

// Reload swaps in new routes, targets and client resolution without dropping a webhook: requests
// in flight finish on the routes they started with, deliveries in flight finish under the target
// settings they started with, and a target whose settings did not change keeps its dispatcher.
// An invalid routing is refused and the current one kept.
func (r *Relay) Reload(rt Routing) (ReloadResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.targets.Load()
	in, targets, err := r.build(rt.Routes, rt.Targets, rt.Clients, old)
	if err != nil {
		return ReloadResult{}, err
	}
	var res ReloadResult
	for name, d := range targets {
		if old[name] != d {
			if old[name] == nil {
				res.Targets.Added = append(res.Targets.Added, name)
			} else {
				res.Targets.Changed = append(res.Targets.Changed, name)
			}
			if r.workers != nil {
				r.workers.start(d)
			}
		}
	}
	for name, d := range old {
		if targets[name] != d {
			if targets[name] == nil {
				res.Targets.Removed = append(res.Targets.Removed, name)
			}
			if r.workers != nil {
				r.workers.retire(d)
			}
		}
	}
	res.Targets.sort()
	r.targets.Store(&targets)
	r.ingress.Store(in)
	return res, nil
}

func (c *Changes) sort() {
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	slices.Sort(c.Changed)
}

// Lines describes the changes of a reload, one line per kind of change, as the log and
// relay reload print them.
func (res ReloadResult) Lines() []string {
	var out []string
	for _, c := range []struct {
		kind string
		c    Changes
	}{{"routes", res.Routes}, {"targets", res.Targets}} {
		for _, l := range []struct {
			verb  string
			names []string
		}{{"added", c.c.Added}, {"removed", c.c.Removed}, {"changed", c.c.Changed}} {
			if len(l.names) > 0 {
				out = append(out, fmt.Sprintf("%s %s: %s", c.kind, l.verb, strings.Join(l.names, ", ")))
			}
		}
	}
	if len(res.Restart) > 0 {
		out = append(out, "NOT APPLIED, needs a restart: "+strings.Join(res.Restart, ", "))
	}
	if len(out) == 0 {
		out = append(out, "nothing changed")
	}
	return out
}

// Metrics gathers the relay's Prometheus series (and whatever else is registered on
// Config.Metrics).
func (r *Relay) Metrics() prometheus.Gatherer { return r.cfg.Metrics }

// DefaultStoreTimeout bounds a store operation on the ingress path unless Config.StoreTimeout
// says otherwise; a guard that asks the store's Redis bounds itself by it too.
const DefaultStoreTimeout = 10 * time.Second

// durationField is one of Config's durations with its default.
type durationField struct {
	p    *time.Duration
	def  time.Duration
	name string
}

// durations lists c's durations, for WithDefaults and New's check.
func (c *Config) durations() []durationField {
	return []durationField{{&c.Lease, 2 * time.Minute, "Lease"}, {&c.PollInterval, time.Second, "PollInterval"},
		{&c.SweepInterval, time.Minute, "SweepInterval"}, {&c.StoreTimeout, DefaultStoreTimeout, "StoreTimeout"},
		{&c.StoreProbeInterval, time.Second, "StoreProbeInterval"}, {&c.ShutdownGrace, 10 * time.Second, "ShutdownGrace"},
		{&c.ReadHeaderTimeout, 10 * time.Second, "ReadHeaderTimeout"}, {&c.ReadTimeout, time.Minute, "ReadTimeout"},
		{&c.WriteTimeout, time.Minute, "WriteTimeout"}, {&c.IdleTimeout, 2 * time.Minute, "IdleTimeout"}}
}

// WithDefaults returns c with each zero duration set to its default (named on its field): New
// applies it, and the configuration layer shows the values it will run with.
func (c Config) WithDefaults() Config {
	for _, d := range c.durations() {
		if *d.p == 0 {
			*d.p = d.def
		}
	}
	return c
}

// WithDefaults returns t with a zero timeout (30 s), concurrency (8) and each zero field of its
// retry policy (DefaultRetryPolicy) set: New applies it, and the configuration layer shows it.
func (t Target) WithDefaults() Target {
	t.Timeout, t.Concurrency = cmp.Or(t.Timeout, 30*time.Second), cmp.Or(t.Concurrency, 8)
	d, p := DefaultRetryPolicy(), &t.Retry
	p.Initial, p.Multiplier, p.Max = cmp.Or(p.Initial, d.Initial), cmp.Or(p.Multiplier, d.Multiplier), cmp.Or(p.Max, d.Max)
	p.MaxAttempts, p.MaxAge, p.MaxRetryAfter = cmp.Or(p.MaxAttempts, d.MaxAttempts), cmp.Or(p.MaxAge, d.MaxAge), cmp.Or(p.MaxRetryAfter, d.MaxRetryAfter)
	return t
}

// WithDefaults returns rt with a zero MaxBody (1 MiB), DedupeTTL (72h) and AckStatus (its
// Extractor's, when that names one, else 202) set, and the forward headers its Verifier names
// (GitHub's event) added after its own: New applies it, and the configuration layer shows it.
func (rt Route) WithDefaults() Route {
	rt.MaxBody, rt.DedupeTTL = cmp.Or(rt.MaxBody, 1<<20), cmp.Or(rt.DedupeTTL, 72*time.Hour)
	if a, ok := rt.Extractor.(interface{ AckStatus() int }); ok && rt.AckStatus == 0 {
		rt.AckStatus = a.AckStatus() // a provider's doc may ask for 200
	}
	rt.AckStatus = cmp.Or(rt.AckStatus, http.StatusAccepted)
	if v, ok := rt.Verifier.(interface{ ForwardHeaders() []string }); ok {
		for _, h := range v.ForwardHeaders() {
			if !containsFold(rt.ForwardHeaders, h) { // clipped: the caller's array is not written to
				rt.ForwardHeaders = append(slices.Clip(rt.ForwardHeaders), h)
			}
		}
	}
	return rt
}

// validateTarget checks t and fills in what is derived from it (its endpoint). Every problem is a
// FieldError; they are joined.
func validateTarget(t *Target, lease time.Duration) error {
	*t = t.WithDefaults()
	var errs []error
	if t.Name == "" {
		errs = append(errs, FieldErrorf("name", "missing"))
	}
	ep, err := parseEndpoint(t.URL)
	if err != nil {
		errs = append(errs, &FieldError{Field: "url", Err: err})
	}
	t.endpoint = ep
	if t.Timeout <= 0 || t.Timeout >= lease {
		errs = append(errs, FieldErrorf("timeout", "%v must be positive and below delivery.lease (%v)", t.Timeout, lease))
	}
	if t.Concurrency < 1 {
		errs = append(errs, FieldErrorf("concurrency", "must be at least 1, got %d", t.Concurrency))
	}
	if t.RateLimit < 0 || t.RateBurst < 0 {
		errs = append(errs, FieldErrorf("rate", "rate and burst must not be negative"))
	}
	p := t.Retry
	for _, c := range []struct {
		bad         bool
		field, want string
		got         any
	}{
		{p.Initial <= 0, "initial", "must be positive", p.Initial},
		{p.Multiplier < 1, "multiplier", "must be at least 1", p.Multiplier},
		{p.Max < p.Initial, "max_backoff", fmt.Sprintf("must be at least retry.initial (%v)", p.Initial), p.Max},
		{p.MaxAttempts < 1, "max_attempts", "must be at least 1", p.MaxAttempts},
		{p.MaxAge <= 0, "max_age", "must be positive", p.MaxAge},
		{p.MaxRetryAfter < 0, "max_retry_after", "must not be negative", p.MaxRetryAfter},
	} {
		if c.bad {
			errs = append(errs, FieldErrorf("retry."+c.field, "%s, got %v", c.want, c.got))
		}
	}
	errs = append(errs, validateHeaders(t)...)
	if t.TLS != nil && err == nil {
		errs = append(errs, validateTLS(t.TLS, ep)...)
	}
	return errors.Join(errs...)
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
	for i, name := range rt.Targets {
		if targets[name] == nil {
			return fmt.Errorf("unknown target %q", name)
		}
		if slices.Contains(rt.Targets[:i], name) {
			return fmt.Errorf("target %q listed twice", name)
		}
	}
	for name, m := range rt.When {
		if !slices.Contains(rt.Targets, name) || m == nil {
			return fmt.Errorf("a filter (when) for %q, which is not one of the route's targets", name)
		}
	}
	return CheckRoute(*rt)
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

// Handler is the public webhook handler. It follows reloads.
func (r *Relay) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.ingress.Load().ServeHTTP(w, req)
	})
}

// wake tells the named targets' dispatchers that work arrived.
func (r *Relay) wake(targets []string) {
	current := *r.targets.Load()
	for _, name := range targets {
		if d := current[name]; d != nil {
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
		ReadHeaderTimeout: r.cfg.ReadHeaderTimeout,
		ReadTimeout:       r.cfg.ReadTimeout,
		WriteTimeout:      r.cfg.WriteTimeout,
		IdleTimeout:       r.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
	}
	stopWorkers := r.StartWorkers() // first, so that the first webhooks are handed off
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

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
	r.endLife() // the store prober, if one runs
	return err
}

// workers runs the dispatchers' claim loops. Deliveries run under work, which outlives the
// loops so that a shutdown can give them a grace period.
type workers struct {
	work     context.Context
	stopWork context.CancelFunc
	loops    sync.WaitGroup
	stops    map[*dispatcher]context.CancelFunc // running claim loops
	started  []*dispatcher                      // every dispatcher started, retired ones included
}

func (w *workers) start(d *dispatcher) {
	ctx, cancel := context.WithCancel(context.Background())
	w.stops[d] = cancel
	w.started = append(w.started, d)
	d.openHandoffs()
	w.loops.Go(func() { d.run(ctx, w.work) })
}

// retire stops d claiming; its deliveries in flight run on and are waited for at shutdown.
func (w *workers) retire(d *dispatcher) {
	if stop := w.stops[d]; stop != nil {
		stop()
		delete(w.stops, d)
	}
}

// StartWorkers starts the delivery dispatchers and the dedupe sweeper. The returned stop
// function stops claiming, waits for deliveries in flight until ctx is done, then cancels them
// (they are given back to the queue) and returns when all have finished.
func (r *Relay) StartWorkers() (stop func(ctx context.Context)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	work, stopWork := context.WithCancel(context.Background())
	w := &workers{work: work, stopWork: stopWork, stops: map[*dispatcher]context.CancelFunc{}}
	for _, d := range *r.targets.Load() {
		w.start(d)
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	w.loops.Go(func() { r.sweep(sweepCtx) })
	r.workers = w
	return func(ctx context.Context) {
		r.mu.Lock()
		r.workers = nil
		stopSweep()
		for d := range w.stops {
			w.retire(d)
		}
		r.mu.Unlock()
		w.loops.Wait()
		done := make(chan struct{})
		go func() {
			for _, d := range w.started {
				d.wg.Wait()
			}
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			r.log.Warn("deliveries still in flight at the end of the grace period; cancelling them")
			stopWork()
			for _, d := range w.started {
				d.client.abort()
			}
			<-done
		}
		stopWork()
		for _, d := range w.started {
			d.client.closeIdle()
		}
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
