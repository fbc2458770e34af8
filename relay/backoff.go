package relay

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryPolicy says how a target's failed deliveries are retried.
type RetryPolicy struct {
	Initial       time.Duration // first backoff ceiling
	Multiplier    float64       // growth of the ceiling per attempt
	Max           time.Duration // ceiling of the ceiling
	MaxAttempts   int           // attempts before dead-lettering, the first included
	MaxAge        time.Duration // since the webhook was received; past it, dead-letter
	MaxRetryAfter time.Duration // a target's Retry-After is honoured up to this
}

// DefaultRetryPolicy is the policy of docs/DESIGN.md section 3.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		Initial:       time.Second,
		Multiplier:    2,
		Max:           10 * time.Minute,
		MaxAttempts:   20,
		MaxAge:        24 * time.Hour,
		MaxRetryAfter: 10 * time.Minute,
	}
}

// Backoff returns the delay before the attempt after attempt (1-based), with full jitter: uniform
// in [0, min(Max, Initial*Multiplier^(attempt-1))], so that many failing deliveries spread out.
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	ceil := float64(p.Initial) * math.Pow(p.Multiplier, float64(max(attempt-1, 0)))
	if ceil > float64(p.Max) || math.IsInf(ceil, 0) || math.IsNaN(ceil) {
		ceil = float64(p.Max)
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// retryable reports whether a delivery answered with status may succeed later: 408, 425, 429 and
// 5xx. Any other non-2xx answer is a permanent failure. Status 0 (no answer) is retryable.
func retryable(status int) bool {
	switch {
	case status == 0, status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests, status >= 500:
		return true
	}
	return false
}

// parseRetryAfter reads a Retry-After header: delta seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, math.MaxInt64/int64(time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
