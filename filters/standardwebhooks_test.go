package filters_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// The published Standard Webhooks test vector (docs/DESIGN.md section 5).
const (
	swVecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	swVecID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	swVecTS     = 1614265330
	swVecBody   = `{"test": 2432232314}`
	swVecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	// swOtherSecret is a second valid secret, for rotation and wrong-secret cases.
	swOtherSecret = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
)

func swHeaders(id, ts, sig string) map[string]string {
	h := map[string]string{}
	if id != "" {
		h["webhook-id"] = id
	}
	if ts != "" {
		h["webhook-timestamp"] = ts
	}
	if sig != "" {
		h["webhook-signature"] = sig
	}
	return h
}

func TestStandardWebhooksVerify(t *testing.T) {
	ts := strconv.Itoa(swVecTS)
	otherKey, _ := relay.ParseSigningSecret(swOtherSecret)
	otherSig := relay.SignStandardWebhook(otherKey, swVecID, swVecTS, []byte(swVecBody))
	tests := []struct {
		name    string
		secrets []string
		tol     time.Duration
		now     int64
		headers map[string]string
		body    string
		want    string // "" verifies, else a substring of the cause
	}{
		{"published vector", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, swVecSig), swVecBody, ""},
		{"several signatures, one good", []string{swVecSecret}, 0, swVecTS,
			swHeaders(swVecID, ts, "v1,bm90IGl0 "+otherSig+" "+swVecSig), swVecBody, ""},
		{"unknown versions ignored", []string{swVecSecret}, 0, swVecTS,
			swHeaders(swVecID, ts, "v2,abc v1a,xyz "+swVecSig), swVecBody, ""},
		{"rotation: second secret valid", []string{swOtherSecret, swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, swVecSig), swVecBody, ""},
		{"at the tolerance, old", []string{swVecSecret}, 0, swVecTS + 300, swHeaders(swVecID, ts, swVecSig), swVecBody, ""},
		{"at the tolerance, future", []string{swVecSecret}, 0, swVecTS - 300, swHeaders(swVecID, ts, swVecSig), swVecBody, ""},
		{"wider tolerance", []string{swVecSecret}, 10 * time.Minute, swVecTS + 599, swHeaders(swVecID, ts, swVecSig), swVecBody, ""},

		{"wrong secret", []string{swOtherSecret}, 0, swVecTS, swHeaders(swVecID, ts, swVecSig), swVecBody,
			"none of 1 v1 signatures matched any of 1 secrets"},
		{"tampered body", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, swVecSig), `{"test": 2432232315}`, "none of 1 v1"},
		{"other id", []string{swVecSecret}, 0, swVecTS, swHeaders("msg_other", ts, swVecSig), swVecBody, "none of 1 v1"},
		{"timestamp changed within tolerance", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, strconv.Itoa(swVecTS+1), swVecSig), swVecBody, "none of 1 v1"},
		{"missing id", []string{swVecSecret}, 0, swVecTS, swHeaders("", ts, swVecSig), swVecBody, "missing webhook-id"},
		{"missing timestamp", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, "", swVecSig), swVecBody, "missing webhook-timestamp"},
		{"missing signature", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, ""), swVecBody, "missing webhook-signature"},
		{"id too long", []string{swVecSecret}, 0, swVecTS, swHeaders(strings.Repeat("i", 257), ts, swVecSig), swVecBody, "webhook-id is 257 bytes"},
		{"timestamp not a number", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, "yesterday", swVecSig), swVecBody, `webhook-timestamp "yesterday" is not unix seconds`},
		{"timestamp with a sign", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, "+"+ts, swVecSig), swVecBody, "is not unix seconds"},
		{"timestamp with a leading zero", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, "0"+ts, swVecSig), swVecBody, "is not unix seconds"},
		{"timestamp with a fraction", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts+".5", swVecSig), swVecBody, "is not unix seconds"},
		{"timestamp overlong", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, strings.Repeat("9", 19), swVecSig), swVecBody, "is not unix seconds"},
		{"stale timestamp", []string{swVecSecret}, 0, swVecTS + 301, swHeaders(swVecID, ts, swVecSig), swVecBody,
			"webhook-timestamp 1614265330 is 5m1s old, over the 5m0s tolerance"},
		{"future timestamp", []string{swVecSecret}, 0, swVecTS - 3600, swHeaders(swVecID, ts, swVecSig), swVecBody,
			"is 1h0m0s in the future, over the 5m0s tolerance"},
		{"milliseconds", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts+"000", swVecSig), swVecBody, "milliseconds instead of seconds?"},
		{"far future", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, strings.Repeat("9", 18), swVecSig), swVecBody, "is 999999998385734669s in the future, over the 5m0s tolerance"},
		{"unknown version only", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, "v2"+swVecSig[2:]), swVecBody, "holds no v1 signature"},
		{"signature without version", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, swVecSig[3:]), swVecBody, "holds no v1 signature"},
		{"signature header too long", []string{swVecSecret}, 0, swVecTS, swHeaders(swVecID, ts, strings.Repeat("v1,AAAA ", 600)+swVecSig), swVecBody, "over the 4096-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewStandardWebhooks(tt.secrets, tt.tol, whClockAt(tt.now))
			if err != nil {
				t.Fatal(err)
			}
			err = v.Verify(whRequest("/hooks/x", tt.headers, []byte(tt.body)), []byte(tt.body))
			whCheck(t, err, tt.want, swVecSecret, swVecSecret[len("whsec_"):], swOtherSecret, otherSig)
		})
	}
}

