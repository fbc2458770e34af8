package filters_test

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// Trusting every address would let any sender name its own: refused, however it is spelled.
func TestClientIPRefusesTrustingEveryone(t *testing.T) {
	for _, trusted := range [][]string{
		{"0.0.0.0/0"}, {"::/0"}, {"10.0.0.0/8", "::/0"}, {"0.0.0.0/1", "128.0.0.0/1"},
		{"::ffff:0.0.0.0/96"}, {"::/1", "8000::/1"},
	} {
		_, err := filters.NewClientIPHeader(trusted, "X-Forwarded-For")
		if err == nil || !strings.Contains(err.Error(), "/0") {
			t.Errorf("%v: err = %v, want a refusal naming the /0", trusted, err)
		}
	}
	if _, err := filters.NewClientIPHeader([]string{"0.0.0.0/1", "::/1"}, "X-Forwarded-For"); err != nil {
		t.Errorf("half the addresses: %v", err)
	}
}

// addrIn64 is the i-th address in 2001:db8:0:1::/64.
func addrIn64(i int) netip.Addr {
	b := netip.MustParseAddr("2001:db8:0:1::").As16()
	b[12], b[13], b[14], b[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.AddrFrom16(b)
}

// One /64 is one sender: a thousand of its addresses get one bucket between them, in both
// limiters. Another /64 has its own; a prefix of 128 restores one bucket per address.
func TestRateLimitersGroupIPv6ByPrefix(t *testing.T) {
	for name, mk := range bothLimiters(t) {
		t.Run(name, func(t *testing.T) {
			clock := newRLClock()
			rl := mk(t, filters.RateConfig{PerIP: 1, PerIPBurst: 1, Now: clock.Now})
			admitted := 0
			for i := range 1000 {
				if rl.Admit(rlReq, addrIn64(i+1)) == nil {
					admitted++
				}
			}
			if admitted != 1 {
				t.Errorf("default /64: %d of 1000 addresses of one /64 admitted, want 1", admitted)
			}
			if err := rl.Admit(rlReq, netip.MustParseAddr("2001:db8:0:2::1")); err != nil {
				t.Errorf("another /64: %v", err)
			}

			rl = mk(t, filters.RateConfig{PerIP: 1, PerIPBurst: 1, IPv6Prefix: 48, Now: clock.Now})
			if err := rl.Admit(rlReq, netip.MustParseAddr("2001:db8:0:1::1")); err != nil {
				t.Fatal(err)
			}
			if err := rl.Admit(rlReq, netip.MustParseAddr("2001:db8:0:ffff::1")); relay.KindOf(err) != relay.KindRateLimited {
				t.Errorf("/48: a second /64 of the same /48 got %v, want 429", err)
			}

			rl = mk(t, filters.RateConfig{PerIP: 1, PerIPBurst: 1, IPv6Prefix: 128, Now: clock.Now})
			admitted = 0
			for i := range 100 {
				if rl.Admit(rlReq, addrIn64(i+1)) == nil {
					admitted++
				}
			}
			if admitted != 100 {
				t.Errorf("/128: %d of 100 addresses admitted, want all", admitted)
			}
		})
	}
}

// Each verifier names a webhook by what its signature covers, for as long as a replay would verify.
func TestVerifierIdentities(t *testing.T) {
	const key = "0123456789abcdef0123"
	sw, _ := filters.NewStandardWebhooks([]string{"whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}, 0, nil)
	gh, _ := filters.NewGitHub([]string{key})
	plain, _ := filters.NewHMAC(filters.HMACConfig{Header: "X-Sig"}, []string{key}, nil)
	timed, _ := filters.NewHMAC(filters.HMACConfig{Header: "X-Sig", TimestampHeader: "X-Ts", Tolerance: time.Minute}, []string{key}, nil)
	st, _ := filters.NewStripe([]string{key}, 2*time.Minute, nil)
	fal, _ := filters.NewFal(filters.FalConfig{Tolerance: 30 * time.Second})
	type ident interface {
		Identity(*http.Request, []byte) (string, time.Duration)
	}
	for _, tt := range []struct {
		name       string
		v          ident
		a, b       map[string]string // headers of two requests
		bodyA      string
		bodyB      string
		same       bool
		wantWindow time.Duration
	}{
		{"standard webhooks: webhook-id", sw, map[string]string{"Webhook-Id": "m1", "Webhook-Timestamp": "1"}, map[string]string{"Webhook-Id": "m1", "Webhook-Timestamp": "2"}, "{}", "{}", true, 10 * time.Minute},
		{"standard webhooks: another id", sw, map[string]string{"Webhook-Id": "m1"}, map[string]string{"Webhook-Id": "m2"}, "{}", "{}", false, 10 * time.Minute},
		{"github: delivery header ignored", gh, map[string]string{"X-GitHub-Delivery": "1"}, map[string]string{"X-GitHub-Delivery": "2"}, "{}", "{}", true, 0},
		{"github: body", gh, nil, nil, "{}", "{ }", false, 0},
		{"hmac: body", plain, nil, nil, "a", "b", false, 0},
		{"hmac: timestamp", timed, map[string]string{"X-Ts": "1"}, map[string]string{"X-Ts": "2"}, "a", "a", false, 2 * time.Minute},
		{"stripe: event id across signatures", st, map[string]string{"Stripe-Signature": "t=1,v1=aa"}, map[string]string{"Stripe-Signature": "t=2,v1=bb"}, `{"id":"evt_1"}`, `{"id":"evt_1"}`, true, 0},
		{"stripe: no event id", st, map[string]string{"Stripe-Signature": "t=1,v1=aa"}, map[string]string{"Stripe-Signature": "t=2,v1=aa"}, `{}`, `{}`, false, 4 * time.Minute},
		{"fal: request and timestamp", fal, map[string]string{filters.FalHeaderRequestID: "r", filters.FalHeaderTimestamp: "1"}, map[string]string{filters.FalHeaderRequestID: "r", filters.FalHeaderTimestamp: "2"}, "{}", "{}", false, time.Minute},
	} {
		ida, wa := tt.v.Identity(whRequest("/", tt.a, nil), []byte(tt.bodyA))
		idb, _ := tt.v.Identity(whRequest("/", tt.b, nil), []byte(tt.bodyB))
		if ida == "" || (ida == idb) != tt.same || wa != tt.wantWindow {
			t.Errorf("%s: identities %q, %q (same: want %v), window %v (want %v)", tt.name, ida, idb, tt.same, wa, tt.wantWindow)
		}
	}
}

// generic.job_id_header: the job ID comes from the header, once, held to the rules of a value.
func TestGenericJobIDHeader(t *testing.T) {
	p, err := filters.NewPreset("generic", &filters.Generic{JobIDHeader: "idempotency-key", StatusPath: "state"})
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Idempotency-Key", "k-1")
	if job, err := p.ExtractRequest(h, []byte(`{"state":"done","id":"body"}`)); err != nil || job != (relay.Job{ID: "k-1", Status: "done"}) {
		t.Errorf("got %+v, %v", job, err)
	}
	if job, err := p.ExtractRequest(http.Header{}, []byte(`{"state":"done"}`)); err != nil || job.ID != "" {
		t.Errorf("without the header: %+v, %v", job, err)
	}
	h.Add("Idempotency-Key", "k-2")
	if _, err := p.ExtractRequest(h, []byte(`{}`)); err == nil {
		t.Error("the header twice accepted")
	}
	h = http.Header{"Idempotency-Key": {strings.Repeat("x", filters.MaxValueLen+1)}}
	if _, err := p.ExtractRequest(h, []byte(`{}`)); err == nil {
		t.Error("an over-long header accepted")
	}
	for _, g := range []*filters.Generic{{JobIDPath: "id", JobIDHeader: "K"}, {JobIDHeader: "bad header"}} {
		if _, err := filters.NewPreset("generic", g); err == nil {
			t.Errorf("%+v accepted", g)
		}
	}
}
