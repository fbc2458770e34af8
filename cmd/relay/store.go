package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
	"github.com/hookrelay/hookrelay/relay/redisstore"
)

// redisConfig is store.redis. One of url or addrs; credentials only from env vars or files.
type redisConfig struct {
	URL          string        `yaml:"url,omitempty"`   // redis:// or rediss://, without a password
	Addrs        []string      `yaml:"addrs,omitempty"` // several: Cluster, or Sentinel with master_name
	MasterName   string        `yaml:"master_name,omitempty"`
	DB           int           `yaml:"db"`
	UsernameEnv  string        `yaml:"username_env,omitempty"`
	PasswordEnv  string        `yaml:"password_env,omitempty"`
	PasswordFile string        `yaml:"password_file,omitempty"`
	TLS          redisTLS      `yaml:"tls"`
	Prefix       string        `yaml:"prefix"`
	PoolSize     int           `yaml:"pool_size"`
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// docs/SCALING.md: hash tags the keys spread over, and replicas each enqueue waits for.
	Shards         int           `yaml:"shards"`
	MinReplicas    int           `yaml:"min_replicas"`
	ReplicaTimeout time.Duration `yaml:"replica_timeout"`
}

type redisTLS struct {
	Enabled    bool   `yaml:"enabled"`
	CAFile     string `yaml:"ca_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty"`
}

func (r *redisConfig) applyDefaults() {
	if r.Prefix == "" {
		r.Prefix = "hookrelay"
	}
	if r.PoolSize == 0 {
		r.PoolSize = 128 // above the concurrent webhooks and deliveries one replica has in flight
	}
	if r.DialTimeout == 0 {
		r.DialTimeout = 2 * time.Second
	}
	if r.ReadTimeout == 0 {
		r.ReadTimeout = 2 * time.Second
	}
	if r.WriteTimeout == 0 {
		r.WriteTimeout = 2 * time.Second
	}
	if r.Shards == 0 {
		r.Shards = 1
	}
	if r.ReplicaTimeout == 0 {
		r.ReplicaTimeout = redisstore.DefaultReplicaTimeout
	}
}

// validate reports problems under store.redis and builds the client options.
func (r *redisConfig) validate(p *problems) *redis.UniversalOptions {
	const at = "store.redis"
	// ContextTimeoutEnabled: without it go-redis ignores a context's deadline, and a webhook
	// would wait out read_timeout (and the retries) rather than the relay's store timeout.
	opts := &redis.UniversalOptions{DB: r.DB, MasterName: r.MasterName, PoolSize: r.PoolSize,
		DialTimeout: r.DialTimeout, ReadTimeout: r.ReadTimeout, WriteTimeout: r.WriteTimeout,
		ContextTimeoutEnabled: true}
	switch {
	case r.URL != "" && len(r.Addrs) > 0:
		p.add(at, "set url or addrs, not both")
	case r.URL != "":
		u, err := redis.ParseURL(r.URL)
		if err != nil {
			p.add(at+".url", "%s", redactedURLError(r.URL, err))
			return nil
		}
		if u.Password != "" {
			p.add(at+".url", "holds a password; move it to password_env or password_file")
		}
		opts.Addrs, opts.DB, opts.Username = []string{u.Addr}, u.DB, u.Username
		if u.TLSConfig != nil {
			r.TLS.Enabled = true
		}
	case len(r.Addrs) > 0:
		opts.Addrs = r.Addrs
	default:
		p.add(at, "set url (redis://host:6379/0) or addrs ([host:6379, ...])")
	}
	for i, a := range opts.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			p.add(fmt.Sprintf("%s.addrs[%d]", at, i), "%q is not host:port", a)
		}
	}
	if r.MasterName != "" && r.URL != "" {
		p.add(at+".master_name", "Sentinel needs addrs (the sentinels), not url")
	}
	if r.PoolSize < 1 {
		p.add(at+".pool_size", "must be at least 1, got %d", r.PoolSize)
	}
	// The store's own rules (prefix, shards, replicas), as redisstore.New applies them.
	for _, err := range unjoin(redisstore.Options{Prefix: r.Prefix, Shards: r.Shards, MinReplicas: r.MinReplicas,
		ReplicaTimeout: r.ReplicaTimeout}.Check()) {
		if fe, ok := errors.AsType[*relay.FieldError](err); ok {
			p.add(at+"."+fe.Field, "%v", fe.Err)
		} else {
			p.add(at, "%v", err)
		}
	}
	// The WAIT answers within the pipeline's read: it must end well before read_timeout.
	if r.MinReplicas > 0 && (r.ReplicaTimeout <= 0 || r.ReplicaTimeout > r.ReadTimeout/2) {
		p.add(at+".replica_timeout", "must be above 0 and at most half of read_timeout (%v), got %v", r.ReadTimeout, r.ReplicaTimeout)
	}
	if r.UsernameEnv != "" {
		u, err := readSecret(r.UsernameEnv, "")
		if err != nil {
			p.add(at+".username_env", "%v", err)
		}
		opts.Username = u
	}
	if r.PasswordEnv != "" && r.PasswordFile != "" {
		p.add(at, "set password_env or password_file, not both")
	}
	pw, err := readSecret(r.PasswordEnv, r.PasswordFile)
	if err != nil {
		key := "password_env"
		if r.PasswordFile != "" {
			key = "password_file"
		}
		p.add(at+"."+key, "%v", err)
	}
	opts.Password = pw
	if r.MasterName != "" {
		opts.SentinelPassword = pw
	}
	if r.TLS.Enabled {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.TLS.ServerName}
		if r.TLS.CAFile != "" {
			pem, err := os.ReadFile(r.TLS.CAFile)
			pool := x509.NewCertPool()
			if err != nil || !pool.AppendCertsFromPEM(pem) {
				p.add(at+".tls.ca_file", "cannot read PEM certificates from %s", r.TLS.CAFile)
			}
			tc.RootCAs = pool
		}
		opts.TLSConfig = tc
	}
	return opts
}

// openStore opens the configured store. The Redis client, when there is one, is shared with the
// checks that keep state in Redis (shared rate limits); the store closes it.
func openStore(cfg *fileConfig, log *slog.Logger) (relay.Store, error) {
	switch cfg.Store.Type {
	case "redis":
		rc := cfg.Store.Redis
		s, err := redisstore.New(cfg.redis, redisstore.Options{Prefix: rc.Prefix, Logger: log,
			History: *cfg.History.Retention, Shards: rc.Shards, MinReplicas: rc.MinReplicas, ReplicaTimeout: rc.ReplicaTimeout})
		if err != nil {
			return nil, err
		}
		// A store of another shard count stops the relay here; Redis unreachable does not (the
		// store checks again before its first write, and webhooks get 503 meanwhile).
		ctx, cancel := context.WithTimeout(context.Background(), rc.DialTimeout+rc.ReadTimeout)
		defer cancel()
		if err := s.CheckLayout(ctx); errors.Is(err, redisstore.ErrShardCount) {
			_ = s.Close()
			return nil, fmt.Errorf("store.redis.shards: %w", err)
		} else if err != nil {
			log.Warn("store: cannot check the shard count yet", "error", err)
		}
		return s, nil
	default:
		if err := os.MkdirAll(filepath.Dir(cfg.Store.Path), 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		return boltstore.Open(cfg.Store.Path, boltstore.Options{Logger: log, History: *cfg.History.Retention})
	}
}
