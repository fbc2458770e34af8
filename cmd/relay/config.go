package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redisstore"
)

// fileConfig is the YAML file. Only this package knows YAML; the engine gets plain structs.
type fileConfig struct {
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// TrustedProxies are the only peers whose X-Forwarded-For, Forwarded or X-Real-IP is believed.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ClientIPHeader names the one header the trusted proxies set; required with TrustedProxies.
	ClientIPHeader string `yaml:"client_ip_header"`
	// Allowlist applies to every route without an allowlist of its own (or a provider default).
	Allowlist      []string       `yaml:"allowlist"`
	AllowlistFiles []string       `yaml:"allowlist_files"`
	Admin          adminConfig    `yaml:"admin"`
	TLS            tlsConfig      `yaml:"tls"`
	Log            logConfig      `yaml:"log"`
	Store          storeConfig    `yaml:"store"`
	History        historyConfig  `yaml:"history"`
	Timeouts       timeoutsConfig `yaml:"timeouts"`
	Delivery       deliveryConfig `yaml:"delivery"`
	Targets        []targetConfig `yaml:"targets"`
	Routes         []routeConfig  `yaml:"routes"`

	clients relay.ClientResolver // built by validate
	// redis is the client of store.redis, made by validate (it connects lazily).
	redis redis.UniversalClient
}

// adminConfig is the admin listener: health, readiness and the dead-letter API.
type adminConfig struct {
	Listen    string `yaml:"listen"` // "off" disables it
	TokenEnv  string `yaml:"token_env,omitempty"`
	TokenFile string `yaml:"token_file,omitempty"`
	// Hosts are the DNS names the API answers to besides localhost and its IP address.
	Hosts []string `yaml:"hosts,omitempty"`
	// Pprof serves Go's profiles under /debug/pprof/ (behind the token, if any).
	Pprof bool `yaml:"pprof,omitempty"`

	token []byte // read by validate
}

type logConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type storeConfig struct {
	Type  string       `yaml:"type"`
	Path  string       `yaml:"path,omitempty"`
	Redis *redisConfig `yaml:"redis,omitempty"`
}

// historyConfig is how long the store keeps every message, its deliveries and their attempts for
// the inspector (docs/DESIGN.md section 2.5). Retention 0 turns history off; unset is the default.
type historyConfig struct {
	Retention *time.Duration `yaml:"retention"`
}

// timeoutsConfig bounds how long a sender's connection may take, so that slow or idle
// connections (slowloris) cannot pile up.
type timeoutsConfig struct {
	ReadHeader time.Duration `yaml:"read_header"`
	Read       time.Duration `yaml:"read"`
	Write      time.Duration `yaml:"write"`
	Idle       time.Duration `yaml:"idle"`
}

type deliveryConfig struct {
	Lease         time.Duration `yaml:"lease"`
	PollInterval  time.Duration `yaml:"poll_interval"`
	SweepInterval time.Duration `yaml:"sweep_interval"`
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
}

type targetConfig struct {
	Name              string        `yaml:"name"`
	URL               string        `yaml:"url"`
	Timeout           time.Duration `yaml:"timeout"`
	Concurrency       int           `yaml:"concurrency"`
	Rate              float64       `yaml:"rate"`
	Burst             int           `yaml:"burst"`
	SigningSecretEnv  string        `yaml:"signing_secret_env,omitempty"`
	SigningSecretFile string        `yaml:"signing_secret_file,omitempty"`
	Retry             retryConfig   `yaml:"retry"`
	// Headers are sent with every delivery: the service's own credential, say.
	Headers []headerConfig   `yaml:"headers,omitempty"`
	TLS     *targetTLSConfig `yaml:"tls,omitempty"`

	built relay.Target // by validate
}

// headerConfig is one static header of a target; its value literal or, for a secret, from an
// env var or a file.
type headerConfig struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value,omitempty"`
	ValueEnv  string `yaml:"value_env,omitempty"`
	ValueFile string `yaml:"value_file,omitempty"`
}

// MarshalYAML keeps a literal value out of relay check's output: it may be a credential.
func (h headerConfig) MarshalYAML() (any, error) {
	type plain headerConfig
	if h.Value != "" {
		h.Value = "(not shown)"
	}
	return plain(h), nil
}

// targetTLSConfig is how the relay speaks TLS to a target (relay.TargetTLS).
type targetTLSConfig struct {
	CAFile     string `yaml:"ca_file,omitempty"`
	CAOnly     bool   `yaml:"ca_only,omitempty"`
	CertFile   string `yaml:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty"`
	MinVersion string `yaml:"min_version,omitempty"`
	// InsecureSkipVerify is only read to refuse it with the fix.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify,omitempty"`
}

// retryConfig is relay.RetryPolicy as the file writes it: the one converts to the other.
type retryConfig struct {
	Initial       time.Duration `yaml:"initial"`
	Multiplier    float64       `yaml:"multiplier"`
	Max           time.Duration `yaml:"max_backoff"`
	MaxAttempts   int           `yaml:"max_attempts"`
	MaxAge        time.Duration `yaml:"max_age"`
	MaxRetryAfter time.Duration `yaml:"max_retry_after"`
}

