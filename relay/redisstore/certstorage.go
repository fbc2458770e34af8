package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

var (
	_ certmagic.Storage          = (*CertStorage)(nil)
	_ certmagic.TryLocker        = (*CertStorage)(nil)
	_ certmagic.LockLeaseRenewer = (*CertStorage)(nil)
)

// CertStorage is a certmagic.Storage on Redis, so that replicas share certificates, keys, ACME
// accounts and challenge tokens, and only one of them talks to the CA for a name at a time.
//
// Layout, under the store's hash tag (one Cluster slot):
//
//	{p}:cert:f:<key>     HASH   v (the value), m (modified, Unix ms)
//	{p}:cert:idx         ZSET   every key, score 0, so that List and directory lookups are
//	                            range scans (ZRANGE BYLEX)
//	{p}:cert:lock:<name> STRING a random token, with a PX lease renewed while the lock is held
//
// Keys are certmagic's: slash-separated paths; a "directory" is any proper prefix ending before
// a slash, as in certmagic.FileStorage.
type CertStorage struct {
	rdb      redis.UniversalClient
	log      *slog.Logger
	base     string // "{prefix}:cert:"
	lease    time.Duration
	poll     time.Duration
	mu       sync.Mutex
	held     map[string]*heldLock // locks this process holds, by name
	now      func() time.Time
	tokenGen func() string
}

type heldLock struct {
	token string
	stop  chan struct{}
	done  chan struct{}
}

// CertStorageOptions tune a CertStorage. The zero value is a good default.
type CertStorageOptions struct {
	// Prefix is the store's prefix (Options.Prefix).
	Prefix string
	// LockLease is how long a lock outlives a holder that died; the holder renews it at a third
	// of that. Default 30s.
	LockLease time.Duration
	// LockPoll is how often a waiting Lock tries again; default 500ms.
	LockPoll time.Duration
	Logger   *slog.Logger
}

// NewCertStorage returns a certificate storage on client. It does not own the client: the store
// closes it.
func NewCertStorage(client redis.UniversalClient, opt CertStorageOptions) (*CertStorage, error) {
	if client == nil {
		return nil, errors.New("redisstore: cert storage: nil client")
	}
	prefix, err := keyPrefix(opt.Prefix)
	if err != nil {
		return nil, fmt.Errorf("redisstore: cert storage: %w", err)
	}
	if opt.LockLease <= 0 {
		opt.LockLease = 30 * time.Second
	}
	if opt.LockPoll <= 0 {
		opt.LockPoll = 500 * time.Millisecond
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &CertStorage{rdb: client, log: opt.Logger, base: "{" + prefix + "}:cert:", lease: opt.LockLease,
		poll: opt.LockPoll, held: map[string]*heldLock{}, now: time.Now, tokenGen: randomToken}, nil
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

func (s *CertStorage) fileKey(key string) string { return s.base + "f:" + key }
func (s *CertStorage) indexKey() string          { return s.base + "idx" }
func (s *CertStorage) lockKey(name string) string {
	return s.base + "lock:" + name
}

// normKey drops the slashes certmagic's paths might carry at either end.
func normKey(key string) string { return strings.Trim(key, "/") }

// Store writes value at key.
func (s *CertStorage) Store(ctx context.Context, key string, value []byte) error {
	key = normKey(key)
	if key == "" {
		return errors.New("redisstore: cert storage: empty key")
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.fileKey(key), "v", value, "m", s.now().UnixMilli())
		p.ZAdd(ctx, s.indexKey(), redis.Z{Member: key})
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: cert storage: store %s: %w", key, err)
	}
	return nil
}

// Load reads key; fs.ErrNotExist when it is absent.
func (s *CertStorage) Load(ctx context.Context, key string) ([]byte, error) {
	key = normKey(key)
	v, err := s.rdb.HGet(ctx, s.fileKey(key), "v").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: cert storage: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: cert storage: load %s: %w", key, err)
	}
	return v, nil
}

// under lists the stored keys strictly below dir ("" is the root), sorted.
func (s *CertStorage) under(ctx context.Context, dir string) ([]string, error) {
	lo, hi := "-", "+"
	if dir != "" {
		// "/" + 1 is "0": the range holds exactly the keys that start with dir + "/".
		lo, hi = "["+dir+"/", "("+dir+"0"
	}
	return s.rdb.ZRangeByLex(ctx, s.indexKey(), &redis.ZRangeBy{Min: lo, Max: hi}).Result()
}

