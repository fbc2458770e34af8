package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// result is one run: the relay, or the baseline under the same load.
type result struct {
	Name        string
	LoadAvg     string // /proc/loadavg before the run
	Elapsed     time.Duration
	Sent        int64 // requests answered or failed
	NewAcks     int64
	DupAcks     int64
	Errors      int64
	ErrorKinds  string
	UniqueAcked int64
	AcksPerSec  float64
	Ack50       time.Duration
	Ack99       time.Duration
	Ack999      time.Duration
	E2E50       time.Duration
	E2E99       time.Duration
	Deliveries  int64 // requests the target received
	Unique      int64 // distinct webhooks the target received
	DupDeliv    int64 // requests for a webhook the target already had
	Lost        int64 // acknowledged as new, never delivered within the drain wait
	Bad         int64
	FirstBad    string
	Drain       time.Duration // from the end of sending until every acknowledged webhook was delivered
	DeliveredPS float64       // distinct webhooks delivered per second while sending
	CPU         float64       // cores the relay (or nginx) used while sending
	BenchCPU    float64       // cores relay-bench itself (senders and target) used meanwhile

	// Memory of the relay (or nginx's processes) in KiB; 0 when unknown.
	MemIdle, MemPeak, MemHWM, MemBacklog int64
	PeakAnon, PeakFile                   int64    // the split of MemPeak
	BacklogAnon, BacklogFile             int64    // the split of MemBacklog
	Store                                []string // store figures, one line each
}

type report struct {
	o        *options
	Relay    result
	Baseline *result
}