type routeConfig struct {
	Name         string         `yaml:"name"`
	Path         string         `yaml:"path"`
	Provider     string         `yaml:"provider"`
	Targets      []routeTarget  `yaml:"targets"`
	MaxBody      byteSize       `yaml:"max_body"`
	DedupeTTL    time.Duration  `yaml:"dedupe_ttl"`
	RequireJobID bool           `yaml:"require_job_id"`
	AckStatus    int            `yaml:"ack_status"`
	Generic      *genericConfig `yaml:"generic,omitempty"`
	// ForwardHeaders names sender headers passed to the targets unchanged; the verifier's own
	// (GitHub: X-GitHub-Event, X-GitHub-Delivery) are added after them (relay.Route.WithDefaults).
	ForwardHeaders []string `yaml:"forward_headers,omitempty"`

	Allowlist      []string      `yaml:"allowlist"`
	AllowlistFiles []string      `yaml:"allowlist_files,omitempty"`
	RateLimit      *rateConfig   `yaml:"rate_limit,omitempty"`
	Verify         *verifyConfig `yaml:"verify,omitempty"`
	// Insecure accepts a route with neither verification nor an allowlist.
	Insecure bool `yaml:"insecure,omitempty"`

	built       builtRoute // by validate
	redisPrefix string     // the shared limiters' key prefix they were built with
}

// route returns the route called name, or nil; c may be nil.
func (c *fileConfig) route(name string) *routeConfig {
	if c == nil {
		return nil
	}
	for i := range c.Routes {
		if c.Routes[i].Name == name {
			return &c.Routes[i]
		}
	}
	return nil
}

// builtRoute holds a route's checks, constructed (and so validated) once.
type builtRoute struct {
	preset         *filters.Preset
	perIPLimit     relay.Guard   // also in guards; kept across a reload that leaves rate_limit alone
	routeLimit     relay.Guard   // also in verifiedGuards
	guards         []relay.Guard // before the body: allowlist, per-address rate
	verifier       relay.Verifier
	verifiedGuards []relay.Guard            // after verification: the route-wide rate
	when           map[string]relay.Matcher // by target name
}

// routeTarget is one entry of routes[].targets: a target's name, or {name, when} for a target
// that wants only some of the route's webhooks.
type routeTarget struct {
	Name string      `yaml:"name"`
	When *whenConfig `yaml:"when,omitempty"`
}

// whenConfig is a target's filter: every condition given must hold.
type whenConfig struct {
	Status []string          `yaml:"status,omitempty"` // normalised (or raw) status, one of these
	Body   map[string]string `yaml:"body,omitempty"`   // dot path -> value it must equal
}

// parseScalar reads the short form: the target's name alone.
func (rt *routeTarget) parseScalar(s string) error {
	rt.Name = s
	return nil
}

// MarshalYAML writes a target without a filter as its name, as it is usually written.
func (rt routeTarget) MarshalYAML() (any, error) {
	if rt.When == nil {
		return rt.Name, nil
	}
	type plain routeTarget
	return plain(rt), nil
}

// targetNames lists the route's target names.
func (r *routeConfig) targetNames() []string {
	names := make([]string, len(r.Targets))
	for i, t := range r.Targets {
		names[i] = t.Name
	}
	return names
}

type rateConfig struct {
	PerIP      float64 `yaml:"per_ip"`
	PerIPBurst int     `yaml:"per_ip_burst"`
	Route      float64 `yaml:"route"`
	RouteBurst int     `yaml:"route_burst"`
	MaxTracked int     `yaml:"max_tracked,omitempty"`
	// IPv6Prefix groups IPv6 senders per prefix of this length (default 64).
	IPv6Prefix int `yaml:"ipv6_prefix,omitempty"`
	// Shared keeps the limit in Redis so that it holds across replicas (store.type: redis).
	Shared bool `yaml:"shared,omitempty"`
}

// verifyConfig selects one verification scheme. Secrets are named, never inline.
type verifyConfig struct {
	Type         string        `yaml:"type"`
	SecretsEnv   []string      `yaml:"secrets_env,omitempty"`
	SecretsFiles []string      `yaml:"secrets_files,omitempty"`
	Tolerance    time.Duration `yaml:"tolerance,omitempty"`
	// hmac
	Header          string `yaml:"header,omitempty"`
	Algorithm       string `yaml:"algorithm,omitempty"`
	Encoding        string `yaml:"encoding,omitempty"`
	Prefix          string `yaml:"prefix,omitempty"`
	TimestampHeader string `yaml:"timestamp_header,omitempty"`
	Template        string `yaml:"template,omitempty"`
	// fal
	JWKSURL  string `yaml:"jwks_url,omitempty"`
	JWKSFile string `yaml:"jwks_file,omitempty"`
	// url_token: the query parameter; empty means the last path segment (path/<token>)
	Query string `yaml:"query,omitempty"`
}

type genericConfig struct {
	JobID       string            `yaml:"job_id,omitempty"`
	JobIDHeader string            `yaml:"job_id_header,omitempty"` // or the job ID from this header
	Status      string            `yaml:"status,omitempty"`
	StatusMap   map[string]string `yaml:"status_map,omitempty"`
}

// byteSize reads "1MiB", "512KiB", "64KB" or a plain number of bytes.
type byteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

