package filters_test

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
)

// Slack's published example ("Verifying requests from Slack", api.slack.com): a scheme the
// generic HMAC covers with a prefix, a timestamp header and a template. Checked with openssl too.
const (
	slackSecret = "8f742231b10e8888abcd99yyyzzz85a5"
	slackTS     = 1531420618
	slackBody   = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	slackSig    = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
)

func slackHMACConfig() filters.HMACConfig {
	return filters.HMACConfig{
		Header: "X-Slack-Signature", Prefix: "v0=",
		TimestampHeader: "X-Slack-Request-Timestamp", Template: "v0:{timestamp}:{body}",
	}
}

func hmacSHA512Base64(key, msg string) string {
	m := hmac.New(sha512.New, []byte(key))
	m.Write([]byte(msg))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestHMACVerify(t *testing.T) {
	const secret, other = "generic-secret-key", "other-secret-key"
	body := `{"job_id":"j1","status":"succeeded"}`
	ts := strconv.Itoa(slackTS)
	hex256 := whHMACHex(secret, body)
	b512 := hmacSHA512Base64(secret, body)
	b512ts := hmacSHA512Base64(secret, ts+"."+body)
	sha512b64 := filters.HMACConfig{Header: "X-Signature", Algorithm: "SHA512", Encoding: "base64"}
	withTS := filters.HMACConfig{Header: "X-Signature", Algorithm: "sha512", Encoding: "base64", TimestampHeader: "X-Timestamp", Tolerance: time.Minute}
	tests := []struct {
		name    string
		c       filters.HMACConfig
		secrets []string
		now     int64
		headers map[string]string
		body    string
		want    string
	}{
		{"slack vector", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": ts}, slackBody, ""},
		{"defaults: sha256 hex over the body", filters.HMACConfig{Header: "x-signature"}, []string{secret}, slackTS,
			map[string]string{"X-Signature": hex256}, body, ""},
		{"sha512 base64", sha512b64, []string{secret}, slackTS, map[string]string{"X-Signature": b512}, body, ""},
		{"default template with a timestamp", withTS, []string{secret}, slackTS,
			map[string]string{"X-Signature": b512ts, "X-Timestamp": ts}, body, ""},
		{"rotation: second secret valid", sha512b64, []string{other, secret}, slackTS, map[string]string{"X-Signature": b512}, body, ""},

		{"slack: wrong secret", slackHMACConfig(), []string{other}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": ts}, slackBody, "X-Slack-Signature signature matched none of 1 secrets"},
		{"slack: tampered body", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": ts}, slackBody + "&x=1", "matched none"},
		{"slack: tampered timestamp", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": strconv.Itoa(slackTS + 1)}, slackBody, "matched none"},
		{"slack: missing signature", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Request-Timestamp": ts}, slackBody, "missing X-Slack-Signature header"},
		{"slack: missing timestamp", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig}, slackBody, "missing X-Slack-Request-Timestamp header"},
		{"slack: malformed timestamp", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": "1531420618.0"}, slackBody, "is not unix seconds"},
		{"slack: stale", slackHMACConfig(), []string{slackSecret}, slackTS + 301,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": ts}, slackBody, "X-Slack-Request-Timestamp 1531420618 is 5m1s old, over the 5m0s tolerance"},
		{"slack: future", slackHMACConfig(), []string{slackSecret}, slackTS - 301,
			map[string]string{"X-Slack-Signature": slackSig, "X-Slack-Request-Timestamp": ts}, slackBody, "is 5m1s in the future"},
		{"configured tolerance", withTS, []string{secret}, slackTS + 61,
			map[string]string{"X-Signature": b512ts, "X-Timestamp": ts}, body, "is 1m1s old, over the 1m0s tolerance"},
		{"slack: wrong prefix", slackHMACConfig(), []string{slackSecret}, slackTS,
			map[string]string{"X-Slack-Signature": "v1=" + slackSig[3:], "X-Slack-Request-Timestamp": ts}, slackBody, `does not start with "v0="`},
		{"hex where base64 is expected", sha512b64, []string{secret}, slackTS,
			map[string]string{"X-Signature": strings.Repeat("ab", 64)}, body, "signature is 128 characters, want 88 (base64)"},
		{"base64 without padding", sha512b64, []string{secret}, slackTS,
			map[string]string{"X-Signature": strings.TrimRight(b512, "=")}, body, "signature is 86 characters, want 88"},
		{"base64 url alphabet", sha512b64, []string{secret}, slackTS,
			map[string]string{"X-Signature": strings.Repeat("_", 86) + "=="}, body, "signature is not valid base64"},
		{"base64 with a line break", sha512b64, []string{secret}, slackTS,
			map[string]string{"X-Signature": b512[:40] + "\n" + b512[41:]}, body, "signature is not valid base64"},
		{"sha256-sized signature for sha512", sha512b64, []string{secret}, slackTS,
			map[string]string{"X-Signature": whHMACBase64([]byte(secret), body)}, body, "want 88"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewHMAC(tt.c, tt.secrets, whClockAt(tt.now))
			if err != nil {
				t.Fatal(err)
			}
			err = v.Verify(whRequest("/hooks/x", tt.headers, []byte(tt.body)), []byte(tt.body))
			whCheck(t, err, tt.want, slackSecret, secret, other, hex256, b512, b512ts, slackSig[3:])
		})
	}
}

func TestNewHMACErrors(t *testing.T) {
	ok := filters.HMACConfig{Header: "X-Signature"}
	with := func(f func(*filters.HMACConfig)) filters.HMACConfig {
		c := ok
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		c       filters.HMACConfig
		secrets []string
		want    string
	}{
		{"empty header", filters.HMACConfig{}, []string{"sixteen-byte-key"}, "hmac: header is empty"},
		{"bad header name", filters.HMACConfig{Header: "X Signature"}, []string{"sixteen-byte-key"}, `hmac: header "X Signature" is not a valid header name`},
		{"header with a colon", filters.HMACConfig{Header: "X-Signature:"}, []string{"sixteen-byte-key"}, "is not a valid header name"},
		{"unknown algorithm", with(func(c *filters.HMACConfig) { c.Algorithm = "sha1" }), []string{"sixteen-byte-key"}, `hmac: unknown algorithm "sha1": want sha256 or sha512`},
		{"unknown encoding", with(func(c *filters.HMACConfig) { c.Encoding = "base64url" }), []string{"sixteen-byte-key"}, `hmac: unknown encoding "base64url": want hex or base64`},
		{"prefix with a control character", with(func(c *filters.HMACConfig) { c.Prefix = "v0\t" }), []string{"sixteen-byte-key"}, "prefix is longer than 64 bytes or holds a control character"},
		{"template without body", with(func(c *filters.HMACConfig) { c.Template = "static" }), []string{"sixteen-byte-key"}, `template "static" must hold {body} exactly once`},
		{"template with body twice", with(func(c *filters.HMACConfig) { c.Template = "{body}{body}" }), []string{"sixteen-byte-key"}, "must hold {body} exactly once"},
		{"unknown placeholder", with(func(c *filters.HMACConfig) { c.Template = "{id}.{body}" }), []string{"sixteen-byte-key"}, `template "{id}.{body}": unknown placeholder or stray brace at byte 0`},
		{"misspelt placeholder", with(func(c *filters.HMACConfig) { c.Template = "{Body}" }), []string{"sixteen-byte-key"}, "unknown placeholder or stray brace at byte 0"},
		{"stray brace", with(func(c *filters.HMACConfig) { c.Template = "{body}}" }), []string{"sixteen-byte-key"}, "stray brace at byte 6"},
		{"timestamp without header", with(func(c *filters.HMACConfig) { c.Template = "{timestamp}.{body}" }), []string{"sixteen-byte-key"}, "holds {timestamp} but no timestamp header is set"},
		{"timestamp header not signed", with(func(c *filters.HMACConfig) { c.TimestampHeader = "X-Ts"; c.Template = "{body}" }), []string{"sixteen-byte-key"}, "does not hold {timestamp}, so the timestamp header would not be signed"},
		{"timestamp twice", with(func(c *filters.HMACConfig) { c.TimestampHeader = "X-Ts"; c.Template = "{timestamp}{timestamp}{body}" }), []string{"sixteen-byte-key"}, "holds {timestamp} more than once"},
		{"timestamp header is the signature header", with(func(c *filters.HMACConfig) { c.TimestampHeader = "x-signature" }), []string{"sixteen-byte-key"}, "timestamp header and signature header are both X-Signature"},
		{"bad timestamp header name", with(func(c *filters.HMACConfig) { c.TimestampHeader = "X-Ts\n" }), []string{"sixteen-byte-key"}, "timestamp header \"X-Ts\\n\" is not a valid header name"},
		{"tolerance without timestamp", with(func(c *filters.HMACConfig) { c.Tolerance = time.Minute }), []string{"sixteen-byte-key"}, "tolerance is set but there is no timestamp header"},
		{"negative tolerance", with(func(c *filters.HMACConfig) { c.TimestampHeader = "X-Ts"; c.Tolerance = -1 }), []string{"sixteen-byte-key"}, "tolerance -1ns is negative"},
		{"tolerance without a unit", with(func(c *filters.HMACConfig) { c.TimestampHeader = "X-Ts"; c.Tolerance = 300 }), []string{"sixteen-byte-key"}, "tolerance 300ns is under a second"},
		{"no secrets", ok, nil, "hmac: no secrets"},
		{"empty secret", ok, []string{"sixteen-byte-key", ""}, "hmac: secret 2 is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewHMAC(tt.c, tt.secrets, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewHMAC = %v, %v; want error containing %q", v, err, tt.want)
			}
		})
	}
}

// Invariants: no panic; a signature built here always verifies; a fuzzed header verifies only if
// it is the real signature (hex in either case) after the prefix.
func FuzzHMACHeader(f *testing.F) {
	ts := strconv.Itoa(slackTS)
	f.Add(slackSig, ts, []byte(slackBody))
	f.Add("v0="+strings.ToUpper(slackSig[3:]), ts, []byte(slackBody))
	f.Add("", "", []byte{})
	f.Add("v0=", "0", []byte("x"))
	f.Add("v0=zz"+slackSig[5:], "+1531420618", []byte(slackBody))
	f.Add("v0v0="+slackSig, "1531420618000", []byte{0})
	v, err := filters.NewHMAC(slackHMACConfig(), []string{"other-secret-key", slackSecret}, whClockAt(slackTS))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, sig, ts string, body []byte) {
		h := map[string]string{"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": ts}
		err := v.Verify(whRequest("/", h, nil), body)
		if err == nil {
			want := "v0=" + whHMACHex(slackSecret, "v0:"+ts+":"+string(body))
			wantOther := "v0=" + whHMACHex("other-secret-key", "v0:"+ts+":"+string(body))
			if got := "v0=" + strings.ToLower(strings.TrimPrefix(sig, "v0=")); got != want && got != wantOther {
				t.Fatalf("header %q verified, but the real signature is %q", sig, want)
			}
		}
		good := "v0=" + whHMACHex(slackSecret, "v0:"+strconv.Itoa(slackTS)+":"+string(body))
		h = map[string]string{"X-Slack-Signature": good, "X-Slack-Request-Timestamp": strconv.Itoa(slackTS)}
		if err := v.Verify(whRequest("/", h, nil), body); err != nil {
			t.Fatalf("valid signature refused: %v", err)
		}
	})
}
