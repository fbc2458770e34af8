package redisstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay/redistest"
)

// Commands are routed by a script's first declared key, else their first argument.
func TestFirstKey(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cmd  redis.Cmder
		key  string
		want bool
	}{
		{redis.NewCmd(ctx, "evalsha", "abc", 2, "{p:1}:k", "{p:1}:q", "arg"), "{p:1}:k", true},
		{redis.NewCmd(ctx, "eval", "return 1", 0), "", false},
		{redis.NewStringCmd(ctx, "hget", "{p}:m:1", "msg"), "{p}:m:1", true},
		{redis.NewStatusCmd(ctx, "ping"), "", false},
	} {
		if key, ok := firstKey(tc.cmd); key != tc.key || ok != tc.want {
			t.Errorf("%v: %q, %v; want %q, %v", tc.cmd.Args(), key, ok, tc.key, tc.want)
		}
	}
}

// Only the cluster's state is worth a second try; a script's own error or a missing value is
// its outcome.
func TestIsScriptOrValueError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{redis.Nil, true},
		{errors.New("dial tcp: connection refused"), false},
	} {
		if got := isScriptOrValueError(tc.err); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
	// Redis' own errors, as a reply carries them.
	ctx := context.Background()
	for msg, want := range map[string]bool{"MOVED 3999 127.0.0.1:6381": false, "ASK 3999 127.0.0.1:6381": false,
		"TRYAGAIN Multiple keys request during rehashing of slot": false, "CLUSTERDOWN The cluster is down": false,
		"ERR user_script:1: bad": true, "NOSCRIPT No matching script": true} {
		cmd := redis.NewCmd(ctx, "evalsha")
		cmd.SetErr(redisError(msg))
		if got := isScriptOrValueError(cmd.Err()); got != want {
			t.Errorf("%q: %v, want %v", msg, got, want)
		}
	}
}

// redisError is an error as Redis replies with it (redis.Error).
type redisError string

func (e redisError) Error() string { return string(e) }
func (redisError) RedisError()     {}

// A command of a batch that runs on its own (clusterPipes' second try) has no WAIT after it on
// its connection, so it is not confirmed, whatever the batch's WAIT said.
func TestWaitHookCommandAloneUnconfirmed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	if err := hookWait(rdb); err != nil {
		t.Fatal(err)
	}
	ctx, acks := (&waitSpec{replicas: 0, timeout: time.Second}).with(t.Context()) // 0: any WAIT answer confirms
	pipe := rdb.Pipeline()
	inBatch := pipe.Set(ctx, "a", "1", 0)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if !acks.confirmed(inBatch) {
		t.Fatal("a command of a pipeline with its WAIT is not confirmed")
	}
	if err := rdb.Process(ctx, inBatch); err != nil { // the same command run again on its own
		t.Fatal(err)
	}
	if acks.confirmed(inBatch) {
		t.Fatal("a command run on its own counts as confirmed")
	}
}
