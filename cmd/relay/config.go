package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// fileConfig is the YAML file. Only this package knows YAML; the engine gets plain structs.
type fileConfig struct {
	Listen   string         `yaml:"listen"`
	DataDir  string         `yaml:"data_dir"`
	Log      logConfig      `yaml:"log"`
	Store    storeConfig    `yaml:"store"`
	Delivery deliveryConfig `yaml:"delivery"`
	Targets  []targetConfig `yaml:"targets"`
	Routes   []routeConfig  `yaml:"routes"`
}

type logConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type storeConfig struct {
	Type string `yaml:"type"`
	Path string `yaml:"path"`
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
}

type retryConfig struct {
	Initial       time.Duration `yaml:"initial"`
	Multiplier    float64       `yaml:"multiplier"`
	MaxBackoff    time.Duration `yaml:"max_backoff"`
	MaxAttempts   int           `yaml:"max_attempts"`
	MaxAge        time.Duration `yaml:"max_age"`
	MaxRetryAfter time.Duration `yaml:"max_retry_after"`
}

type routeConfig struct {
	Name         string         `yaml:"name"`
	Path         string         `yaml:"path"`
	Provider     string         `yaml:"provider"`
	Targets      []string       `yaml:"targets"`
	MaxBody      byteSize       `yaml:"max_body"`
	DedupeTTL    time.Duration  `yaml:"dedupe_ttl"`
	RequireJobID bool           `yaml:"require_job_id"`
	AckStatus    int            `yaml:"ack_status"`
	Generic      *genericConfig `yaml:"generic,omitempty"`
}

type genericConfig struct {
	JobID     string            `yaml:"job_id"`
	Status    string            `yaml:"status,omitempty"`
	StatusMap map[string]string `yaml:"status_map,omitempty"`
}

// byteSize reads "1MiB", "512KiB", "64KB" or a plain number of bytes.
type byteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

func parseByteSize(s string) (byteSize, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("%q is not a size like 1MiB, 512KiB or 65536", s)
	}
	return byteSize(n * mult), nil
}

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
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

// Defaults, also documented in config.example.yaml and the README.
const (
	defaultListen      = "127.0.0.1:8080"
	defaultDataDir     = "./data"
	defaultMaxBody     = 1 << 20
	defaultDedupeTTL   = 72 * time.Hour
	defaultTimeout     = 30 * time.Second
	defaultConcurrency = 8
)

var (
	namePattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	unknownKeyErr = regexp.MustCompile(`field (\S+) not found in type \S+`)
)

// loadConfig reads, decodes strictly, fills defaults and validates. The error lists every problem
// found, each prefixed with its key path.
func loadConfig(path string) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parseConfig(raw, path)
}

func parseConfig(raw []byte, name string) (*fileConfig, error) {
	var c fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		msg := unknownKeyErr.ReplaceAllString(err.Error(), `unknown key "$1" (check its spelling against config.example.yaml)`)
		return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(msg, "yaml: "))
	}
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%s: invalid configuration:\n%w", name, err)
	}
	return &c, nil
}

func (c *fileConfig) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, defaultListen)
	def(&c.DataDir, defaultDataDir)
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
	def(&c.Store.Type, "embedded")
	if c.Store.Type == "embedded" {
		def(&c.Store.Path, filepath.Join(c.DataDir, "relay.db"))
	}
	dur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	dur(&c.Delivery.Lease, 2*time.Minute)
	dur(&c.Delivery.PollInterval, time.Second)
	dur(&c.Delivery.SweepInterval, time.Minute)
	dur(&c.Delivery.ShutdownGrace, 10*time.Second)
	rp := relay.DefaultRetryPolicy()
	for i := range c.Targets {
		t := &c.Targets[i]
		dur(&t.Timeout, defaultTimeout)
		if t.Concurrency == 0 {
			t.Concurrency = defaultConcurrency
		}
		r := &t.Retry
		dur(&r.Initial, rp.Initial)
		dur(&r.MaxBackoff, rp.Max)
		dur(&r.MaxAge, rp.MaxAge)
		dur(&r.MaxRetryAfter, rp.MaxRetryAfter)
		if r.Multiplier == 0 {
			r.Multiplier = rp.Multiplier
		}
		if r.MaxAttempts == 0 {
			r.MaxAttempts = rp.MaxAttempts
		}
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.MaxBody == 0 {
			r.MaxBody = defaultMaxBody
		}
		dur(&r.DedupeTTL, defaultDedupeTTL)
		if r.AckStatus == 0 {
			if p, err := filters.NewPreset(r.Provider, r.generic()); err == nil {
				r.AckStatus = p.AckStatus()
			}
		}
	}
}