func TestNewStandardWebhooksErrors(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		tol     time.Duration
		want    string
	}{
		{"no secrets", nil, 0, "standard webhooks: no secrets"},
		{"empty secret", []string{swVecSecret, " "}, 0, "secret 2: empty signing secret"},
		{"not base64", []string{"whsec_!!!"}, 0, "secret 1: signing secret after whsec_ is not base64"},
		{"prefix only", []string{"whsec_"}, 0, "secret 1: empty signing secret after whsec_"},
		{"negative tolerance", []string{swVecSecret}, -time.Second, "tolerance -1s is negative"},
		{"tolerance without a unit", []string{swVecSecret}, 300, "tolerance 300ns is under a second"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewStandardWebhooks(tt.secrets, tt.tol, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewStandardWebhooks = %v, %v; want error containing %q", v, err, tt.want)
			}
		})
	}
}

// The real clock is used when now is nil.
func TestStandardWebhooksRealClock(t *testing.T) {
	v, err := filters.NewStandardWebhooks([]string{swVecSecret}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := relay.ParseSigningSecret(swVecSecret)
	ts := time.Now().Unix()
	sig := relay.SignStandardWebhook(key, "msg_now", ts, []byte("{}"))
	whCheck(t, v.Verify(whRequest("/", swHeaders("msg_now", strconv.FormatInt(ts, 10), sig), nil), []byte("{}")), "")
	err = v.Verify(whRequest("/", swHeaders(swVecID, strconv.Itoa(swVecTS), swVecSig), nil), []byte(swVecBody))
	whCheck(t, err, "old, over the 5m0s tolerance")
}

// Invariants: no panic; a signature built here always verifies; a fuzzed header verifies only if
// it carries the real signature as one of its entries.
func FuzzStandardWebhooksHeader(f *testing.F) {
	f.Add(swVecID, strconv.Itoa(swVecTS), swVecSig, []byte(swVecBody))
	f.Add(swVecID, strconv.Itoa(swVecTS), "v1,bm90IGl0 v2,x "+swVecSig, []byte(swVecBody))
	f.Add("", "", "", []byte{})
	f.Add("a b", "0", "v1,", []byte("x"))
	f.Add(swVecID, "01614265330", " v1,"+swVecSig[3:]+"  ", []byte(swVecBody))
	f.Add("msg", "1614265330000", "v1,,,, v1", []byte{0xff})
	key, _ := relay.ParseSigningSecret(swVecSecret)
	v, err := filters.NewStandardWebhooks([]string{swOtherSecret, swVecSecret}, 0, whClockAt(swVecTS))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		err := v.Verify(whRequest("/", swHeaders(id, ts, sig), nil), body)
		if err == nil {
			// Independent of the relay's signer: HMAC over id.ts.body, base64.
			want := "v1," + whHMACBase64(key, id+"."+ts+"."+string(body))
			found := false
			for _, f := range strings.Fields(sig) {
				found = found || f == want
			}
			if !found {
				t.Fatalf("header %q verified without the real signature %q", sig, want)
			}
		}
		// A valid signature over the fuzzed id and body always verifies.
		if id == "" || len(id) > 256 {
			return
		}
		good := relay.SignStandardWebhook(key, id, swVecTS, body)
		if err := v.Verify(whRequest("/", swHeaders(id, strconv.Itoa(swVecTS), good), nil), body); err != nil {
			t.Fatalf("valid signature refused: %v", err)
		}
	})
}
