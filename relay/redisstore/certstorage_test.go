package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay/redistest"
	"github.com/hookrelay/hookrelay/relay/tlsedge/storagetest"
)

func newCertStorage(t *testing.T, addr, prefix string, opt CertStorageOptions) *CertStorage {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	opt.Prefix = prefix
	s, err := NewCertStorage(client, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCertStorageContract(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storagetest.Run(t, func(t *testing.T) storagetest.Open {
		prefix := uniquePrefix("cert")
		return func(t *testing.T) certmagic.Storage {
			return newCertStorage(t, srv.Addr, prefix, CertStorageOptions{LockPoll: 20 * time.Millisecond})
		}
	})
}

// The lease: renewed while the holder lives, so the lock outlasts it; left by a dead holder, it
// expires; and a holder whose lease ran out cannot release its successor's lock.
func TestCertStorageLockLease(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	prefix := uniquePrefix("lease")
	// A lease long enough that a renewal (every third of it, each with a third as its timeout)
	// does not miss it on a loaded machine.
	opt := CertStorageOptions{LockLease: 2 * time.Second, LockPoll: 20 * time.Millisecond}
	a := newCertStorage(t, srv.Addr, prefix, opt)
	b := newCertStorage(t, srv.Addr, prefix, opt)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()

	if err := a.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// Watch the key's remaining lease: it rises at each renewal. Wait past the first lease, and
	// for at least two renewals.
	locked, renewals, last := time.Now(), 0, time.Duration(0)
	for renewals < 2 || time.Since(locked) <= opt.LockLease {
		ttl, err := raw.PTTL(ctx, a.lockKey("n")).Result()
		if err != nil || ttl <= 0 {
			t.Fatalf("after %d renewals the lock's lease is %v (%v): renewal failed", renewals, ttl, err)
		}
		if ttl > last && last != 0 {
			renewals++
		}
		last = ttl
		time.Sleep(10 * time.Millisecond)
	}
	if ok, err := b.TryLock(ctx, "n"); err != nil || ok {
		t.Fatalf("a held lock was taken after its first lease (renewal failed): %v, %v", ok, err)
	}

	// A holder that died: its token without anyone renewing it.
	if err := raw.Set(ctx, b.lockKey("dead"), "someone-else", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.Lock(wait, "dead"); err != nil {
		t.Fatalf("the lock of a dead holder did not expire: %v", err)
	}

	// a's lease runs out (the key vanishes as an expiry would), b takes the lock, and a's late
	// Unlock leaves b's lock alone.
	if err := raw.Del(ctx, a.lockKey("n")).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "n"); err != nil || !ok {
		t.Fatalf("TryLock of the freed lock = %v, %v", ok, err)
	}
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	want := b.held["n"].token
	b.mu.Unlock()
	if got := raw.Get(ctx, b.lockKey("n")).Val(); got != want {
		t.Fatalf("after the old holder's Unlock the lock holds %q, want the new holder's token", got)
	}
	if err := b.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(ctx, b.lockKey("n")).Val(); n != 0 {
		t.Error("the holder's Unlock left the lock")
	}
	if err := b.Unlock(ctx, "dead"); err != nil {
		t.Fatal(err)
	}
}
