package filters_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// Shared by the verifier tests (standardwebhooks, stripe, github, hmac, urltoken).

// whClockAt returns a fixed fake clock at unix second sec.
func whClockAt(sec int64) func() time.Time {
	return func() time.Time { return time.Unix(sec, 0) }
}

// whRequest builds a POST to target with the given headers. Verifiers get the body separately,
// as ingress reads it before calling them.
func whRequest(target string, headers map[string]string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	return r
}

// whCheck asserts err: nil when wantCause is "", otherwise a relay.Error of KindUnauthorized with
// the generic public message, whose cause contains wantCause and none of the secret strings.
func whCheck(t *testing.T, err error, wantCause string, secret ...string) {
	t.Helper()
	if wantCause == "" {
		if err != nil {
			t.Fatalf("Verify = %v, want nil", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Verify = nil, want an error with cause %q", wantCause)
	}
	var e *relay.Error
	if !errors.As(err, &e) {
		t.Fatalf("Verify = %T %v, want a *relay.Error", err, err)
	}
	if e.Kind != relay.KindUnauthorized {
		t.Errorf("Kind = %v, want KindUnauthorized", e.Kind)
	}
	if want := relay.Unauthorized(nil).Msg; e.Msg != want {
		t.Errorf("public Msg = %q, want the generic %q", e.Msg, want)
	}
	if e.Err == nil {
		t.Fatalf("no cause, want one containing %q", wantCause)
	}
	cause := e.Err.Error()
	if !strings.Contains(cause, wantCause) {
		t.Errorf("cause = %q, want it to contain %q", cause, wantCause)
	}
	for _, s := range secret {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q reveals a secret or expected value %q", err, s)
		}
	}
}

func whHMACHex(key, msg string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

func whHMACBase64(key []byte, msg string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// whValidCase is one verifier with a request it accepts.
type whValidCase struct {
	name string
	v    relay.Verifier
	r    *http.Request
}

// whValidCases returns one accepted request per scheme, over body.
func whValidCases(tb testing.TB, body []byte) []whValidCase {
	tb.Helper()
	const ts int64 = 1614265330
	tsText := strconv.FormatInt(ts, 10)
	clock := whClockAt(ts)

	swSecret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	swKey, _ := relay.ParseSigningSecret(swSecret)
	stripeSecret := "whsec_stripe_bench"
	ghSecret := "It's a Secret to Everybody"
	token := "0123456789abcdef0123456789abcdef"

	sw, err := filters.NewStandardWebhooks([]string{swSecret}, 0, clock)
	if err != nil {
		tb.Fatal(err)
	}
	st, err := filters.NewStripe([]string{stripeSecret}, 0, clock)
	if err != nil {
		tb.Fatal(err)
	}
	gh, err := filters.NewGitHub([]string{ghSecret})
	if err != nil {
		tb.Fatal(err)
	}
	h512, err := filters.NewHMAC(filters.HMACConfig{Header: "X-Sig", Algorithm: "sha512", Encoding: "base64", TimestampHeader: "X-Ts"}, []string{ghSecret}, clock)
	if err != nil {
		tb.Fatal(err)
	}
	ut, err := filters.NewURLToken([]string{token}, "")
	if err != nil {
		tb.Fatal(err)
	}
	return []whValidCase{
		{"standardwebhooks", sw, whRequest("/hooks/x", map[string]string{
			"webhook-id": "msg_1", "webhook-timestamp": tsText,
			"webhook-signature": relay.SignStandardWebhook(swKey, "msg_1", ts, body)}, nil)},
		{"stripe", st, whRequest("/hooks/x", map[string]string{
			"Stripe-Signature": "t=" + tsText + ",v1=" + whHMACHex(stripeSecret, tsText+"."+string(body))}, nil)},
		{"github", gh, whRequest("/hooks/x", map[string]string{
			"X-Hub-Signature-256": "sha256=" + whHMACHex(ghSecret, string(body))}, nil)},
		{"hmac-sha512-base64-ts", h512, whRequest("/hooks/x", map[string]string{
			"X-Sig": hmacSHA512Base64(ghSecret, tsText+"."+string(body)), "X-Ts": tsText}, nil)},
		{"urltoken", ut, whRequest("/hooks/x/"+token, nil, nil)},
	}
}

// A verifier is shared by all requests of a route; under -race this shows Verify writes nothing
// shared.
func TestVerifiersConcurrent(t *testing.T) {
	body := []byte(`{"id":"job-1","status":"completed"}`)
	for _, c := range whValidCases(t, body) {
		t.Run(c.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for range 50 {
						if err := c.v.Verify(c.r, body); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// The cost of one successful verification per scheme on a 1 KiB body, the size of a typical
// job-status payload. HMAC over the body dominates; the rest is header parsing.
func BenchmarkVerifiers(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	for _, c := range whValidCases(b, body) {
		if err := c.v.Verify(c.r, body); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := c.v.Verify(c.r, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