func (r *routeConfig) generic() *filters.Generic {
	if r.Generic == nil {
		return nil
	}
	return &filters.Generic{JobIDPath: r.Generic.JobID, StatusPath: r.Generic.Status, StatusMap: r.Generic.StatusMap}
}

// problems collects validation errors, each with its key path.
type problems []error

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

func (c *fileConfig) validate() error {
	var p problems
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.add("listen", "%q is not host:port (for example 0.0.0.0:443 or 127.0.0.1:8080)", c.Listen)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		p.add("log.format", "%q is not json or text", c.Log.Format)
	}
	if c.Store.Type != "embedded" {
		p.add("store.type", "%q is not supported; use embedded", c.Store.Type)
	}
	positive := func(path string, d time.Duration) {
		if d < 0 {
			p.add(path, "must be positive, got %v", d)
		}
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
		if !namePattern.MatchString(t.Name) {
			p.add(at+".name", "%q must be 1-63 lower-case letters, digits, - or _", t.Name)
		} else if targets[t.Name] {
			p.add(at+".name", "%q is used by another target; names must be unique", t.Name)
		}
		targets[t.Name] = true
		if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.add(at+".url", "%q is not an absolute http:// or https:// URL", t.URL)
		}
		if t.Timeout <= 0 || t.Timeout >= c.Delivery.Lease {
			p.add(at+".timeout", "%v must be positive and below delivery.lease (%v)", t.Timeout, c.Delivery.Lease)
		}
		if t.Concurrency < 1 {
			p.add(at+".concurrency", "must be at least 1, got %d", t.Concurrency)
		}
		if t.Rate < 0 || t.Burst < 0 {
			p.add(at+".rate", "rate and burst must not be negative")
		}
		if t.SigningSecretEnv != "" && t.SigningSecretFile != "" {
			p.add(at, "set signing_secret_env or signing_secret_file, not both")
		}
		if _, err := t.signingKey(); err != nil {
			p.add(at+".signing_secret_"+t.secretSource(), "%v", err)
		}
		r := &t.Retry
		if r.Initial <= 0 {
			p.add(at+".retry.initial", "must be positive, got %v", r.Initial)
		}
		if r.Multiplier < 1 {
			p.add(at+".retry.multiplier", "must be at least 1, got %v", r.Multiplier)
		}
		if r.MaxBackoff < r.Initial {
			p.add(at+".retry.max_backoff", "%v is below retry.initial (%v)", r.MaxBackoff, r.Initial)
		}
		if r.MaxAttempts < 1 {
			p.add(at+".retry.max_attempts", "must be at least 1, got %d", r.MaxAttempts)
		}
		if r.MaxAge <= 0 {
			p.add(at+".retry.max_age", "must be positive, got %v", r.MaxAge)
		}
		if r.MaxRetryAfter < 0 {
			p.add(at+".retry.max_retry_after", "must not be negative, got %v", r.MaxRetryAfter)
		}
	}

	names, paths := map[string]bool{}, map[string]string{}
	if len(c.Routes) == 0 {
		p.add("routes", "none defined; add at least one route with a name, path, provider and targets")
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		at := fmt.Sprintf("routes[%d]", i)
		if !namePattern.MatchString(r.Name) {
			p.add(at+".name", "%q must be 1-63 lower-case letters, digits, - or _", r.Name)
		} else if names[r.Name] {
			p.add(at+".name", "%q is used by another route; names must be unique", r.Name)
		}
		names[r.Name] = true
		if !strings.HasPrefix(r.Path, "/") {
			p.add(at+".path", "%q must start with /", r.Path)
		} else if other, dup := paths[r.Path]; dup {
			p.add(at+".path", "%q is also the path of %s; paths must be unique", r.Path, other)
		}
		paths[r.Path] = at
		if _, err := filters.NewPreset(r.Provider, r.generic()); err != nil {
			p.add(at+".provider", "%v", err)
		}
		if len(r.Targets) == 0 {
			p.add(at+".targets", "none listed; name at least one target from the targets section")
		}
		for j, name := range r.Targets {
			if !targets[name] {
				p.add(fmt.Sprintf("%s.targets[%d]", at, j), "unknown target %q; define it under targets", name)
			}
		}
		if r.MaxBody <= 0 {
			p.add(at+".max_body", "must be positive")
		}
		if r.DedupeTTL <= 0 {
			p.add(at+".dedupe_ttl", "must be positive, got %v", r.DedupeTTL)
		}
		if r.AckStatus != 200 && r.AckStatus != 202 {
			p.add(at+".ack_status", "%d must be 200 or 202", r.AckStatus)
		}
	}
	return errors.Join(p...)
}

