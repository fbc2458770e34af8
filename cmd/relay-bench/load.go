package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// recentJobs is how many acknowledged webhooks a duplicate is drawn from: providers retry recent
// results, not ones from hours ago.
const recentJobs = 10000

// load is the senders' side of one run.
type load struct {
	o      *options
	k      *kit
	shapes []*shape
	base   string
	client *http.Client
	nonce  string

	seq     atomic.Int64 // new jobs made
	issued  atomic.Int64 // sends started, for -n
	newAcks atomic.Int64 // 2xx for a webhook stored as new
	dupAcks atomic.Int64 // 2xx {"duplicate": true}
	errs    atomic.Int64

	mu       sync.Mutex
	errKinds map[string]int64
	acked    map[string]struct{} // keys of webhooks acknowledged as new
	ackOrder []string
	recent   []*job
	lat      []time.Duration
}

func newLoad(o *options, k *kit, shapes []*shape, base, nonce string) (*load, error) {
	tr := &http.Transport{
		MaxIdleConns: o.senders, MaxIdleConnsPerHost: o.senders, MaxConnsPerHost: o.senders,
		IdleConnTimeout: time.Minute,
		// HTTP/1.1 with keep-alive, as providers' webhook clients send; the same for the baseline.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	if strings.HasPrefix(base, "https://") {
		pool, err := k.rootCAs()
		if err != nil {
			return nil, fmt.Errorf("TLS: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &load{o: o, k: k, shapes: shapes, base: base, nonce: nonce,
		client:   &http.Client{Transport: tr, Timeout: 30 * time.Second},
		errKinds: map[string]int64{}, acked: map[string]struct{}{}}, nil
}

// run sends until the duration or count is reached, or ctx ends.
func (l *load) run(ctx context.Context) time.Duration {
	var lim *rate.Limiter
	if l.o.rate > 0 {
		lim = rate.NewLimiter(rate.Limit(l.o.rate), max(1, int(l.o.rate/100)))
	}
	if l.o.n == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.o.duration)
		defer cancel()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range l.o.senders {
		wg.Go(func() { l.sender(ctx, lim, uint64(i)) })
	}
	wg.Wait()
	l.client.CloseIdleConnections()
	return time.Since(start)
}

func (l *load) sender(ctx context.Context, lim *rate.Limiter, id uint64) {
	rng := rand.New(rand.NewPCG(id, uint64(time.Now().UnixNano())))
	lat := make([]time.Duration, 0, 4096)
	defer func() {
		l.mu.Lock()
		l.lat = append(l.lat, lat...)
		l.mu.Unlock()
	}()
	for ctx.Err() == nil {
		if l.o.n > 0 && l.issued.Add(1) > l.o.n {
			return
		}
		if lim != nil && lim.Wait(ctx) != nil {
			return
		}
		var j *job
		resend := false
		if l.o.dup > 0 && rng.Float64() < l.o.dup {
			l.mu.Lock()
			if len(l.recent) > 0 {
				j, resend = l.recent[rng.IntN(len(l.recent))], true
			}
			l.mu.Unlock()
		}
		now := time.Now()
		if j == nil {
			var err error
			if j, err = newJob(l.shapes, l.nonce, l.seq.Add(1), now); err != nil {
				l.fail(err.Error())
				continue
			}
		}
		req, err := j.shape.request(l.k, l.base, j, now)
		if err != nil {
			l.fail(err.Error())
			continue
		}
		resp, err := l.client.Do(req.WithContext(context.WithoutCancel(ctx)))
		if err != nil {
			l.fail("transport: " + err.Error())
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		took := time.Since(now)
		if resp.StatusCode/100 != 2 {
			l.fail(fmt.Sprintf("%s: HTTP %d %s", j.shape.route, resp.StatusCode, bytes.TrimSpace(body)))
			continue
		}
		lat = append(lat, took)
		if bytes.Contains(body, []byte(`"duplicate":true`)) {
			l.dupAcks.Add(1)
			continue
		}
		l.newAcks.Add(1)
		l.mu.Lock()
		if _, ok := l.acked[j.key]; !ok {
			l.acked[j.key] = struct{}{}
			l.ackOrder = append(l.ackOrder, j.key)
		}
		if !resend && l.o.dup > 0 {
			if len(l.recent) < recentJobs {
				l.recent = append(l.recent, j)
			} else {
				l.recent[rng.IntN(recentJobs)] = j
			}
		}
		l.mu.Unlock()
	}
}

// fail counts an error by kind; the first few kinds are reported.
func (l *load) fail(kind string) {
	l.errs.Add(1)
	if len(kind) > 200 {
		kind = kind[:200]
	}
	l.mu.Lock()
	if _, ok := l.errKinds[kind]; ok || len(l.errKinds) < 20 {
		l.errKinds[kind]++
	}
	l.mu.Unlock()
}

func (l *load) uniqueAcked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

func (l *load) ackedKeys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ackOrder...)
}

func (l *load) errorSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	kinds := make([]string, 0, len(l.errKinds))
	for k, n := range l.errKinds {
		kinds = append(kinds, fmt.Sprintf("%d x %s", n, k))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, "; ")
}

// percentile of sorted durations, p in [0,1].
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p)]
}