// bench runs the load against the relay and, with -baseline, against nginx.
func bench(ctx context.Context, o *options, progress io.Writer) (*report, error) {
	tmp, err := os.MkdirTemp("", "relay-bench")
	if err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		if keep {
			fmt.Fprintf(progress, "relay-bench: kept %s (relay log, config) for inspection\n", tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()
	shapes, err := newShapes()
	if err != nil {
		return nil, err
	}
	rep := &report{o: o}
	var k *kit
	if o.url != "" {
		k, err = loadKit(o.configDir)
	} else {
		k, err = newKit(tmp, o.tls)
	}
	if err != nil {
		return nil, err
	}
	rep.Relay, err = benchRelay(ctx, o, k, shapes, tmp, progress)
	if err != nil || rep.Relay.Lost > 0 || rep.Relay.Bad > 0 {
		keep = true
		return rep, err
	}
	if o.baseline == "nginx" {
		b, err := benchNginx(ctx, o, k, shapes, tmp, progress)
		if err != nil {
			keep = true
			return rep, fmt.Errorf("baseline: %w", err)
		}
		rep.Baseline = &b
	}
	return rep, nil
}

func randomNonce() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func benchRelay(ctx context.Context, o *options, k *kit, shapes []*shape, tmp string, progress io.Writer) (res result, err error) {
	res.Name = "relay"
	nonce := randomNonce()
	snk, err := startSink(o.sinkListen, o.sinkLn, shapes, o.pause)
	if err != nil {
		return res, fmt.Errorf("target: %w", err)
	}
	defer snk.close()
	base, pid := o.url, o.relayPID
	var st storeProbe = noStore{}
	if o.url == "" {
		bin := o.relayBin
		if bin == "" {
			fmt.Fprintln(progress, "relay-bench: building ./cmd/relay")
			if bin, err = buildRelay(ctx, tmp); err != nil {
				return res, err
			}
		}
		dataDir := filepath.Join(tmp, "data")
		prefix := "relaybench-" + nonce
		cfg := filepath.Join(tmp, fileConfig)
		// Port 0: the relay's ready file says what it bound.
		if err := os.WriteFile(cfg, []byte(relayConfig(k, o, "127.0.0.1:0", "127.0.0.1:0", snk.url, dataDir, prefix)), 0o600); err != nil {
			return res, err
		}
		if o.store == "redis" {
			rp, err := newRedisProbe(ctx, o.redisAddr, prefix)
			if err != nil {
				return res, err
			}
			defer rp.cleanup(context.WithoutCancel(ctx))
			st = rp
		} else {
			st = &boltProbe{path: filepath.Join(dataDir, "relay.db")}
		}
		st.before(ctx)
		p, err := startRelay(ctx, bin, cfg, filepath.Join(tmp, "relay.log"))
		if err != nil {
			return res, err
		}
		defer p.stop()
		pid = p.pid()
		base = "http://" + p.addr
		if k.tls {
			base = "https://" + p.addr
		}
		fmt.Fprintf(progress, "relay-bench: relay pid %d at %s, store %s, logs %s\n", pid, base, o.store, p.log)
		// After the run: stop the relay (bbolt's file is locked while it runs), then read the store.
		defer func() { st.after(context.WithoutCancel(ctx), p.stop, &res) }()
	}
	// Idle: started, ready, nothing sent yet.
	time.Sleep(time.Second)
	if m, err := readMemory(pid); err == nil {
		res.MemIdle = m.rss
	}
	err = drive(ctx, o, k, shapes, base, nonce, snk, &res, progress, func() time.Duration { return cpuTime(pid, false) }, func() int64 {
		m, _ := readMemory(pid)
		if m.rss > res.MemPeak {
			res.PeakAnon, res.PeakFile = m.anon, m.file
		}
		return m.rss
	}, func() {
		if m, err := readMemory(pid); err == nil && o.pause {
			res.MemBacklog, res.BacklogAnon, res.BacklogFile = m.rss, m.anon, m.file
		}
		st.backlog(ctx, &res)
	})
	if m, err := readMemory(pid); err == nil {
		res.MemHWM = m.hwm
	}
	return res, err
}

func benchNginx(ctx context.Context, o *options, k *kit, shapes []*shape, tmp string, progress io.Writer) (result, error) {
	res := result{Name: "nginx"}
	po := *o
	po.pause, po.dup = false, o.dup
	snk, err := startSink("127.0.0.1:0", nil, shapes, false)
	if err != nil {
		return res, err
	}
	defer snk.close()
	dir := filepath.Join(tmp, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	ng, err := startNginx(ctx, dir, k, strings.TrimPrefix(snk.url, "http://"), o.tls)
	if err != nil {
		return res, err
	}
	defer ng.stop()
	fmt.Fprintf(progress, "relay-bench: baseline nginx pid %d at %s\n", ng.cmd.Process.Pid, ng.url)
	time.Sleep(time.Second)
	pid := ng.cmd.Process.Pid
	res.MemIdle = treeMemory(pid)
	err = drive(ctx, &po, k, shapes, ng.url, randomNonce(), snk, &res, progress, func() time.Duration { return cpuTime(pid, true) },
		func() int64 { return treeMemory(pid) }, func() {})
	return res, err
}

// drive runs the load against base, prints progress, waits for the deliveries, and fills res.
// atEnd runs when sending has ended, before a paused target is released.
func drive(ctx context.Context, o *options, k *kit, shapes []*shape, base, nonce string, snk *sink,
	res *result, progress io.Writer, cpu func() time.Duration, rss func() int64, atEnd func()) error {
	l, err := newLoad(o, k, shapes, base, nonce)
	if err != nil {
		return err
	}
	res.LoadAvg = loadAvg()
	stopProgress := watch(o, l, snk, progress, func() {
		if m := rss(); m > res.MemPeak {
			res.MemPeak = m
		}
	})
	cpu0, self0 := cpu(), cpuTime(os.Getpid(), false)
	elapsed := l.run(ctx)
	res.CPU = (cpu() - cpu0).Seconds() / elapsed.Seconds()
	res.BenchCPU = (cpuTime(os.Getpid(), false) - self0).Seconds() / elapsed.Seconds()
	res.DeliveredPS = float64(snk.unique.Load()) / elapsed.Seconds()
	res.UniqueAcked = int64(l.uniqueAcked())
	atEnd()
	snk.resume()
	sendEnd := time.Now()

	res.Elapsed = elapsed
	res.NewAcks, res.DupAcks, res.Errors = l.newAcks.Load(), l.dupAcks.Load(), l.errs.Load()
	res.Sent = res.NewAcks + res.DupAcks + res.Errors
	res.ErrorKinds = l.errorSummary()
	res.AcksPerSec = float64(res.NewAcks+res.DupAcks) / elapsed.Seconds()
	slices.Sort(l.lat)
	res.Ack50, res.Ack99, res.Ack999 = percentile(l.lat, 0.5), percentile(l.lat, 0.99), percentile(l.lat, 0.999)

	keys := l.ackedKeys()
	missing := int64(len(keys))
	deadline := sendEnd.Add(o.drain)
	for ctx.Err() == nil {
		if snk.unique.Load() >= int64(len(keys)) {
			if missing = snk.delivered(keys); missing == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			missing = snk.delivered(keys)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.Drain = time.Since(sendEnd)
	stopProgress()
	res.Lost = missing
	res.Deliveries, res.Unique, res.DupDeliv = snk.requests.Load(), snk.unique.Load(), snk.duplicates.Load()
	res.Bad = snk.bad.Load()
	snk.badMu.Lock()
	res.FirstBad = snk.firstBad
	snk.badMu.Unlock()
	e2e := snk.latencies()
	slices.Sort(e2e)
	res.E2E50, res.E2E99 = percentile(e2e, 0.5), percentile(e2e, 0.99)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// watch prints a progress line and samples memory once a second until stopped, and at the stop.
func watch(o *options, l *load, snk *sink, w io.Writer, sample func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var last int64
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			sample()
			acks := l.newAcks.Load() + l.dupAcks.Load()
			if o.progress {
				acked := int64(l.uniqueAcked())
				fmt.Fprintf(w, "%6.0fs  %7d acks/s  %9d acked  %9d delivered  %8d in flight  %d errors\n",
					time.Since(start).Seconds(), acks-last, acked, snk.unique.Load(), max(0, acked-snk.unique.Load()), l.errs.Load())
			}
			last = acks
		}
	})
	// One more sample at the stop: a run shorter than the first tick still has a peak.
	return func() { close(done); wg.Wait(); sample() }
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// print writes the report.
func (r *report) print(w io.Writer) {
	o := r.o
	mode := "plain HTTP"
	if o.tls {
		mode = "TLS (self-signed ECDSA P-256)"
	}
	what := fmt.Sprintf("for %v", o.duration)
	if o.n > 0 {
		what = fmt.Sprintf("%d webhooks", o.n)
	}
	rate := "unlimited"
	if o.rate > 0 {
		rate = fmt.Sprintf("%.0f/s", o.rate)
	}
	fmt.Fprintf(w, "\nrelay-bench: store %s, %s, %d senders, %s, rate %s, duplicates %.0f%%\n", o.store, mode, o.senders, what, rate, o.dup*100)
	r.Relay.print(w)
	if b := r.Baseline; b != nil {
		b.print(w)
		ratio := func(a, b float64) string {
			if b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", a/b)
		}
		fmt.Fprintf(w, "relay/nginx: acks/s %s, ack p50 %s, ack p99 %s, RSS under load %s\n",
			ratio(r.Relay.AcksPerSec, b.AcksPerSec), ratio(float64(r.Relay.Ack50), float64(b.Ack50)),
			ratio(float64(r.Relay.Ack99), float64(b.Ack99)), ratio(float64(r.Relay.MemPeak), float64(b.MemPeak)))
	}
}

func (r *result) print(w io.Writer) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	mib := func(kb int64) string {
		if kb == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
	}
	fmt.Fprintf(w, "[%s] load average before: %s\n", r.Name, r.LoadAvg)
	fmt.Fprintf(w, "  sent %d in %.1fs: %.0f acks/s (%d new, %d duplicate), %d errors\n",
		r.Sent, r.Elapsed.Seconds(), r.AcksPerSec, r.NewAcks, r.DupAcks, r.Errors)
	if r.ErrorKinds != "" {
		fmt.Fprintf(w, "  errors: %s\n", r.ErrorKinds)
	}
	fmt.Fprintf(w, "  CPU while sending: %s %.2f cores, relay-bench (senders and target) %.2f cores\n", r.Name, r.CPU, r.BenchCPU)
	fmt.Fprintf(w, "  ack latency p50 %s, p99 %s, p99.9 %s; end to end p50 %s, p99 %s\n",
		ms(r.Ack50), ms(r.Ack99), ms(r.Ack999), ms(r.E2E50), ms(r.E2E99))
	fmt.Fprintf(w, "  deliveries %d (unique %d of %d acknowledged; %.0f/s while sending), duplicates delivered %d, lost %d, drained %.1fs after sending\n",
		r.Deliveries, r.Unique, r.UniqueAcked, r.DeliveredPS, r.DupDeliv, r.Lost, r.Drain.Seconds())
	if r.Bad > 0 {
		fmt.Fprintf(w, "  BAD deliveries %d, first: %s\n", r.Bad, r.FirstBad)
	}
	fmt.Fprintf(w, "  RSS idle %s, peak under load %s", mib(r.MemIdle), mib(r.MemPeak))
	if r.PeakAnon+r.PeakFile > 0 {
		fmt.Fprintf(w, " (anonymous %s, file-backed %s)", mib(r.PeakAnon), mib(r.PeakFile))
	}
	fmt.Fprintf(w, ", high-water %s", mib(r.MemHWM))
	if r.MemBacklog > 0 {
		fmt.Fprintf(w, ", with the backlog queued %s (anonymous %s, file-backed %s)", mib(r.MemBacklog), mib(r.BacklogAnon), mib(r.BacklogFile))
	}
	fmt.Fprintln(w)
	for _, s := range r.Store {
		fmt.Fprintf(w, "  %s\n", s)
	}
}
