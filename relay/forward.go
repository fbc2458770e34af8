package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Target is one private HTTP service that deliveries are forwarded to.
type Target struct {
	Name        string
	URL         string
	Timeout     time.Duration // per attempt
	Concurrency int           // deliveries in flight at most
	// RateLimit caps attempts per second (0: unlimited), with bursts of RateBurst.
	RateLimit float64
	RateBurst int
	// SigningKey, when set, signs each request with Standard Webhooks headers.
	SigningKey []byte
	Retry      RetryPolicy
	// Headers are sent with every delivery (the service's own credential, say). Hop-by-hop
	// headers and those the relay sets are refused.
	Headers []Header
	// TLS, when set, is the target's own TLS client configuration (private CA, client
	// certificate); the URL must be https.
	TLS *TargetTLS

	endpoint endpoint // from URL, by validateTarget
}

// attemptResult is what one forwarding attempt came to.
type attemptResult struct {
	status     int           // 0: no response
	retryAfter time.Duration // from the target's Retry-After, when it sent one
	hasRetry   bool
	err        error // nil only for a 2xx
}

// forwarder sends one delivery to its target, through the target's client.
type forwarder struct {
	// shared is the transport of every target without TLS settings or a unix socket; the
	// others have one of their own (newTargetClient).
	shared    *http.Transport
	now       func() time.Time
	userAgent string
}

func newForwarder(now func() time.Time, userAgent string) *forwarder {
	return &forwarder{shared: sharedTransport(), now: now, userAgent: userAgent}
}

func (f *forwarder) close() { f.shared.CloseIdleConnections() }

func (f *forwarder) forward(ctx context.Context, client *http.Client, t *Target, d *Delivery) attemptResult {
	ctx, cancel := context.WithTimeout(ctx, t.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.endpoint.url, bytes.NewReader(d.Message.Body))
	if err != nil {
		return attemptResult{err: fmt.Errorf("build request: %w", err)}
	}
	m := &d.Message
	h := req.Header
	// The sender's forwarded headers, then the target's own, then the relay's: each may override
	// the ones before (validation refuses relay-owned names in the first two anyway).
	for name, v := range m.Headers {
		h[name] = v
	}
	for _, sh := range t.Headers {
		h.Set(sh.Name, sh.Value)
	}
	if m.ContentType != "" {
		h.Set("Content-Type", m.ContentType)
	}
	h.Set("User-Agent", f.userAgent)
	h.Set("X-Relay-Delivery-Id", d.ID)
	h.Set("X-Relay-Route", m.Route)
	h.Set("X-Relay-Provider", m.Provider)
	if m.JobID != "" {
		h.Set("X-Relay-Job-Id", m.JobID)
	}
	if m.JobStatus != "" {
		h.Set("X-Relay-Job-Status", m.JobStatus)
	}
	h.Set("X-Relay-Attempt", strconv.Itoa(d.Attempt))
	if m.SourceAddr != "" {
		h.Set("X-Forwarded-For", m.SourceAddr)
	}
	if len(t.SigningKey) > 0 {
		ts := f.now().Unix()
		h.Set("Webhook-Id", d.ID)
		h.Set("Webhook-Timestamp", strconv.FormatInt(ts, 10))
		h.Set("Webhook-Signature", SignStandardWebhook(t.SigningKey, d.ID, ts, m.Body))
	}

	resp, err := client.Do(req)
	if err != nil {
		return attemptResult{err: err}
	}
	defer resp.Body.Close()
	// Read a little of the answer for the dead-letter record, and drain a little more so the
	// connection can be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	res := attemptResult{status: resp.StatusCode}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return res
	}
	res.retryAfter, res.hasRetry = parseRetryAfter(resp.Header.Get("Retry-After"), f.now())
	res.err = fmt.Errorf("target answered %d%s", resp.StatusCode, describeBody(snippet))
	return res
}

// describeBody makes a short, printable excerpt of a target's error body.
func describeBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if !utf8.ValidString(s) {
		return " (binary body)"
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return ": " + s
}
