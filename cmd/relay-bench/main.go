// Command relay-bench measures a running relay end to end: concurrent senders post realistic
// provider webhooks (FASHN, fal, Fotor, Abstrakt and a Standard Webhooks route, each with its real
// verification) and a share of duplicates; an in-process target records every delivery. It reports
// acknowledgements per second, acknowledgement and end-to-end latency, deliveries, duplicates
// delivered, webhooks lost (acknowledged, never delivered), and the relay's memory.
//
//	go run ./cmd/relay-bench -duration 30s                      # builds and starts the relay
//	go run ./cmd/relay-bench -store redis -redis-addr 127.0.0.1:6379 -tls -baseline nginx
//
// See docs/BENCHMARKS.md for the figures and the commands behind them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the command-line flags.
type options struct {
	relayBin   string
	url        string
	configDir  string
	writeDir   string
	sinkListen string
	sinkLn     net.Listener // not a flag: a listener on sinkListen already held (tests)
	listen     string
	admin      string
	relayPID   int

	senders  int
	duration time.Duration
	n        int64
	rate     float64
	dup      float64
	drain    time.Duration
	pause    bool

	store       string
	redisAddr   string
	tls         bool
	baseline    string
	logLevel    string
	concurrency int
	progress    bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("relay-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	fs.StringVar(&o.relayBin, "relay-bin", "", "relay binary to start (default: go build ./cmd/relay into a temp dir)")
	fs.StringVar(&o.url, "url", "", "bench a relay that is already running at this base URL (with -config-dir) instead of starting one")
	fs.StringVar(&o.configDir, "config-dir", "", "with -url: the directory -write-config wrote (secrets, keys, CA)")
	fs.StringVar(&o.writeDir, "write-config", "", "write config.yaml and the secrets for a relay into this directory and exit; run it with `relay serve -config DIR/config.yaml`, then relay-bench -url")
	fs.StringVar(&o.sinkListen, "sink-listen", "127.0.0.1:0", "address of the bench's own target (fix it with -write-config/-url)")
	fs.StringVar(&o.listen, "relay-listen", "127.0.0.1:8080", "with -write-config: the relay's listen address")
	fs.StringVar(&o.admin, "relay-admin", "127.0.0.1:9090", "with -write-config: the relay's admin address")
	fs.IntVar(&o.relayPID, "relay-pid", 0, "with -url: the relay's process ID, for its memory figures")
	fs.IntVar(&o.senders, "senders", 64, "concurrent senders (keep-alive connections)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to send (ignored with -n)")
	fs.Int64Var(&o.n, "n", 0, "send this many webhooks (duplicates included) instead of for -duration")
	fs.Float64Var(&o.rate, "rate", 0, "webhooks per second across all senders; 0 = as fast as acknowledged")
	fs.Float64Var(&o.dup, "dup", 0.1, "share of sends that repeat an acknowledged webhook, as providers retry (0..0.9)")
	fs.DurationVar(&o.drain, "drain", 2*time.Minute, "after sending, how long to wait for every acknowledged webhook to be delivered")
	fs.BoolVar(&o.pause, "pause-target", false, "hold the target's answers until sending ends, so deliveries queue in the store (measures a backlog)")
	fs.StringVar(&o.store, "store", "embedded", "store of the started relay: embedded or redis")
	fs.StringVar(&o.redisAddr, "redis-addr", "", "Redis for -store redis (host:port), e.g. 127.0.0.1:6379; relay-bench starts none")
	fs.BoolVar(&o.tls, "tls", false, "serve the relay (and the nginx baseline) with TLS from a generated self-signed ECDSA certificate")
	fs.StringVar(&o.baseline, "baseline", "", "also run the same load through this baseline and print the ratio: nginx")
	fs.StringVar(&o.logLevel, "relay-log-level", "info", "the started relay's log level (its logs go to a file in the temp dir)")
	fs.IntVar(&o.concurrency, "target-concurrency", 64, "deliveries in flight to the bench's target at most")
	fs.BoolVar(&o.progress, "progress", true, "print one progress line per second to stderr")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.senders < 1:
		return nil, errors.New("-senders: want at least 1")
	case o.dup < 0 || o.dup > 0.9:
		return nil, errors.New("-dup: want a share between 0 and 0.9")
	case o.n < 0 || o.rate < 0:
		return nil, errors.New("-n and -rate: want 0 or more")
	case o.n == 0 && o.duration <= 0:
		return nil, errors.New("-duration: want a positive duration, or give -n")
	case o.store != "embedded" && o.store != "redis":
		return nil, fmt.Errorf("-store %q: want embedded or redis", o.store)
	case o.store == "redis" && o.redisAddr == "" && o.url == "" && o.writeDir == "":
		return nil, errors.New("-store redis: give -redis-addr host:port of a running Redis (relay-bench starts none)")
	case o.baseline != "" && o.baseline != "nginx":
		return nil, fmt.Errorf("-baseline %q: the only baseline is nginx", o.baseline)
	case o.url != "" && o.configDir == "":
		return nil, errors.New("-url: give -config-dir, the directory -write-config wrote for that relay")
	case o.concurrency < 1:
		return nil, errors.New("-target-concurrency: want at least 1")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "relay-bench: %v\n", err)
		return 2
	}
	if o.writeDir != "" {
		if err := writeConfigDir(o); err != nil {
			fmt.Fprintf(stderr, "relay-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s/config.yaml; run: relay serve -config %s/config.yaml\n", o.writeDir, o.writeDir)
		return 0
	}
	rep, err := bench(ctx, o, stderr)
	if rep != nil {
		rep.print(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "relay-bench: %v\n", err)
		return 1
	}
	if rep.Relay.Lost > 0 {
		fmt.Fprintf(stderr, "relay-bench: %d acknowledged webhooks were never delivered\n", rep.Relay.Lost)
		return 1
	}
	if rep.Relay.Bad > 0 {
		fmt.Fprintf(stderr, "relay-bench: %d deliveries did not match what was sent\n", rep.Relay.Bad)
		return 1
	}
	return 0
}
