package filters_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
)

const (
	utToken = "Zq3-vR8_k2LmN0pX.7yTb~w"
	utOther = "0123456789abcdef0123456789abcdef"
)

func TestURLTokenVerify(t *testing.T) {
	tests := []struct {
		name   string
		tokens []string
		query  string
		target string
		want   string
	}{
		{"path", []string{utToken}, "", "/hooks/x/" + utToken, ""},
		{"path, rotation: second token valid", []string{utOther, utToken}, "", "/hooks/x/" + utToken, ""},
		{"path, query ignored", []string{utToken}, "", "/hooks/x/" + utToken + "?token=nope", ""},
		{"query", []string{utToken}, "token", "/hooks/x?a=1&token=" + utToken, ""},
		{"query, rotation", []string{utOther, utToken}, "token", "/hooks/x?token=" + utToken, ""},
		{"query, percent-encoded", []string{utToken}, "token", "/hooks/x?token=" + url.QueryEscape(utToken), ""},

		{"path, wrong token", []string{utToken}, "", "/hooks/x/" + utOther, "token matched none of 1 tokens"},
		{"path, token prefix", []string{utToken}, "", "/hooks/x/" + utToken[:20], "matched none"},
		{"path, token extended", []string{utToken}, "", "/hooks/x/" + utToken + "a", "matched none"},
		{"path, token not last", []string{utToken}, "", "/hooks/x/" + utToken + "/more", "matched none"},
		{"path, no token (route path only)", []string{utToken}, "", "/hooks/x", "matched none"},
		{"path, trailing slash", []string{utToken}, "", "/hooks/x/" + utToken + "/", "no token in the URL path"},
		{"path, token in the query instead", []string{utToken}, "", "/hooks/x?token=" + utToken, "matched none"},
		{"path, overlong", []string{utToken}, "", "/hooks/x/" + strings.Repeat("a", 513), "token is 513 characters, over the 512 limit"},
		{"query, missing", []string{utToken}, "token", "/hooks/x/" + utToken, `missing query parameter "token"`},
		{"query, empty", []string{utToken}, "token", "/hooks/x?token=", `query parameter "token" is empty`},
		{"query, twice", []string{utToken}, "token", "/hooks/x?token=" + utOther + "&token=" + utToken, `query parameter "token" appears 2 times`},
		{"query, wrong token", []string{utToken}, "token", "/hooks/x?token=" + utOther, "matched none"},
		{"query, other parameter name", []string{utToken}, "token", "/hooks/x?Token=" + utToken, "missing query parameter"},
		{"query, plus becomes a space", []string{utToken}, "token", "/hooks/x?token=" + strings.Replace(utToken, "_", "+", 1), "matched none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewURLToken(tt.tokens, tt.query)
			if err != nil {
				t.Fatal(err)
			}
			err = v.Verify(whRequest(tt.target, nil, nil), nil)
			whCheck(t, err, tt.want, utToken, utOther)
		})
	}
}

func TestNewURLTokenErrors(t *testing.T) {
	tests := []struct {
		name   string
		tokens []string
		query  string
		want   string
	}{
		{"no tokens", nil, "", "url token: no tokens"},
		{"empty token", []string{utToken, ""}, "", "url token: token 2 is empty"},
		{"short token", []string{"0123456789abcde"}, "", "token 1 is 15 characters, want at least 16: a guessable token verifies nothing"},
		{"long token", []string{strings.Repeat("a", 513)}, "", "token 1 is 513 characters, over the 512 limit"},
		{"slash", []string{"0123456789/abcdef"}, "", "token 1 has characters outside A-Z a-z 0-9 - . _ ~"},
		{"plus", []string{"0123456789+abcdef"}, "token", "token 1 has characters outside"},
		{"space", []string{"0123456789 abcdef"}, "", "token 1 has characters outside"},
		{"bad query name", []string{utToken}, "to ken", `query parameter name "to ken" has characters outside`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewURLToken(tt.tokens, tt.query)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewURLToken = %v, %v; want error containing %q", v, err, tt.want)
			}
		})
	}
}
