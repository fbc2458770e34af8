package main

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// A password in a URL never survives redaction, however the URL around it is mangled, both in
// the URL and in an error that quotes it.
func FuzzRedactURL(f *testing.F) {
	for _, s := range [][3]string{
		{"user", "s3cret-pw", "redis.internal:6379/0"},
		{"", "s3cret-pw", "redis.internal:abc/0"},
		{"user", "s3cret%zz", "h/0"},
		{"u/x", "secret/with/slash", "h:6379/0?x=y"},
		{"a:b", "p@ss-word", "h/0"},
		{"user", "sec ret", "ho st/0"},
		{"", "pw-0123456", "h@h2/0#frag"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, user, pw, rest string) {
		raw := "redis://" + user + ":" + pw + "@" + rest
		if len(pw) < 6 || strings.Count(raw, pw) != 1 || strings.Count(strconv.Quote(raw), pw) != 1 || strings.Contains(pw, "@") {
			return // the password must be findable, also in quoted form, and be the password
		}
		if out := redactURL(raw); strings.Contains(out, pw) {
			t.Fatalf("redactURL(%q) = %q", raw, out)
		}
		if out := redactedURLError(raw, errors.New("parse "+raw+": bad")); strings.Contains(out, pw) {
			t.Fatalf("redactedURLError(%q, plain) = %q", raw, out)
		}
		if _, err := url.Parse(raw); err != nil {
			if out := redactedURLError(raw, err); strings.Contains(out, pw) {
				t.Fatalf("redactedURLError(%q, %v) = %q", raw, err, out)
			}
		}
	})
}
