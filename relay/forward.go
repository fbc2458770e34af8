package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
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
	err        error  // nil only for a 2xx
	response   []byte // the start of the answer's body, for history
}

// forwarder sends one delivery to its target, through the target's client.
type forwarder struct {
	now       func() time.Time
	userAgent string
}

func (f *forwarder) forward(ctx context.Context, c *targetClient, t *Target, d *Delivery) attemptResult {
	deadline := time.Now().Add(t.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(t.endpoint.url)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetNoDefaultContentType(true) // as net/http: none unless the sender sent one
	req.SetBodyRaw(d.Message.Body)
	m := &d.Message
	h := &req.Header
	// The sender's forwarded headers, then the target's own, then the relay's: each may override
	// the ones before (validation refuses relay-owned names in the first two anyway).
	for name, vs := range m.Headers {
		for _, v := range vs {
			h.Add(name, v)
		}
	}
	for _, sh := range t.Headers {
		h.Set(sh.Name, sh.Value)
	}
	if m.ContentType != "" {
		h.SetContentType(m.ContentType)
	}
	h.SetUserAgent(f.userAgent)
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

	if err := c.client().DoDeadline(req, resp, deadline); err != nil {
		switch {
		case errors.Is(err, fasthttp.ErrTimeout):
			err = fmt.Errorf("no answer within the timeout of %v", t.Timeout)
		case errors.Is(err, fasthttp.ErrConnectionClosed):
			// fasthttp's own text advises the server's author; say what the operator sees.
			err = errors.New("the target closed the connection without answering (with TLS, this is also how a refused client certificate shows)")
		}
		return attemptResult{err: fmt.Errorf("POST %s: %w", t.endpoint.shown, err)}
	}
	// Read the start of the answer for history and the dead-letter record, and drain a little
	// more so the connection can be reused (closing a stream not read to its end closes it).
	// An answer without a body (204, 304) has no stream.
	var snippet []byte
	if body := resp.BodyStream(); body != nil {
		snippet, _ = io.ReadAll(io.LimitReader(body, MaxAttemptResponse))
		_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
		_ = resp.CloseBodyStream()
	} else {
		snippet = append(snippet, resp.Body()[:min(len(resp.Body()), MaxAttemptResponse)]...)
	}
	code := resp.StatusCode()
	res := attemptResult{status: code, response: snippet}
	if code >= 200 && code < 300 {
		return res
	}
	res.retryAfter, res.hasRetry = parseRetryAfter(string(resp.Header.Peek("Retry-After")), f.now())
	res.err = fmt.Errorf("target answered %d%s", code, describeBody(snippet[:min(len(snippet), 256)]))
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
