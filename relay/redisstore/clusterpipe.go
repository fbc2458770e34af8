package redisstore

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// clusterPipes replaces go-redis' Cluster pipeline, whose retry can put one command in the
// batches of two nodes at once when a node's batch has both a redirect (MOVED, ASK) and a
// retryable error on its first command (TRYAGAIN, CLUSTERDOWN): both nodes then run it and read
// its reply concurrently (a data race, seen during slot migrations and failovers). Here each
// node's commands go out as a plain pipeline on that node's client (whose hooks, such as WAIT,
// still run), and a command that met a redirect or a retryable error is run again on its own
// through the Cluster client, which follows redirects one command at a time.
type clusterPipes struct{ cc *redis.ClusterClient }

func (clusterPipes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (clusterPipes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h clusterPipes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "multi" {
			return next(ctx, cmds) // a transaction: one slot, retried as a whole
		}
		byNode := map[*redis.Client][]redis.Cmder{}
		var alone []redis.Cmder
		for _, cmd := range cmds {
			key, ok := firstKey(cmd)
			if !ok {
				alone = append(alone, cmd)
				continue
			}
			node, err := h.cc.MasterForKey(ctx, key)
			if err != nil {
				alone = append(alone, cmd)
				continue
			}
			byNode[node] = append(byNode[node], cmd)
		}
		var wg sync.WaitGroup
		for node, batch := range byNode {
			wg.Go(func() {
				pipe := node.Pipeline()
				for _, cmd := range batch {
					_ = pipe.Process(ctx, cmd)
				}
				_, _ = pipe.Exec(ctx) // each command carries its own result or error
			})
		}
		wg.Wait()
		for _, cmd := range cmds {
			if err := cmd.Err(); err != nil && !isScriptOrValueError(err) {
				alone = append(alone, cmd)
			}
		}
		for _, cmd := range alone {
			_ = h.cc.Process(ctx, cmd)
		}
		for _, cmd := range cmds { // the first error, redis.Nil included, as go-redis' pipelines say
			if err := cmd.Err(); err != nil {
				return err
			}
		}
		return nil
	}
}

// isScriptOrValueError reports an error that running the command again would repeat: its
// outcome, not the cluster's state.
func isScriptOrValueError(err error) bool {
	if err == redis.Nil {
		return true
	}
	for _, p := range []string{"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY"} {
		if strings.HasPrefix(err.Error(), p) {
			return false
		}
	}
	_, isRedis := err.(redis.Error)
	return isRedis
}

// firstKey is the key a command is routed by: the first declared key of a script, else the first
// argument; ok is false for a command without one.
func firstKey(cmd redis.Cmder) (string, bool) {
	args := cmd.Args()
	switch strings.ToLower(cmd.Name()) {
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		if len(args) < 4 {
			return "", false
		}
		if n, err := strconv.Atoi(toString(args[2])); err != nil || n < 1 {
			return "", false
		}
		return toString(args[3]), true
	}
	if len(args) < 2 {
		return "", false
	}
	return toString(args[1]), true
}

func toString(a any) string {
	switch v := a.(type) {
	case string:
		return v
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}
