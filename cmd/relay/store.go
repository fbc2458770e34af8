package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
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

// validate reports problems under store.redis and returns the client's options; redisstore
// checks the settings and applies their defaults, which are kept here to show what serve runs with.
func (r *redisConfig) validate(p *problems) *redis.UniversalOptions {
	const at = "store.redis"
	opts := redis.UniversalOptions{Addrs: r.Addrs, DB: r.DB, MasterName: r.MasterName, PoolSize: r.PoolSize,
		DialTimeout: r.DialTimeout, ReadTimeout: r.ReadTimeout, WriteTimeout: r.WriteTimeout}
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
	case len(r.Addrs) == 0:
		p.add(at, "set url (redis://host:6379/0) or addrs ([host:6379, ...])")
	}
	if r.MasterName != "" && r.URL != "" {
		p.add(at+".master_name", "Sentinel needs addrs (the sentinels), not url")
	}
	if r.UsernameEnv != "" {
		opts.Username = p.secret(at, "username", r.UsernameEnv, "")
	}
	opts.Password = p.secret(at, "password", r.PasswordEnv, r.PasswordFile)
	if r.TLS.Enabled {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.TLS.ServerName}
		if r.TLS.CAFile != "" {
			pem, err := os.ReadFile(r.TLS.CAFile)
			opts.TLSConfig.RootCAs = x509.NewCertPool()
			if err != nil || !opts.TLSConfig.RootCAs.AppendCertsFromPEM(pem) {
				p.add(at+".tls.ca_file", "cannot read PEM certificates from %s", r.TLS.CAFile)
			}
		}
	}
	opts, o, err := redisstore.ClientOptions(opts, r.storeOptions())
	p.addErrs(at, err)
	r.PoolSize, r.DialTimeout, r.ReadTimeout, r.WriteTimeout = opts.PoolSize, opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout
	r.Prefix, r.Shards, r.ReplicaTimeout = o.Prefix, o.Shards, o.ReplicaTimeout
	return &opts
}

func (r *redisConfig) storeOptions() redisstore.Options {
	return redisstore.Options{Prefix: r.Prefix, Shards: r.Shards, MinReplicas: r.MinReplicas, ReplicaTimeout: r.ReplicaTimeout}
}

// openStore opens the configured store. The Redis client, when there is one, is shared with the
// checks that keep state in Redis (shared rate limits); the store closes it.
func openStore(cfg *fileConfig, log *slog.Logger) (relay.Store, error) {
	switch cfg.Store.Type {
	case "redis":
		rc := cfg.Store.Redis
		o := rc.storeOptions()
		o.Logger, o.History = log, *cfg.History.Retention
		s, err := redisstore.New(cfg.redis, o)
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
