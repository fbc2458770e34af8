package redisstore

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// ClientOptions returns the options of the Redis client of a store with Options store (and of
// the checks sharing its Redis), and store, each with its defaults applied: a pool of 128 (above
// the webhooks and deliveries one replica has in flight), dial, read and write timeouts of 2s, a
// context's deadline honoured, the sentinels' password the server's. Each problem is a
// relay.FieldError named as the configuration file names the setting (addrs[i], pool_size,
// replica_timeout, and those of Options.Check), joined.
func ClientOptions(o redis.UniversalOptions, store Options) (redis.UniversalOptions, Options, error) {
	o.PoolSize = cmp.Or(o.PoolSize, 128)
	for _, d := range []*time.Duration{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout} {
		*d = cmp.Or(*d, 2*time.Second)
	}
	// Without it go-redis ignores a context's deadline, and a webhook would wait out ReadTimeout
	// (and the retries) rather than the relay's store timeout.
	o.ContextTimeoutEnabled = true
	if o.MasterName != "" {
		o.SentinelPassword = cmp.Or(o.SentinelPassword, o.Password)
	}
	errs := store.check()
	store = store.WithDefaults()
	for i, a := range o.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, relay.FieldErrorf(fmt.Sprintf("addrs[%d]", i), "%q is not host:port", a))
		}
	}
	if o.PoolSize < 1 {
		errs = append(errs, relay.FieldErrorf("pool_size", "must be at least 1, got %d", o.PoolSize))
	}
	// The WAIT answers within the pipeline's read: it must end well before ReadTimeout.
	if store.MinReplicas > 0 && (store.ReplicaTimeout <= 0 || store.ReplicaTimeout > o.ReadTimeout/2) {
		errs = append(errs, relay.FieldErrorf("replica_timeout", "must be above 0 and at most half of read_timeout (%v), got %v",
			o.ReadTimeout, store.ReplicaTimeout))
	}
	return o, store, errors.Join(errs...)
}
