package filters

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hookrelay/hookrelay/relay"
)

const (
	// urlTokenMinLen refuses guessable tokens: 16 random characters are at least 64 bits even
	// from hex digits.
	urlTokenMinLen = MinSecretLen
	// urlTokenMaxLen bounds what is hashed per request; no real token is longer.
	urlTokenMaxLen = 512
)

// URLToken verifies a secret token in the request URL, for providers that sign nothing: the last
// path segment (the relay routes Path/<token> to the route at Path) or a query parameter. It
// compares SHA-256 digests in constant time, so neither the token's bytes nor its length leak
// through timing. It is not changed after NewURLToken, so one value serves concurrent requests.
type URLToken struct {
	digests [][sha256.Size]byte
	query   string // "" reads the last path segment
}

var _ relay.Verifier = (*URLToken)(nil)

// NewURLToken returns a verifier that accepts any of tokens (several during a rotation). The token
// is read from the query parameter named query, or from the last path segment when query is "".
// Tokens must be 16 to 512 characters from A-Z a-z 0-9 - . _ ~, which need no escaping anywhere
// in a URL: a '+' in a query, for one, arrives as a space.
func NewURLToken(tokens []string, query string) (*URLToken, error) {
	if len(tokens) == 0 {
		return nil, errors.New("url token: no tokens")
	}
	if query != "" && !urlUnreserved(query) {
		return nil, fmt.Errorf("url token: query parameter name %q has characters outside A-Z a-z 0-9 - . _ ~", query)
	}
	u := &URLToken{digests: make([][sha256.Size]byte, len(tokens)), query: query}
	for i, t := range tokens {
		switch {
		case t == "":
			return nil, fmt.Errorf("url token: token %d is empty", i+1)
		case len(t) < urlTokenMinLen:
			return nil, fmt.Errorf("url token: token %d is %d characters, want at least %d: a guessable token verifies nothing", i+1, len(t), urlTokenMinLen)
		case len(t) > urlTokenMaxLen:
			return nil, fmt.Errorf("url token: token %d is %d characters, over the %d limit", i+1, len(t), urlTokenMaxLen)
		case !urlUnreserved(t):
			return nil, fmt.Errorf("url token: token %d has characters outside A-Z a-z 0-9 - . _ ~ (use hex or base64url)", i+1)
		}
		u.digests[i] = sha256.Sum256([]byte(t))
	}
	return u, nil
}

// Verify reads the token from the URL and compares it with every configured one. The cause never
// holds the received token: a near miss, such as a retired token, is still a secret.
func (u *URLToken) Verify(r *http.Request, _ []byte) error {
	var got string
	if u.query != "" {
		vals := r.URL.Query()[u.query]
		switch len(vals) {
		case 0:
			return authFailf("missing query parameter %q", u.query)
		case 1:
			got = vals[0]
		default:
			// Reading only the first would let a URL carry a second token nobody checks.
			return authFailf("query parameter %q appears %d times", u.query, len(vals))
		}
		if got == "" {
			return authFailf("query parameter %q is empty", u.query)
		}
	} else {
		p := r.URL.Path
		got = p[strings.LastIndexByte(p, '/')+1:]
		if got == "" {
			return authFailf("no token in the URL path")
		}
	}
	if len(got) > urlTokenMaxLen {
		return authFailf("token is %d characters, over the %d limit", len(got), urlTokenMaxLen)
	}
	d := sha256.Sum256([]byte(got))
	match := 0
	for i := range u.digests { // no early exit: which token matched does not show either
		match |= subtle.ConstantTimeCompare(d[:], u.digests[i][:])
	}
	if match == 0 {
		return authFailf("token matched none of %d tokens", len(u.digests))
	}
	return nil
}

// urlUnreserved reports whether s is made only of RFC 3986 unreserved characters.
func urlUnreserved(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// HeadOnly marks URLToken as a relay.HeadVerifier: the token is in the URL, so it is checked before
// the body is read.
func (u *URLToken) HeadOnly() {}

var _ relay.HeadVerifier = (*URLToken)(nil)
