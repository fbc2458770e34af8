package filters_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// Stripe publishes no test vector, so this one was computed outside Go and is recomputed below
// with crypto/hmac:
//
//	printf '%s' '1614265330.{"id":"evt_test_webhook","object":"event"}' |
//	    openssl dgst -sha256 -hmac 'whsec_test_secret'
//
// The key is the secret's text, "whsec_" included, as Stripe's libraries use it.
const (
	stripeVecSecret = "whsec_test_secret"
	stripeVecTS     = 1614265330
	stripeVecBody   = `{"id":"evt_test_webhook","object":"event"}`
	stripeVecSig    = "3c5817089d739023dd6190f70a3757e04f7a2fd8b5dab12c2e000f51970dccff"
	stripeOther     = "whsec_other_secret"
)

func TestStripeVector(t *testing.T) {
	m := hmac.New(sha256.New, []byte(stripeVecSecret))
	m.Write([]byte(strconv.Itoa(stripeVecTS) + "." + stripeVecBody))
	if got := hex.EncodeToString(m.Sum(nil)); got != stripeVecSig {
		t.Fatalf("crypto/hmac gives %s, openssl gave %s", got, stripeVecSig)
	}
}

func TestStripeVerify(t *testing.T) {
	ts := "t=" + strconv.Itoa(stripeVecTS)
	good := "v1=" + stripeVecSig
	otherSig := whHMACHex(stripeOther, strconv.Itoa(stripeVecTS)+"."+stripeVecBody)
	// What a verifier that base64-decoded the secret, as Standard Webhooks does, would expect.
	decodedKey, _ := relay.ParseSigningSecret(stripeVecSecret)
	decodedSig := whHMACHex(string(decodedKey), strconv.Itoa(stripeVecTS)+"."+stripeVecBody)
	tests := []struct {
		name    string
		secrets []string
		tol     time.Duration
		now     int64
		header  string // Stripe-Signature; "" sends none
		body    string
		want    string
	}{
		{"vector", []string{stripeVecSecret}, 0, stripeVecTS, ts + "," + good, stripeVecBody, ""},
		{"with v0 and spaces", []string{stripeVecSecret}, 0, stripeVecTS, ts + ", " + good + ", v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39", stripeVecBody, ""},
		{"upper-case hex", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=" + strings.ToUpper(stripeVecSig), stripeVecBody, ""},
		{"several signatures, one good", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=" + otherSig + "," + good, stripeVecBody, ""},
		{"malformed v1 beside a good one", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=zz," + good, stripeVecBody, ""},
		{"t after the signatures", []string{stripeVecSecret}, 0, stripeVecTS, good + "," + ts, stripeVecBody, ""},
		{"rotation: second secret valid", []string{stripeOther, stripeVecSecret}, 0, stripeVecTS, ts + "," + good, stripeVecBody, ""},
		{"secret with a trailing newline", []string{stripeVecSecret + "\n"}, 0, stripeVecTS, ts + "," + good, stripeVecBody, ""},
		{"at the tolerance", []string{stripeVecSecret}, 0, stripeVecTS + 300, ts + "," + good, stripeVecBody, ""},

		{"wrong secret", []string{stripeOther}, 0, stripeVecTS, ts + "," + good, stripeVecBody, "none of 1 v1 signatures matched any of 1 secrets"},
		{"secret base64-decoded is not the key", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=" + decodedSig, stripeVecBody, "none of 1 v1"},
		{"tampered body", []string{stripeVecSecret}, 0, stripeVecTS, ts + "," + good, stripeVecBody + " ", "none of 1 v1"},
		{"tampered timestamp", []string{stripeVecSecret}, 0, stripeVecTS, "t=" + strconv.Itoa(stripeVecTS+1) + "," + good, stripeVecBody, "none of 1 v1"},
		{"missing header", []string{stripeVecSecret}, 0, stripeVecTS, "", stripeVecBody, "missing Stripe-Signature header"},
		{"item without =", []string{stripeVecSecret}, 0, stripeVecTS, ts + "," + good + ",garbage", stripeVecBody, "an item has no '='"},
		{"no timestamp", []string{stripeVecSecret}, 0, stripeVecTS, good, stripeVecBody, "has no t= timestamp"},
		{"empty timestamp", []string{stripeVecSecret}, 0, stripeVecTS, "t=," + good, stripeVecBody, "has an empty t="},
		{"two timestamps", []string{stripeVecSecret}, 0, stripeVecTS, ts + "," + ts + "," + good, stripeVecBody, "more than one t="},
		{"timestamp not a number", []string{stripeVecSecret}, 0, stripeVecTS, "t=now," + good, stripeVecBody, `Stripe-Signature timestamp "now" is not unix seconds`},
		{"stale timestamp", []string{stripeVecSecret}, 0, stripeVecTS + 301, ts + "," + good, stripeVecBody, "Stripe-Signature timestamp 1614265330 is 5m1s old, over the 5m0s tolerance"},
		{"future timestamp", []string{stripeVecSecret}, 0, stripeVecTS - 301, ts + "," + good, stripeVecBody, "is 5m1s in the future"},
		{"v0 only", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v0=" + stripeVecSig, stripeVecBody, "holds no well-formed v1 signature (0 malformed)"},
		{"v1 not hex", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=" + strings.Repeat("g", 64), stripeVecBody, "(1 malformed)"},
		{"v1 truncated", []string{stripeVecSecret}, 0, stripeVecTS, ts + ",v1=" + stripeVecSig[:62], stripeVecBody, "(1 malformed)"},
		{"header too long", []string{stripeVecSecret}, 0, stripeVecTS, ts + strings.Repeat(",v0=x", 900) + "," + good, stripeVecBody, "over the 4096-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewStripe(tt.secrets, tt.tol, whClockAt(tt.now))
			if err != nil {
				t.Fatal(err)
			}
			h := map[string]string{}
			if tt.header != "" {
				h["Stripe-Signature"] = tt.header
			}
			err = v.Verify(whRequest("/hooks/x", h, []byte(tt.body)), []byte(tt.body))
			whCheck(t, err, tt.want, stripeVecSecret, stripeOther, stripeVecSig)
		})
	}
}

func TestNewStripeErrors(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		tol     time.Duration
		want    string
	}{
		{"no secrets", nil, 0, "stripe: no secrets"},
		{"empty secret", []string{stripeVecSecret, "\n"}, 0, "stripe: secret 2 is empty"},
		{"negative tolerance", []string{stripeVecSecret}, -time.Minute, "tolerance -1m0s is negative"},
		{"tolerance without a unit", []string{stripeVecSecret}, 300, "under a second"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewStripe(tt.secrets, tt.tol, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewStripe = %v, %v; want error containing %q", v, err, tt.want)
			}
		})
	}
}

// Invariants: no panic; a signature built here always verifies; a fuzzed header verifies only if
// it carries the real signature for its own t.
func FuzzStripeHeader(f *testing.F) {
	ts := "t=" + strconv.Itoa(stripeVecTS)
	f.Add(ts+",v1="+stripeVecSig, []byte(stripeVecBody))
	f.Add(ts+", v1=zz, v0=00,v1="+stripeVecSig, []byte(stripeVecBody))
	f.Add("t=,v1=", []byte{})
	f.Add("t=1,t=2", []byte("x"))
	f.Add(",,,=,==", []byte("x"))
	f.Add("v1="+stripeVecSig+",t=01614265330", []byte(stripeVecBody))
	v, err := filters.NewStripe([]string{stripeOther, stripeVecSecret}, 0, whClockAt(stripeVecTS))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		err := v.Verify(whRequest("/", map[string]string{"Stripe-Signature": header}, nil), body)
		if err == nil {
			// Independent parse: the one t= item, and the real signature among the v1 items.
			var tval string
			var sigs []string
			for item := range strings.SplitSeq(header, ",") {
				k, val, _ := strings.Cut(strings.TrimSpace(item), "=")
				switch k {
				case "t":
					tval = val
				case "v1":
					sigs = append(sigs, strings.ToLower(val))
				}
			}
			want := whHMACHex(stripeVecSecret, tval+"."+string(body))
			wantOther := whHMACHex(stripeOther, tval+"."+string(body))
			found := false
			for _, s := range sigs {
				found = found || s == want || s == wantOther
			}
			if !found {
				t.Fatalf("header %q verified without a real signature", header)
			}
		}
		good := ts + ",v1=" + whHMACHex(stripeVecSecret, strconv.Itoa(stripeVecTS)+"."+string(body))
		if err := v.Verify(whRequest("/", map[string]string{"Stripe-Signature": good}, nil), body); err != nil {
			t.Fatalf("valid signature refused: %v", err)
		}
	})
}