// Delete removes key and, when it is a directory, everything under it. Absent keys are no error.
func (s *CertStorage) Delete(ctx context.Context, key string) error {
	key = normKey(key)
	keys, err := s.under(ctx, key)
	if err != nil {
		return fmt.Errorf("redisstore: cert storage: delete %s: %w", key, err)
	}
	if key != "" {
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		members := make([]any, len(keys))
		for i, k := range keys {
			p.Del(ctx, s.fileKey(k))
			members[i] = k
		}
		p.ZRem(ctx, s.indexKey(), members...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: cert storage: delete %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key is stored or is a directory of stored keys.
func (s *CertStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List names the entries under path: its direct children (files and directories), or with
// recursive every key and directory below it, as certmagic.FileStorage does. A path with
// nothing under it is fs.ErrNotExist.
func (s *CertStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	path = normKey(path)
	keys, err := s.under(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("redisstore: cert storage: list %s: %w", path, err)
	}
	if len(keys) == 0 {
		if path != "" && s.rdb.Exists(ctx, s.fileKey(path)).Val() == 1 {
			return []string{}, nil // a file: nothing below it
		}
		return nil, fmt.Errorf("redisstore: cert storage: list %s: %w", path, fs.ErrNotExist)
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		rel := k
		if path != "" {
			rel = k[len(path)+1:]
		}
		parts := strings.Split(rel, "/")
		depth := 1
		if recursive {
			depth = len(parts)
		}
		for i := 1; i <= depth; i++ {
			name := strings.Join(parts[:i], "/")
			if path != "" {
				name = path + "/" + name
			}
			if !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Stat describes key: a stored value (terminal, with its size and time) or a directory.
func (s *CertStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = normKey(key)
	var mod *redis.StringCmd
	var size *redis.IntCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		mod = p.HGet(ctx, s.fileKey(key), "m")
		size = p.HStrLen(ctx, s.fileKey(key), "v")
		return nil
	})
	switch {
	case err == nil:
		ms, perr := strconv.ParseInt(mod.Val(), 10, 64)
		if perr != nil {
			return certmagic.KeyInfo{}, fmt.Errorf("redisstore: cert storage: stat %s: bad time %q", key, mod.Val())
		}
		return certmagic.KeyInfo{Key: key, Modified: time.UnixMilli(ms), Size: size.Val(), IsTerminal: true}, nil
	case !errors.Is(err, redis.Nil):
		return certmagic.KeyInfo{}, fmt.Errorf("redisstore: cert storage: stat %s: %w", key, err)
	}
	lo, hi := "["+key+"/", "("+key+"0"
	if key == "" {
		lo, hi = "-", "+"
	}
	below, err := s.rdb.ZRangeByLex(ctx, s.indexKey(), &redis.ZRangeBy{Min: lo, Max: hi, Count: 1}).Result()
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("redisstore: cert storage: stat %s: %w", key, err)
	}
	if len(below) == 0 {
		return certmagic.KeyInfo{}, fmt.Errorf("redisstore: cert storage: %s: %w", key, fs.ErrNotExist)
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

// unlockScript deletes the lock only when it still holds our token, so a holder whose lease ran
// out cannot release the next holder's lock.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// extendScript renews the lease of a lock we still hold.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// Lock takes the named lock, waiting until it is free or ctx is done.
func (s *CertStorage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redisstore: cert storage: lock %s: %w", name, ctx.Err())
		case <-time.After(s.poll):
		}
	}
}

// TryLock takes the named lock if it is free, without waiting.
func (s *CertStorage) TryLock(ctx context.Context, name string) (bool, error) {
	token := s.tokenGen()
	ok, err := s.rdb.SetNX(ctx, s.lockKey(name), token, s.lease).Result()
	if err != nil {
		return false, fmt.Errorf("redisstore: cert storage: lock %s: %w", name, err)
	}
	if !ok {
		return false, nil
	}
	h := &heldLock{token: token, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.held[name] = h
	s.mu.Unlock()
	go s.keepLease(name, h)
	return true, nil
}

// keepLease renews the lease at a third of its length until the lock is released, so that a
// long ACME order keeps it and a dead holder loses it soon.
func (s *CertStorage) keepLease(name string, h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(s.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.lease/3)
			n, err := extendScript.Run(ctx, s.rdb, []string{s.lockKey(name)}, h.token, s.lease.Milliseconds()).Int()
			cancel()
			switch {
			case err != nil:
				s.log.Warn("tls: could not renew a certificate lock's lease", "lock", name, "error", err)
			case n == 0:
				s.log.Error("tls: a certificate lock was lost (its lease ran out)", "lock", name)
				return
			}
		}
	}
}

// RenewLockLease extends a held lock's lease to at least leaseDuration (certmagic asks before a
// long retry).
func (s *CertStorage) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	s.mu.Lock()
	h := s.held[name]
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("redisstore: cert storage: renew %s: not held by this process", name)
	}
	n, err := extendScript.Run(ctx, s.rdb, []string{s.lockKey(name)}, h.token, max(leaseDuration, s.lease).Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redisstore: cert storage: renew %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("redisstore: cert storage: renew %s: the lock was lost", name)
	}
	return nil
}

// Unlock releases a lock this process holds.
func (s *CertStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("redisstore: cert storage: unlock %s: not held by this process", name)
	}
	close(h.stop)
	<-h.done
	if err := unlockScript.Run(ctx, s.rdb, []string{s.lockKey(name)}, h.token).Err(); err != nil {
		return fmt.Errorf("redisstore: cert storage: unlock %s: %w", name, err)
	}
	return nil
}
