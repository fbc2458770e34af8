package relay

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestBackoffFullJitterWithinCeiling(t *testing.T) {
	p := RetryPolicy{Initial: time.Second, Multiplier: 2, Max: 10 * time.Second}
	for _, tc := range []struct {
		attempt int
		ceil    time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {4, 8 * time.Second}, {5, 10 * time.Second}, {500, 10 * time.Second}} {
		var top time.Duration
		for range 2000 {
			d := p.Backoff(tc.attempt)
			if d < 0 || d > tc.ceil {
				t.Fatalf("attempt %d: backoff %v outside [0, %v]", tc.attempt, d, tc.ceil)
			}
			top = max(top, d)
		}
		// Full jitter spreads over the whole range: 2000 draws all in the lower half would be a bug.
		if top < tc.ceil/2 {
			t.Errorf("attempt %d: largest of 2000 draws %v, want some above %v", tc.attempt, top, tc.ceil/2)
		}
	}
}

func TestRetryable(t *testing.T) {
	for status, want := range map[int]bool{
		0: true, 408: true, 425: true, 429: true, 500: true, 502: true, 503: true, 504: true,
		400: false, 401: false, 403: false, 404: false, 410: false, 422: false, 301: false,
	} {
		if got := retryable(status); got != want {
			t.Errorf("retryable(%d) = %v, want %v", status, got, want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{" 0 ", 0, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"-5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	} {
		got, ok := parseRetryAfter(tc.in, now)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	// An absurd value saturates instead of overflowing; the policy's cap then applies.
	if got, ok := parseRetryAfter("99999999999999999", now); !ok || got < 100000*time.Hour {
		t.Errorf("huge Retry-After = %v, %v; want a saturated positive duration", got, ok)
	}
}

func TestStatusAndOutcomeOfEveryKind(t *testing.T) {
	for _, tc := range []struct {
		k       Kind
		status  int
		outcome string
	}{
		{KindInternal, 500, "error"}, {KindNotFound, 404, "no_route"}, {KindMethod, 405, "invalid"},
		{KindTooLarge, 413, "too_large"}, {KindForbidden, 403, "denied_ip"}, {KindRateLimited, 429, "rate_limited"},
		{KindUnauthorized, 401, "bad_signature"}, {KindInvalid, 400, "invalid"}, {KindUnavailable, 503, "store_error"},
		{Kind(200), 500, "error"}, // a kind no row names is internal
	} {
		if s, o := statusOf(tc.k), outcomeOf(tc.k); s != tc.status || o != tc.outcome {
			t.Errorf("kind %d: status %d, outcome %q; want %d, %q", tc.k, s, o, tc.status, tc.outcome)
		}
	}
}

func TestDedupeKeyNoCollisions(t *testing.T) {
	// Without the length prefix these two would collide.
	a := DedupeKey("r", "a|1:b", "c")
	b := DedupeKey("r", "a", "1:b|c")
	if a == b {
		t.Fatalf("keys collide: %q", a)
	}
}

// IDs sort by arrival: across milliseconds, within one, and when the clock steps back.
func TestIDsSortByArrival(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ids idSource
	prev := ids.next(t0)
	for i, step := range []time.Duration{time.Millisecond, 0, 0, 0, 3 * time.Millisecond, -2 * time.Millisecond, 0, time.Hour} {
		t0 = t0.Add(step)
		id := ids.next(t0)
		if len(id) != 26 || id <= prev {
			t.Fatalf("id %d: %q (len %d) does not sort after %q", i, id, len(id), prev)
		}
		prev = id
	}
}

func TestErrorMessageNotRepeated(t *testing.T) {
	cause := errors.New("body is not valid JSON")
	for _, tc := range []struct {
		err  *Error
		want string
	}{
		{&Error{Kind: KindInvalid, Msg: cause.Error(), Err: cause}, "body is not valid JSON"},
		{&Error{Kind: KindUnavailable, Msg: "store unavailable", Err: cause}, "store unavailable: body is not valid JSON"},
		{&Error{Kind: KindNotFound, Msg: "no route"}, "no route"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
		if tc.err.Err != nil && !errors.Is(tc.err, cause) {
			t.Errorf("%v does not unwrap to its cause", tc.err)
		}
	}
}
