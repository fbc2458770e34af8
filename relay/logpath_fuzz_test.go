package relay

import (
	"strings"
	"testing"
)

// Whatever path a request names, with a token somewhere in it, the logged path holds no part of
// the token and is no longer than a route's path and a placeholder.
func FuzzLogPath(f *testing.F) {
	tokenRoute := &Route{Name: "fashn", Path: "/hooks/fashn", TokenInPath: true}
	h := &ingress{
		routes:     map[string]*Route{"/hooks/fashn": tokenRoute, "/hooks/fotor": {Name: "fotor", Path: "/hooks/fotor"}},
		routePaths: []string{"/hooks/fashn", "/hooks/fotor"},
	}
	const tok = "tok-0123456789abcdef"
	for _, s := range [][2]string{
		{"/hooks/fashn/", ""}, {"//hooks/fashn/", ""}, {"/hooks//fashn/", ""}, {"/hooks/FASHN/", ""},
		{"/hooks/fashn", ""}, {"/hooks/fashn/./", ""}, {"/hooks/fashn/../fashn/", ""}, {"/", ""},
		{"/hooks/fashn/", "/x"}, {"/hooks/fotor/", ""}, {"", ""}, {"/hooks/fa", "shn"}, {"/HOOKS/fashn/%2e/", "?a"},
	} {
		f.Add(s[0], tok, s[1])
	}
	f.Fuzz(func(t *testing.T, before, token, after string) {
		if len(token) < 8 || strings.ContainsAny(token, "/") {
			return
		}
		p := before + token + after
		low := strings.ToLower(token)
		if strings.Count(strings.ToLower(p), low) != 1 || strings.Contains("/hooks/fashn/hooks/fotor/<token>/...", low) {
			return // the token must be the only place it appears, and not spell a route
		}
		got := h.logPath(p, h.match(p))
		if strings.Contains(strings.ToLower(got), low) {
			t.Fatalf("logPath(%q) = %q holds the token", p, got)
		}
		if len(got) > len("/hooks/fashn/<token>") {
			t.Fatalf("logPath(%q) = %q is longer than a route path and a placeholder", p, got)
		}
	})
}
