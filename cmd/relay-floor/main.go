// Command relay-floor is a benchmark reference, not a relay: the least work a durable webhook relay
// can do per webhook, run under the same load as the relay to bound what any relay can reach on a
// machine (docs/BENCHMARKS.md, "The floor"). Per webhook it reads the body, takes "id" out of the
// JSON, dedupes it in memory, writes the body into a preallocated log under group commit (one
// write and one fdatasync per batch, no file growth to journal), answers 202 after the sync, then
// POSTs the body to the target and appends an ack record. No verification, no index on disk, no
// recovery, no metrics: what it leaves out is what the relay adds.
//
//	go run ./cmd/relay-floor -listen 127.0.0.1:18092 -target http://127.0.0.1:18090/hook -server nethttp
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hookrelay/hookrelay/cmd/internal/gcdefault"
)

func main() {
	gcdefault.Apply() // as the relay, so that GC settings do not tell them apart
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "relay-floor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("relay-floor", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:18092", "address to accept webhooks on (any path)")
	target := fs.String("target", "http://127.0.0.1:18090/hook", "URL to deliver to")
	server := fs.String("server", "nethttp", "listener: nethttp (the relay's) or fasthttp")
	dir := fs.String("dir", "", "directory for the log (default: a temp dir, removed at exit)")
	noSync := fs.Bool("nosync", false, "skip the fdatasync: not durable, shows what the sync costs")
	logs := fs.Bool("log", false, "write one JSON access line per webhook and per delivery to stderr with log/slog, as the relay does at info")
	workers := fs.Int("workers", 64, "deliveries in flight at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server != "nethttp" && *server != "fasthttp" {
		return fmt.Errorf("-server %q: want nethttp or fasthttp", *server)
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "relay-floor")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	var lg *slog.Logger
	if *logs {
		lg = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	f, err := newFloor(filepath.Join(*dir, "floor.log"), !*noSync, *target, *workers, lg, preallocate)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	if *server == "fasthttp" {
		err = fasthttp.Serve(ln, f.serveFast)
	} else {
		err = http.Serve(ln, f)
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// floor is the whole relay: an in-memory dedupe set, a group-committed log, delivery workers.
type floor struct {
	file     *os.File
	durable  bool // fdatasync each batch
	commits  chan entry
	off      int64 // where the next batch goes
	size     int64 // zeros written ahead of off
	prealloc int64

	mu   sync.Mutex
	seen map[string]chan struct{} // closed once the first copy is on disk

	out    chan job
	client *fasthttp.Client
	target string
	lg     *slog.Logger
}

// entry is a record for the log; done, when set, is closed once the record is on disk.
type entry struct {
	rec  []byte
	done chan struct{}
}

type job struct {
	id   string
	body []byte
}

// preallocate is how far ahead the log is filled with zeros (and synced) before records overwrite
// them: an fdatasync of overwritten blocks writes no metadata, where a growing file's size change
// goes through the filesystem's journal on every sync.
const preallocate = 64 << 20

func newFloor(path string, durable bool, target string, workers int, lg *slog.Logger, prealloc int64) (*floor, error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	f := &floor{file: file, durable: durable, prealloc: prealloc, commits: make(chan entry, 4096),
		seen: map[string]chan struct{}{}, out: make(chan job, 4096), target: target, lg: lg,
		client: &fasthttp.Client{MaxConnsPerHost: workers, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}}
	if err := f.grow(); err != nil {
		return nil, err
	}
	go f.writeLoop()
	for range workers {
		go f.deliver()
	}
	return f, nil
}

// writeLoop is the group commit: everything queued while one batch is written and synced goes
// into the next, so a sync is shared by all the webhooks that arrived during the previous one.
func (f *floor) writeLoop() {
	var buf []byte
	var waiting []chan struct{}
	for e := range f.commits {
		buf, waiting = append(buf[:0], e.rec...), append(waiting[:0], e.done)
	batch:
		for {
			select {
			case e := <-f.commits:
				buf, waiting = append(buf, e.rec...), append(waiting, e.done)
			default:
				break batch
			}
		}
		for f.off+int64(len(buf)) > f.size {
			if err := f.grow(); err != nil {
				panic(fmt.Errorf("floor log: %w", err)) // a reference without recovery: stop rather than ack
			}
		}
		if _, err := f.file.WriteAt(buf, f.off); err != nil {
			panic(fmt.Errorf("floor log: %w", err))
		}
		f.off += int64(len(buf))
		if f.durable {
			if err := syscall.Fdatasync(int(f.file.Fd())); err != nil {
				panic(fmt.Errorf("floor log sync: %w", err))
			}
		}
		for _, c := range waiting {
			if c != nil {
				close(c)
			}
		}
	}
}

// accept handles one webhook body and returns the status to answer; body must not be reused.
func (f *floor) accept(body []byte) int {
	start := time.Now()
	var m struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &m); err != nil || m.ID == "" {
		return http.StatusBadRequest
	}
	f.mu.Lock()
	first, dup := f.seen[m.ID]
	if dup {
		f.mu.Unlock()
		<-first // a duplicate is answered once the first copy is durable, not before
		return http.StatusOK
	}
	done := make(chan struct{})
	f.seen[m.ID] = done
	f.mu.Unlock()
	f.commits <- entry{rec: append(append([]byte("M "), body...), '\n'), done: done}
	<-done
	if f.lg != nil {
		f.lg.LogAttrs(context.Background(), slog.LevelInfo, "webhook accepted", slog.String("route", "fashn"),
			slog.String("job_id", m.ID), slog.String("remote", "127.0.0.1"), slog.Int("status", http.StatusAccepted),
			slog.Int("bytes", len(body)), slog.Float64("duration", time.Since(start).Seconds()))
	}
	select {
	case f.out <- job{m.ID, body}:
	default: // every worker busy and the queue full: do not hold the sender's answer for it
		go func() { f.out <- job{m.ID, body} }()
	}
	return http.StatusAccepted
}

func (f *floor) deliver() {
	for j := range f.out {
		start := time.Now()
		for attempt := 1; ; attempt++ {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI(f.target)
			req.Header.SetMethod(http.MethodPost)
			req.Header.SetContentType("application/json")
			req.SetBody(j.body)
			err := f.client.Do(req, resp)
			status := resp.StatusCode()
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			if err == nil && status/100 == 2 {
				if f.lg != nil {
					f.lg.LogAttrs(context.Background(), slog.LevelInfo, "delivered", slog.String("target", "sink"),
						slog.Int("attempt", attempt), slog.Int("status", status), slog.Float64("duration", time.Since(start).Seconds()))
				}
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		f.commits <- entry{rec: []byte("A " + j.id + "\n")}
	}
}

func (f *floor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	w.WriteHeader(f.accept(body))
}

func (f *floor) serveFast(ctx *fasthttp.RequestCtx) {
	// fasthttp reuses the request's buffer once the handler returns; delivery needs its own copy.
	ctx.SetStatusCode(f.accept(append([]byte(nil), ctx.PostBody()...)))
}

// grow writes prealloc more zeros at the end of the log and syncs them (file size included).
func (f *floor) grow() error {
	if _, err := f.file.WriteAt(make([]byte, f.prealloc), f.size); err != nil {
		return err
	}
	if err := f.file.Sync(); err != nil {
		return err
	}
	f.size += f.prealloc
	return nil
}