func (t *targetConfig) secretSource() string {
	if t.SigningSecretFile != "" {
		return "file"
	}
	return "env"
}

// signingKey reads the target's secret from its env var or file; nil when it has none.
func (t *targetConfig) signingKey() ([]byte, error) {
	var raw string
	switch {
	case t.SigningSecretEnv != "":
		v, ok := os.LookupEnv(t.SigningSecretEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("environment variable %s is not set; export it or remove the key", t.SigningSecretEnv)
		}
		raw = v
	case t.SigningSecretFile != "":
		b, err := os.ReadFile(t.SigningSecretFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read secret file: %w", err)
		}
		raw = string(b)
	default:
		return nil, nil
	}
	key, err := relay.ParseSigningSecret(raw)
	if err != nil {
		return nil, fmt.Errorf("the secret is not usable: %w", err)
	}
	return key, nil
}

// engineConfig turns the validated file config into the engine's structs.
func (c *fileConfig) engineConfig() ([]relay.Route, []relay.Target, error) {
	targets := make([]relay.Target, 0, len(c.Targets))
	for _, t := range c.Targets {
		key, err := t.signingKey()
		if err != nil {
			return nil, nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		targets = append(targets, relay.Target{
			Name: t.Name, URL: t.URL, Timeout: t.Timeout, Concurrency: t.Concurrency,
			RateLimit: t.Rate, RateBurst: t.Burst, SigningKey: key,
			Retry: relay.RetryPolicy{
				Initial: t.Retry.Initial, Multiplier: t.Retry.Multiplier, Max: t.Retry.MaxBackoff,
				MaxAttempts: t.Retry.MaxAttempts, MaxAge: t.Retry.MaxAge, MaxRetryAfter: t.Retry.MaxRetryAfter,
			},
		})
	}
	routes := make([]relay.Route, 0, len(c.Routes))
	for _, r := range c.Routes {
		preset, err := filters.NewPreset(r.Provider, r.generic())
		if err != nil {
			return nil, nil, fmt.Errorf("route %s: %w", r.Name, err)
		}
		routes = append(routes, relay.Route{
			Name: r.Name, Path: r.Path, Provider: r.Provider, Extractor: preset, Targets: r.Targets,
			MaxBody: int64(r.MaxBody), DedupeTTL: r.DedupeTTL, RequireJobID: r.RequireJobID, AckStatus: r.AckStatus,
		})
	}
	return routes, targets, nil
}