func (b *byteSize) parseScalar(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return fmt.Errorf("%q is not a size such as 1MiB, 512KiB or 65536 (bytes, up to 1TiB)", s)
	}
	*b = byteSize(n * mult)
	return nil
}

func (b byteSize) MarshalYAML() (any, error) {
	switch {
	case b > 0 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20), nil
	case b > 0 && b%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", b>>10), nil
	}
	return int64(b), nil
}

// Defaults, also documented in config.example.yaml and docs/CONFIGURATION.md.
const (
	defaultListen      = "127.0.0.1:8080"
	defaultAdminListen = "127.0.0.1:9090"
	defaultDataDir     = "./data"
	defaultRetention   = 72 * time.Hour
)

var (
	namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	// hostnamePattern is a DNS name: dot-separated labels of letters, digits and hyphens.
	hostnamePattern = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$`)
)

// loadConfig reads, decodes strictly, fills defaults and validates. The error lists every problem
// found, each prefixed with its key path.
func loadConfig(path string, logs io.Writer) (*fileConfig, *slog.Logger, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	return parseConfig(raw, path, logs)
}

// parseConfig decodes, fills defaults, and validates, building every check once; the logger
// (from the file's log section, writing to logs) is the one the checks log through.
func parseConfig(raw []byte, name string, logs io.Writer) (*fileConfig, *slog.Logger, error) {
	return parse(raw, name, logs, nil, nil)
}

// parse is parseConfig for a first start (prev nil) or a reload: then the checks log through the
// running logger, and the running Redis client is reused rather than a second one dialled.
func parse(raw []byte, name string, logs io.Writer, prev *fileConfig, log *slog.Logger) (*fileConfig, *slog.Logger, error) {
	var c fileConfig
	root, bad := decodeFile(raw, &c)
	if root == nil {
		return nil, nil, bad.report(name, nil)
	}
	c.applyDefaults()
	if log == nil {
		log = newLogger(c.Log, logs)
	}
	if prev != nil && c.Store.Type == "redis" {
		c.redis = prev.redis
	}
	// A key that did not decode was left at its default; what validation says about it or
	// below it would only repeat the problem.
	for _, q := range c.validate(log, prev) {
		if !slices.ContainsFunc(bad, func(d problem) bool { return d.repeats(q) }) {
			bad = append(bad, q)
		}
	}
	if err := bad.report(name, root); err != nil {
		return nil, nil, err
	}
	c.warnSecretFiles(log)
	return &c, log, nil
}

func (c *fileConfig) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, defaultListen)
	def(&c.Admin.Listen, defaultAdminListen)
	def(&c.DataDir, defaultDataDir)
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
	def(&c.Store.Type, "embedded")
	if c.History.Retention == nil {
		r := defaultRetention
		c.History.Retention = &r
	}
	c.TLS.applyDefaults()
	if c.Store.Type == "embedded" {
		def(&c.Store.Path, filepath.Join(c.DataDir, "relay.db"))
	}
	// The engine's own defaults, so that check shows what serve runs with.
	e := c.relayConfig().WithDefaults()
	c.Timeouts = timeoutsConfig{ReadHeader: e.ReadHeaderTimeout, Read: e.ReadTimeout, Write: e.WriteTimeout, Idle: e.IdleTimeout}
	c.Delivery = deliveryConfig{Lease: e.Lease, PollInterval: e.PollInterval, SweepInterval: e.SweepInterval, ShutdownGrace: e.ShutdownGrace}
	for i := range c.Targets { // the engine's defaults, so that check shows what serve runs with
		t := &c.Targets[i]
		e := relay.Target{Timeout: t.Timeout, Concurrency: t.Concurrency, Retry: relay.RetryPolicy(t.Retry)}.WithDefaults()
		t.Timeout, t.Concurrency, t.Retry = e.Timeout, e.Concurrency, retryConfig(e.Retry)
	}
}

// applyDefaults fills what the route leaves out, so that check shows what serve runs with: the
// engine's defaults (relay.Route.WithDefaults) and its provider's (filters.Preset: fal's
// verification, fotor's source addresses), else the file's allowlist; fal's key source.
func (r *routeConfig) applyDefaults(c *fileConfig) {
	e, preset := relay.Route{MaxBody: int64(r.MaxBody), DedupeTTL: r.DedupeTTL, AckStatus: r.AckStatus}, r.built.preset
	if preset != nil {
		e.Extractor = preset
		if r.Verify == nil && preset.Verify() != "" {
			r.Verify = &verifyConfig{Type: preset.Verify()}
		}
	}
	e = e.WithDefaults()
	r.MaxBody, r.DedupeTTL, r.AckStatus = byteSize(e.MaxBody), e.DedupeTTL, e.AckStatus
	if len(r.Allowlist)+len(r.AllowlistFiles) == 0 {
		r.Allowlist, r.AllowlistFiles = c.Allowlist, c.AllowlistFiles
		if preset != nil && preset.SourceAddrs() != nil {
			r.Allowlist, r.AllowlistFiles = preset.SourceAddrs(), nil
		}
	}
	if v := r.Verify; v != nil && v.Type == "fal" {
		v.JWKSURL = filters.FalConfig{JWKSURL: v.JWKSURL, JWKSFile: v.JWKSFile}.WithDefaults().JWKSURL
	}
}

func (c *fileConfig) redisPrefix() string {
	if c.Store.Redis == nil {
		return ""
	}
	return c.Store.Redis.Prefix
}

func (r *routeConfig) generic() *filters.Generic {
	if r.Generic == nil {
		return nil
	}
	return &filters.Generic{JobIDPath: r.Generic.JobID, JobIDHeader: r.Generic.JobIDHeader, StatusPath: r.Generic.Status, StatusMap: r.Generic.StatusMap}
}

// validate checks the admin listener: off loopback it must require a bearer token.
func (a *adminConfig) validate(p *problems) {
	if a.Listen == "off" {
		return
	}
	host, _, err := net.SplitHostPort(a.Listen)
	if err != nil {
		p.add("admin.listen", "%q is not host:port (default 127.0.0.1:9090), or off", a.Listen)
		return
	}
	for i, h := range a.Hosts {
		if !hostnamePattern.MatchString(h) {
			p.add(fmt.Sprintf("admin.hosts[%d]", i), "%q is not a DNS name (no scheme, port or path; IP addresses need no entry)", h)
		}
	}
	tok := p.secret("admin", "token", a.TokenEnv, a.TokenFile)
	switch {
	case tok != "" && len(tok) < 16:
		p.add("admin."+secretKey("token", a.TokenEnv), "the token is %d characters; use at least 16", len(tok))
	case a.TokenEnv == "" && a.TokenFile == "" && !isLoopback(host):
		p.add("admin.listen", "%s is not a loopback address: set admin.token_env or admin.token_file so the admin API needs a bearer token", a.Listen)
	}
	if tok != "" {
		a.token = []byte(tok)
	}
}

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// checkName checks a target's or route's name: it appears in IDs, headers and store keys.
func (p *problems) checkName(at, kind, name string, seen map[string]bool) {
	if !namePattern.MatchString(name) {
		p.add(at+".name", "%q must be 1-63 lower-case letters, digits, - or _", name)
		seen[strings.ToLower(name)] = true
	} else if seen[name] {
		p.add(at+".name", "%q is used by another %s; names must be unique", name, kind)
	}
	seen[name] = true
}

// validate checks c and builds its checks. On a reload prev is the running configuration: a
// route's stateful checks (rate limiters, fal's JWKS cache) whose settings did not change are
// kept rather than built anew, so a reload neither refills buckets nor empties the cache.
func (c *fileConfig) validate(log *slog.Logger, prev *fileConfig) problems {
	var p problems
	clients, err := filters.NewClientIPHeader(c.TrustedProxies, c.ClientIPHeader)
	if err != nil {
		if _, herr := filters.NewClientIPHeader(nil, c.ClientIPHeader); herr != nil {
			p.add("client_ip_header", "%v", herr)
		} else {
			p.add("trusted_proxies", "%v", err)
		}
	}
	c.clients = clients
	if len(c.TrustedProxies) > 0 && c.ClientIPHeader == "" {
		// Proxies differ in which of the three headers they overwrite; one they pass through
		// untouched would let a sender choose its own address.
		p.add("client_ip_header", "required when trusted_proxies is set: name the one header your proxies set "+
			"(X-Forwarded-For, Forwarded or X-Real-IP), so that a sender cannot supply another one the proxy passes through")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.add("listen", "%q is not host:port (for example 0.0.0.0:443 or 127.0.0.1:8080)", c.Listen)
	}
	c.Admin.validate(&p)
	c.TLS.validate(&p)
	switch c.Log.Level { // newLogger has used it already; an invalid level fell back to info
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		p.add("log.format", "%q is not json or text", c.Log.Format)
	}
	switch c.Store.Type {
	case "embedded":
		if c.Store.Redis != nil {
			p.add("store.redis", "set, but store.type is embedded; set store.type: redis or remove it")
		}
	case "redis":
		if c.Store.Redis == nil {
			p.add("store.redis", "store.type is redis: set store.redis.url or store.redis.addrs")
		} else if opts := c.Store.Redis.validate(&p); opts != nil && len(p) == 0 && c.redis == nil {
			c.redis = redis.NewUniversalClient(opts)
		}
	default:
		p.add("store.type", "%q is not embedded or redis", c.Store.Type)
	}
	if r := *c.History.Retention; r < 0 {
		p.add("history.retention", "must be 0 (history off) or positive, got %v", r)
	}
	positive := func(path string, d time.Duration) {
		if d < 0 {
			p.add(path, "must be positive, got %v", d)
		}
	}
	positive("timeouts.read_header", c.Timeouts.ReadHeader)
	positive("timeouts.read", c.Timeouts.Read)
	positive("timeouts.write", c.Timeouts.Write)
	positive("timeouts.idle", c.Timeouts.Idle)
	if c.Timeouts.Read > 0 && c.Timeouts.ReadHeader > c.Timeouts.Read {
		p.add("timeouts.read_header", "%v is above timeouts.read (%v), which includes the headers", c.Timeouts.ReadHeader, c.Timeouts.Read)
	}
	positive("delivery.lease", c.Delivery.Lease)
	positive("delivery.poll_interval", c.Delivery.PollInterval)
	positive("delivery.sweep_interval", c.Delivery.SweepInterval)
	positive("delivery.shutdown_grace", c.Delivery.ShutdownGrace)

	targets := map[string]bool{}
	if len(c.Targets) == 0 {
		p.add("targets", "none defined; add at least one target with a name and a url")
	}
	for i := range c.Targets {
		t := &c.Targets[i]
		at := fmt.Sprintf("targets[%d]", i)
		p.checkName(at, "target", t.Name, targets)
		t.build(at, &p, c.Delivery.Lease)
	}

	names, paths := map[string]bool{}, map[string]string{}
	if len(c.Routes) == 0 {
		p.add("routes", "none defined; add at least one route with a name, path, provider and targets")
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		at := fmt.Sprintf("routes[%d]", i)
		p.checkName(at, "route", r.Name, names)
		if !strings.HasPrefix(r.Path, "/") {
			p.add(at+".path", "%q must start with /", r.Path)
		} else if other, dup := paths[r.Path]; dup {
			p.add(at+".path", "%q is also the path of %s; paths must be unique", r.Path, other)
		}
		paths[r.Path] = at
		preset, err := filters.NewPreset(r.Provider, r.generic())
		switch {
		case !slices.Contains(filters.Providers(), r.Provider):
			p.add(at+".provider", "%q is not a provider%s", r.Provider,
				suggest(r.Provider, filters.Providers(), "; use one of "+strings.Join(filters.Providers(), ", ")))
		case err != nil:
			p.add(at+".provider", "%v", err)
		}
		r.built = builtRoute{preset: preset}
		r.applyDefaults(c)
		r.buildChecks(at, &p, log, c.redis, c.redisPrefix(), prev.route(r.Name))
		if len(r.Targets) == 0 {
			p.add(at+".targets", "none listed; name at least one target from the targets section")
		}
		for j, rt := range r.Targets {
			tat := fmt.Sprintf("%s.targets[%d]", at, j)
			// With no target defined (or an invalid name, reported at its target) there is nothing new to say.
			if len(c.Targets) > 0 && !targets[rt.Name] && !targets[strings.ToLower(rt.Name)] {
				p.add(tat, "unknown target %q%s", rt.Name, suggest(rt.Name, slices.Collect(maps.Keys(targets)), "; define it under targets"))
			} else if slices.ContainsFunc(r.Targets[:j], func(o routeTarget) bool { return o.Name == rt.Name }) {
				p.add(tat, "target %q is listed twice; give it once (with one when)", rt.Name)
			}
			if rt.When == nil || preset == nil {
				continue
			}
			w, err := filters.NewWhen(preset, rt.When.Status, rt.When.Body)
			p.addErrs(tat+".when", err)
			if err == nil {
				if r.built.when == nil {
					r.built.when = map[string]relay.Matcher{}
				}
				r.built.when[rt.Name] = w
			}
		}
		// The verifier's forward headers (GitHub's) after the file's: check shows them, indexes stay.
		r.ForwardHeaders = relay.Route{ForwardHeaders: r.ForwardHeaders, Verifier: r.built.verifier}.WithDefaults().ForwardHeaders
		p.addErrs(at, relay.CheckRoute(relay.Route{ForwardHeaders: r.ForwardHeaders, MaxBody: int64(r.MaxBody),
			DedupeTTL: r.DedupeTTL, AckStatus: r.AckStatus}))
	}
	return p
}

// build makes the engine's target, reading its secrets, and has the engine check it (relay.CheckTarget:
// headers, TLS files, the URL, retry policy), reporting each problem under the target's key path at,
// each once.
func (t *targetConfig) build(at string, p *problems, lease time.Duration) {
	var key []byte
	if raw := p.secret(at, "signing_secret", t.SigningSecretEnv, t.SigningSecretFile); raw != "" {
		var err error
		if key, err = relay.ParseSigningSecret(raw); err != nil {
			p.add(at+"."+secretKey("signing_secret", t.SigningSecretEnv), "the secret is not usable: %v", err)
		}
	}
	rt := relay.Target{
		Name: t.Name, URL: t.URL, Timeout: t.Timeout, Concurrency: t.Concurrency,
		RateLimit: t.Rate, RateBurst: t.Burst, SigningKey: key,
		Retry: relay.RetryPolicy(t.Retry),
	}
	for i, h := range t.Headers {
		hat := fmt.Sprintf("%s.headers[%d]", at, i)
		if n := btoi(h.Value != "") + btoi(h.ValueEnv != "") + btoi(h.ValueFile != ""); n != 1 {
			p.add(hat, "set exactly one of value, value_env, value_file (a secret belongs in an env var or a file)")
			continue
		}
		v := h.Value
		if v == "" {
			if v = p.secret(hat, "value", h.ValueEnv, h.ValueFile); v == "" {
				continue
			}
		}
		rt.Headers = append(rt.Headers, relay.Header{Name: h.Name, Value: v})
	}
	if c := t.TLS; c != nil {
		rt.TLS = &relay.TargetTLS{CAFile: c.CAFile, CAOnly: c.CAOnly, CertFile: c.CertFile, KeyFile: c.KeyFile, ServerName: c.ServerName}
		switch c.MinVersion {
		case "", "1.2":
			rt.TLS.MinVersion = tls.VersionTLS12
		case "1.3":
			rt.TLS.MinVersion = tls.VersionTLS13
		default:
			p.add(at+".tls.min_version", "%q is not 1.2 or 1.3", c.MinVersion)
		}
		if c.InsecureSkipVerify {
			p.add(at+".tls.insecure_skip_verify", "is refused: an unverified target can be impersonated; "+
				"trust its private CA with tls.ca_file (and tls.server_name if its certificate names another host)")
		}
	}
	t.built = rt
	for _, err := range unjoin(relay.CheckTarget(rt, lease)) {
		// The engine quotes a bad URL whole: its user information is cut out here.
		if fe, ok := errors.AsType[*relay.FieldError](err); ok {
			if slices.ContainsFunc(*p, func(q problem) bool {
				// Reported already from the file's side; and a header left out shifts the indexes.
				return q.path == at+"."+fe.Field || strings.HasPrefix(fe.Field, "headers[") && len(rt.Headers) < len(t.Headers)
			}) {
				continue
			}
			p.add(at+"."+fe.Field, "%s", redactUserinfo(fe.Err.Error(), t.URL))
		} else {
			p.add(at, "%s", redactUserinfo(err.Error(), t.URL))
		}
	}
}

// addErrs adds each error joined in err under at, a relay.FieldError under at.<its field>.
func (p *problems) addErrs(at string, err error) {
	for _, err := range unjoin(err) {
		if fe, ok := errors.AsType[*relay.FieldError](err); ok {
			p.add(at+"."+fe.Field, "%v", fe.Err)
		} else {
			p.add(at, "%v", err)
		}
	}
}

// unjoin lists the errors an errors.Join made; nil for nil.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// redactURL returns s with the password in its user information replaced by xxxxx, or, when s
// does not parse as a URL with user information but holds an @, everything between :// and the
// last @ (a password with a / in it moves the @ out of the authority): a URL is printed and logged.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return u.Redacted()
		}
	}
	i, j := strings.Index(s, "://"), strings.LastIndexByte(s, '@')
	if i >= 0 && j > i {
		return s[:i+3] + "xxxxx" + s[j:]
	}
	return s
}

// redactedURLError describes err, the failure to parse raw, without raw's credentials: url.Error
// quotes the whole URL, and its cause may quote part of the user information.
func redactedURLError(raw string, err error) string {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		if strings.Contains(raw, "@") {
			return fmt.Sprintf("%q does not parse as a URL (the cause is not shown: it may quote the credentials)", redactURL(raw))
		}
		return fmt.Sprintf("%q does not parse as a URL: %v", raw, ue.Err)
	}
	return fmt.Sprintf("%s: %s", redactURL(raw), redactUserinfo(err.Error(), raw))
}

// redactUserinfo returns msg with the user information of raw (between :// and the last @), where
// msg quotes raw, replaced by xxxxx.
func redactUserinfo(msg, raw string) string {
	if i, j := strings.Index(raw, "://"), strings.LastIndexByte(raw, '@'); i >= 0 && j > i+3 {
		msg = strings.ReplaceAll(msg, raw[i+3:j], "xxxxx")
	}
	return msg
}

// warnSecretFiles warns about every *_file secret that group or others may read: anyone else on
// the host could read the secret.
func (c *fileConfig) warnSecretFiles(log *slog.Logger) {
	files := map[string]string{}
	if c.Admin.TokenFile != "" {
		files["admin.token_file"] = c.Admin.TokenFile
	}
	if c.Store.Redis != nil && c.Store.Redis.PasswordFile != "" {
		files["store.redis.password_file"] = c.Store.Redis.PasswordFile
	}
	for i, t := range c.Targets {
		if t.SigningSecretFile != "" {
			files[fmt.Sprintf("targets[%d].signing_secret_file", i)] = t.SigningSecretFile
		}
	}
	for i, r := range c.Routes {
		if r.Verify == nil {
			continue
		}
		for j, f := range r.Verify.SecretsFiles {
			files[fmt.Sprintf("routes[%d].verify.secrets_files[%d]", i, j)] = f
		}
	}
	for _, key := range slices.Sorted(maps.Keys(files)) {
		fi, err := os.Stat(files[key])
		if err != nil { // validate reported it
			continue
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			log.Warn("secret file is readable by group or others: chmod 600 it (or 400)",
				"key", key, "file", files[key], "mode", fmt.Sprintf("%04o", mode))
		}
	}
}

// readSecret reads one secret from an env var or a file; "" when neither is named. The error
// never contains the value.
func readSecret(env, file string) (string, error) {
	switch {
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set; export it or remove the key", env)
		}
		if strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("environment variable %s is set but empty; give it the secret's value", env)
		}
		return strings.TrimSpace(v), nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("cannot read secret file: %w", err)
		}
		if v := strings.TrimSpace(string(b)); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("secret file %s is empty", file)
	}
	return "", nil
}

// secret reads the secret that env or file names (readSecret), reporting a problem at
// at.<key>_env or at.<key>_file, or at at when both are set.
func (p *problems) secret(at, key, env, file string) string {
	if env != "" && file != "" {
		p.add(at, "set %s_env or %s_file, not both", key, key)
	}
	v, err := readSecret(env, file)
	if err != nil {
		p.add(at+"."+secretKey(key, env), "%v", err)
	}
	return v
}

// secretKey names the key of the secret readSecret reads: <key>_env when an env var is named,
// else <key>_file.
func secretKey(key, env string) string {
	if env != "" {
		return key + "_env"
	}
	return key + "_file"
}

// buildChecks constructs the route's allowlist, rate limiter and verifier, reporting problems
// under the route's key path, and refuses a route that anyone could post to unless it says so.
func (r *routeConfig) buildChecks(at string, p *problems, log *slog.Logger, rdb redis.UniversalClient, redisPrefix string, prev *routeConfig) {
	entries := append([]string(nil), r.Allowlist...)
	bad := 0
	for i, e := range r.Allowlist { // each on its own, so that the problem names its entry
		if _, err := filters.NewAllowlist([]string{e}); err != nil {
			p.add(fmt.Sprintf("%s.allowlist[%d]", at, i), "%v", err)
			bad++
		}
	}
	for i, f := range r.AllowlistFiles {
		more, err := filters.ReadAllowlistFile(f)
		if err != nil {
			p.add(fmt.Sprintf("%s.allowlist_files[%d]", at, i), "%v", err)
			bad++
		}
		entries = append(entries, more...)
	}
	// Built whenever a source is named: an emptied file must fail, not turn the allowlist off.
	if len(r.Allowlist)+len(r.AllowlistFiles) > 0 && bad == 0 {
		if al, err := filters.NewAllowlist(entries); err != nil {
			p.add(at+".allowlist", "%v", err)
		} else {
			r.built.guards = append(r.built.guards, al)
		}
	}
	if rl := r.RateLimit; rl != nil {
		// Two limiters: the per-address one runs before the body is read (it protects the
		// verifier's CPU), the route-wide one only after verification, so that senders without the
		// secret cannot spend the provider's allowance.
		var (
			perIP, route relay.Guard
			err          error
		)
		if prev != nil && prev.RateLimit != nil && *prev.RateLimit == *rl && prev.redisPrefix == redisPrefix {
			perIP, route = prev.built.perIPLimit, prev.built.routeLimit
		} else {
			perIP, route, err = rl.build(r.Name, rdb, redisPrefix)
		}
		r.redisPrefix = redisPrefix
		r.built.perIPLimit, r.built.routeLimit = perIP, route
		if err != nil {
			p.add(at+".rate_limit", "%v", err)
		} else {
			if perIP != nil {
				r.built.guards = append(r.built.guards, perIP)
			}
			if route != nil {
				r.built.verifiedGuards = append(r.built.verifiedGuards, route)
			}
		}
	}
	switch v := r.Verify; {
	case v == nil:
	case v.Type == "fal" && v.JWKSFile == "" && prev != nil && prev.Verify != nil && reflect.DeepEqual(*prev.Verify, *v):
		// Its JWKS cache is state; a jwks_file is reread, so that a reload picks up new keys.
		r.built.verifier = prev.built.verifier
	default:
		r.built.verifier = v.build(at+".verify", log, p)
	}
	// Without a provider its defaults are unknown: the route may not be open at all.
	if r.Verify == nil && len(r.Allowlist)+len(r.AllowlistFiles) == 0 && !r.Insecure && r.built.preset != nil {
		p.add(at, "accepts webhooks from anyone: add verify (url_token, or the provider's signature scheme), "+
			"an allowlist, or insecure: true to accept that")
	}
}

// build makes the per-address limiter and the route-wide one, each nil when its rate is 0. Both
// constructors validate, so both run even for a rate of 0.
func (rl *rateConfig) build(route string, rdb redis.UniversalClient, redisPrefix string) (perIP, all relay.Guard, err error) {
	if rl.Shared && rdb == nil {
		return nil, nil, errors.New("shared: true keeps the limit in Redis; it needs store.type: redis")
	}
	mk := func(c filters.RateConfig) (relay.Guard, error) {
		if rl.Shared {
			return redisstore.NewRateLimiter(rdb, redisPrefix, route, c)
		}
		c.Now = time.Now
		return filters.NewRateLimiter(c)
	}
	perIP, err = mk(filters.RateConfig{PerIP: rl.PerIP, PerIPBurst: rl.PerIPBurst, MaxTracked: rl.MaxTracked, IPv6Prefix: rl.IPv6Prefix})
	if err != nil {
		return nil, nil, err
	}
	all, err = mk(filters.RateConfig{Route: rl.Route, RouteBurst: rl.RouteBurst})
	if err != nil {
		return nil, nil, err
	}
	if rl.PerIP == 0 {
		perIP = nil
	}
	if rl.Route == 0 {
		all = nil
	}
	return perIP, all, nil
}

// posture says in one line who may post to the route, for relay check and the startup log.
func (r *routeConfig) posture() string {
	var parts []string
	if v := r.Verify; v != nil {
		desc := "verify " + v.Type
		switch {
		case v.Type == "url_token" && v.Query != "":
			desc += " (query parameter " + v.Query + ")"
		case v.Type == "url_token":
			desc += " (last path segment: " + r.Path + "/<token>)"
		case v.Type == "fal" && v.JWKSFile != "":
			desc += " (keys from " + v.JWKSFile + ")"
		case v.Type == "fal":
			desc += " (keys from " + v.JWKSURL + ")"
		}
		if n := len(v.SecretsEnv) + len(v.SecretsFiles); n > 1 {
			desc += fmt.Sprintf(", %d secrets active", n)
		}
		parts = append(parts, desc)
	}
	if n := len(r.Allowlist) + len(r.AllowlistFiles); n > 0 {
		parts = append(parts, fmt.Sprintf("allowlist of %d entries/files", n))
	}
	if rl := r.RateLimit; rl != nil {
		parts = append(parts, fmt.Sprintf("rate limit %g/s per address, %g/s for the route", rl.PerIP, rl.Route))
	}
	if len(parts) == 0 || (r.Verify == nil && len(r.Allowlist)+len(r.AllowlistFiles) == 0) {
		parts = append(parts, "INSECURE: accepts webhooks from anyone (insecure: true)")
	}
	return strings.Join(parts, "; ")
}

// verifyTypes lists the verification schemes.
func verifyTypes() []string {
	return []string{"standard_webhooks", "stripe", "github", "hmac", "fal", "url_token"}
}

// build constructs the verifier, reporting problems under at; nil when there are any.
func (v *verifyConfig) build(at string, log *slog.Logger, p *problems) relay.Verifier {
	first := len(*p)
	var secrets []string
	for i, env := range v.SecretsEnv {
		s, err := readSecret(env, "")
		if err != nil {
			p.add(fmt.Sprintf("%s.secrets_env[%d]", at, i), "%v", err)
		}
		secrets = append(secrets, s)
	}
	for i, f := range v.SecretsFiles {
		s, err := readSecret("", f)
		if err != nil {
			p.add(fmt.Sprintf("%s.secrets_files[%d]", at, i), "%v", err)
		}
		secrets = append(secrets, s)
	}
	needSecrets := v.Type != "fal"
	switch {
	case !slices.Contains(verifyTypes(), v.Type):
		p.add(at+".type", "%q is not a verify type%s", v.Type, suggest(v.Type, verifyTypes(), "; use one of "+strings.Join(verifyTypes(), ", ")))
	case needSecrets && len(secrets) == 0:
		p.add(at, "type %s needs secrets_env or secrets_files (several for rotation)", v.Type)
	case !needSecrets && len(secrets) > 0:
		p.add(at, "type fal verifies with fal's public keys (jwks_url or jwks_file), not secrets; remove secrets_env and secrets_files")
	}
	if len(*p) > first {
		return nil
	}
	var (
		ver relay.Verifier
		err error
	)
	switch v.Type {
	case "standard_webhooks":
		ver, err = filters.NewStandardWebhooks(secrets, v.Tolerance, time.Now)
	case "stripe":
		ver, err = filters.NewStripe(secrets, v.Tolerance, time.Now)
	case "github":
		ver, err = filters.NewGitHub(secrets)
	case "hmac":
		ver, err = filters.NewHMAC(filters.HMACConfig{Header: v.Header, Algorithm: v.Algorithm, Encoding: v.Encoding,
			Prefix: v.Prefix, TimestampHeader: v.TimestampHeader, Template: v.Template, Tolerance: v.Tolerance}, secrets, time.Now)
	case "fal":
		ver, err = filters.NewFal(filters.FalConfig{JWKSURL: v.JWKSURL, JWKSFile: v.JWKSFile, Tolerance: v.Tolerance,
			Now: time.Now, Logger: log})
	case "url_token":
		ver, err = filters.NewURLToken(secrets, v.Query)
	}
	p.addErrs(at, err)
	return ver
}

// relayConfig turns the validated file config into the engine's, without what only serve has
// (store, logger, metrics, readiness checks): serve completes it, check validates it as it is.
func (c *fileConfig) relayConfig() relay.Config {
	rc := relay.Config{Clients: c.clients, UserAgent: "hookrelay/" + version,
		Lease: c.Delivery.Lease, PollInterval: c.Delivery.PollInterval,
		SweepInterval: c.Delivery.SweepInterval, ShutdownGrace: c.Delivery.ShutdownGrace,
		ReadHeaderTimeout: c.Timeouts.ReadHeader, ReadTimeout: c.Timeouts.Read,
		WriteTimeout: c.Timeouts.Write, IdleTimeout: c.Timeouts.Idle,
	}
	for _, t := range c.Targets {
		rc.Targets = append(rc.Targets, t.built)
	}
	for _, r := range c.Routes {
		rc.Routes = append(rc.Routes, relay.Route{
			Name: r.Name, Path: r.Path, Provider: r.Provider, Extractor: r.built.preset, Targets: r.targetNames(), When: r.built.when,
			MaxBody: int64(r.MaxBody), DedupeTTL: r.DedupeTTL, RequireJobID: r.RequireJobID, AckStatus: r.AckStatus,
			Guards: r.built.guards, Verifier: r.built.verifier, VerifiedGuards: r.built.verifiedGuards,
			TokenInPath:    r.Verify != nil && r.Verify.Type == "url_token" && r.Verify.Query == "",
			ForwardHeaders: r.ForwardHeaders,
		})
	}
	return rc
}
