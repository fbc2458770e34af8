package filters_test

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hookrelay/hookrelay/filters"
)

// A job ID from a header is the header's value, trimmed, or an error when that could not be sent
// on as a header or stored as a key.
func FuzzJobIDHeader(f *testing.F) {
	for _, v := range []string{"k-1", " k-1\t", "", "a\x00b", "\xff", strings.Repeat("x", filters.MaxValueLen+1), "é"} {
		f.Add(v, false)
		f.Add(v, true)
	}
	p, err := filters.NewPreset("generic", &filters.Generic{JobIDHeader: "Idempotency-Key"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, v string, twice bool) {
		h := http.Header{"Idempotency-Key": {v}}
		if twice {
			h["Idempotency-Key"] = append(h["Idempotency-Key"], v)
		}
		job, err := p.ExtractRequest(h, []byte(`{}`))
		want := strings.TrimSpace(v)
		bad := twice || len(want) > filters.MaxValueLen || !utf8.ValidString(want) ||
			strings.ContainsFunc(want, func(r rune) bool { return r < 0x20 || r == 0x7f })
		switch {
		case bad && err == nil:
			t.Fatalf("%q (twice %v) accepted as %q", v, twice, job.ID)
		case !bad && (err != nil || job.ID != want):
			t.Fatalf("%q: %+v, %v; want ID %q", v, job, err, want)
		}
	})
}

// Stripe names an event by its id when the signed body has one, else by timestamp and body; the
// same request always gets the same name, and two events never share one.
func FuzzStripeIdentity(f *testing.F) {
	f.Add(`{"id":"evt_1"}`, `{"id":"evt_2"}`, "t=1,v1=aa")
	f.Add(`{}`, `{"x":1}`, "t=1")
	f.Add(`not json`, `{"id":""}`, "")
	st, err := filters.NewStripe([]string{"whsec_0123456789abcdef"}, 0, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, a, b, sig string) {
		req := func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, "/", nil)
			r.Header.Set("Stripe-Signature", sig)
			return r
		}
		ida, _ := st.Identity(req(), []byte(a))
		again, _ := st.Identity(req(), []byte(a))
		idb, _ := st.Identity(req(), []byte(b))
		if ida == "" || ida != again {
			t.Fatalf("identity of %q: %q then %q", a, ida, again)
		}
		if a != b && ida == idb && !strings.HasPrefix(ida, "stripe:evt") && !strings.Contains(a, `"id"`) {
			t.Fatalf("bodies %q and %q without event ids share identity %q", a, b, ida)
		}
	})
}
