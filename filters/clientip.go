package filters

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/hookrelay/hookrelay/relay"
)

// ClientIP tells who sent a request: the TCP peer, unless the peer is a trusted proxy, in which
// case the proxy's forwarding header names the client. It is not changed after NewClientIPHeader, so one
// value serves concurrent requests.
//
// The header (Forwarded, else X-Forwarded-For, else X-Real-IP) is a chain each proxy appends its
// own peer to, and only the part appended by trusted proxies is believed: walking from the right,
// the first address that is not a trusted proxy is the client; anything left of it came from the
// client and may be forged. If every address is a trusted proxy, the left-most is taken. An
// "unknown" or obfuscated ("_hidden") node in the walk hides the hop behind it, so the walk stops
// there and the last address reached (a trusted proxy), or else the peer, is taken. A malformed
// header gives the peer: a conservative answer, which an allowlist then refuses. (Entries left of
// the client are not read, so junk a sender put there does not count; Forwarded must parse whole,
// as its quoted strings keep it from being split from the right.) Ports are dropped, IPv4-mapped
// IPv6 addresses unmapped, and zones removed.
//
// The proxy must overwrite or strip the headers it does not set: when it sets only
// X-Forwarded-For and passes a sender's Forwarded header through, the sender chooses its address.
// NewClientIPHeader names the one header to read, which closes that hole.
type ClientIP struct {
	trusted prefixSet
	any     bool   // trusted holds something: else headers are never read
	header  string // canonical name of the one header to read; "" for all three, in order
}

var _ relay.ClientResolver = (*ClientIP)(nil)

const (
	hdrForwarded = "Forwarded"
	hdrXFF       = "X-Forwarded-For"
	hdrXRealIP   = "X-Real-Ip" // the canonical form of X-Real-IP
)

// NewClientIPHeader returns a resolver that believes forwarding headers only from peers in
// trustedProxies (CIDR prefixes and addresses, as for NewAllowlist); with none, headers are never
// read. It reads only header (Forwarded, X-Forwarded-For or X-Real-IP, in any case); "" reads all
// three in that order of preference. Naming the
// header the proxy sets means a sender cannot slip in another one the proxy passes through. Trusted
// proxies that cover all of IPv4 or all of IPv6 are refused.
func NewClientIPHeader(trustedProxies []string, header string) (*ClientIP, error) {
	c := &ClientIP{}
	switch h := http.CanonicalHeaderKey(header); h {
	case "", hdrForwarded, hdrXFF, hdrXRealIP:
		c.header = h
	default:
		return nil, fmt.Errorf("client IP header %q: want Forwarded, X-Forwarded-For or X-Real-IP", header)
	}
	set, err := newPrefixSet(trustedProxies, "trusted proxy")
	if err != nil {
		return nil, err
	}
	// Trusting every address lets any sender name its own address in a header.
	if n := len(set.v4); n == 1 && set.v4[0] == (span4{0, ^uint32(0)}) {
		return nil, fmt.Errorf("trusted proxies cover all of IPv4 (0.0.0.0/0): name your proxies' addresses, or any sender could choose its own")
	}
	if n := len(set.v6); n == 1 && set.v6[0] == (span6{u128{}, max128}) {
		return nil, fmt.Errorf("trusted proxies cover all of IPv6 (::/0): name your proxies' addresses, or any sender could choose its own")
	}
	c.trusted, c.any = set, len(set.v4)+len(set.v6) > 0
	return c, nil
}

// ClientAddr returns the client's address, or the zero Addr when the peer has none (not TCP).
func (c *ClientIP) ClientAddr(r *http.Request) netip.Addr {
	peer, ok := parseHostPort(r.RemoteAddr)
	if !ok || !c.any || !c.trusted.contains(peer) {
		return peer
	}
	h := r.Header
	if c.header == "" || c.header == hdrForwarded {
		if lines := h[hdrForwarded]; len(lines) > 0 {
			return c.fromForwarded(lines, peer)
		}
	}
	if c.header == "" || c.header == hdrXFF {
		if lines := h[hdrXFF]; len(lines) > 0 {
			return c.fromXFF(lines, peer)
		}
	}
	if c.header == "" || c.header == hdrXRealIP {
		if lines := h[hdrXRealIP]; len(lines) == 1 { // several: ambiguous, so malformed
			if a, ok := parseHostPort(strings.TrimSpace(lines[0])); ok {
				return a
			}
		}
	}
	return peer
}

// chainWalk is the right-to-left walk over a forwarding chain.
type chainWalk struct {
	c    *ClientIP
	last netip.Addr // the left-most address reached so far
}

// step takes the next address to the left and reports whether the walk ends: at an address that
// is not a trusted proxy, which is then the client.
func (w *chainWalk) step(a netip.Addr) bool {
	w.last = a
	return !w.c.trusted.contains(a)
}

// result is the client once the walk ended at an untrusted address, ran out of chain, or met a
// hidden node.
func (w *chainWalk) result(peer netip.Addr) netip.Addr {
	if w.last.IsValid() {
		return w.last
	}
	return peer
}

// fromXFF walks X-Forwarded-For, all its lines read as one comma-separated list, from the right.
// It does not allocate, and reads no further left than the client.
func (c *ClientIP) fromXFF(lines []string, peer netip.Addr) netip.Addr {
	w := chainWalk{c: c}
	for i := len(lines) - 1; i >= 0; i-- {
		rest := lines[i]
		for done := false; !done; {
			var entry string
			if k := strings.LastIndexByte(rest, ','); k >= 0 {
				entry, rest = rest[k+1:], rest[:k]
			} else {
				entry, done = rest, true
			}
			entry = strings.Trim(entry, " \t")
			if strings.EqualFold(entry, "unknown") {
				return w.result(peer)
			}
			a, ok := parseHostPort(entry)
			if !ok {
				return peer
			}
			if w.step(a) {
				return a
			}
		}
	}
	return w.result(peer)
}

// fromForwarded walks the for= nodes of Forwarded (RFC 7239) from the right. The whole header must
// parse, since quoted strings keep it from being split from the right; a node is checked only when
// the walk reaches it.
func (c *ClientIP) fromForwarded(lines []string, peer netip.Addr) netip.Addr {
	var buf [8]string
	nodes, ok := forwardedFor(lines, buf[:0])
	if !ok || len(nodes) == 0 {
		return peer
	}
	w := chainWalk{c: c}
	for i := len(nodes) - 1; i >= 0; i-- {
		a, hidden, ok := parseNode(nodes[i])
		switch {
		case !ok:
			return peer
		case hidden:
			return w.result(peer)
		case w.step(a):
			return a
		}
	}
	return w.result(peer)
}

// forwardedFor appends to nodes the for= value of each element of the Forwarded header lines, in
// order, "" for an element without one (a hop that says nothing of its peer, so hidden). Empty list
// elements are skipped, as HTTP list syntax asks. It reports false for a syntax error.
//
//	Forwarded         = 1#forwarded-element
//	forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
//	forwarded-pair    = token "=" value ; value = token / quoted-string
func forwardedFor(lines []string, nodes []string) ([]string, bool) {
	for _, s := range lines {
		i := 0
		for {
			// One element: pairs separated by ';', up to ',' or the end.
			var node string
			pairs, haveFor := 0, false
			for {
				i = skipOWS(s, i)
				if i == len(s) || s[i] == ',' {
					break
				}
				if s[i] == ';' {
					i++
					continue
				}
				j := skipToken(s, i)
				if j == i || j == len(s) || s[j] != '=' {
					return nil, false
				}
				name := s[i:j]
				var v string
				var ok bool
				if v, i, ok = forwardedValue(s, j+1); !ok {
					return nil, false
				}
				pairs++
				if strings.EqualFold(name, "for") {
					if haveFor { // RFC 7239: a parameter must not occur twice in an element
						return nil, false
					}
					node, haveFor = v, true
				}
				i = skipOWS(s, i)
				if i < len(s) && s[i] != ';' && s[i] != ',' {
					return nil, false
				}
			}
			if pairs > 0 {
				if haveFor && node == "" {
					return nil, false // for="" names nothing
				}
				nodes = append(nodes, node)
			}
			if i == len(s) {
				break
			}
			i++ // past ','
		}
	}
	return nodes, true
}

// forwardedValue reads a token or quoted string at s[i], unquoted, and the offset past it.
func forwardedValue(s string, i int) (string, int, bool) {
	if i < len(s) && s[i] == '"' {
		var b strings.Builder // only for a quoted pair, which no address holds
		start := i + 1
		for j := start; j < len(s); j++ {
			switch s[j] {
			case '"':
				if b.Len() == 0 {
					return s[start:j], j + 1, true
				}
				b.WriteString(s[start:j])
				return b.String(), j + 1, true
			case '\\':
				if j+1 == len(s) {
					return "", 0, false
				}
				b.WriteString(s[start:j])
				b.WriteByte(s[j+1])
				j++
				start = j + 1
			}
		}
		return "", 0, false // unterminated
	}
	j := skipToken(s, i)
	if j == i {
		return "", 0, false
	}
	return s[i:j], j, true
}

// parseNode parses a Forwarded node: an IPv4 address or bracketed IPv6 address with an optional
// port, "unknown", or an obfuscated "_identifier" (hidden). A bare IPv6 address, which RFC 7239
// does not allow but some proxies write, is accepted: it is unambiguous.
func parseNode(v string) (a netip.Addr, hidden, ok bool) {
	switch {
	case v == "":
		return netip.Addr{}, true, true // an element without for=
	case v[0] == '_' || strings.EqualFold(v, "unknown"):
		return netip.Addr{}, true, true
	case v[0] == '[':
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return netip.Addr{}, false, false
		}
		a, err := netip.ParseAddr(v[1:end])
		if err != nil || !a.Is6() || !validNodePort(v[end+1:]) {
			return netip.Addr{}, false, false
		}
		return cleanAddr(a), false, true
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return cleanAddr(a), false, true
	}
	host, port, found := strings.Cut(v, ":")
	a, err := netip.ParseAddr(host)
	if !found || err != nil || !a.Is4() || !validNodePort(":"+port) {
		return netip.Addr{}, false, false
	}
	return a, false, true
}

// validNodePort reports whether p is empty or ":" and a port number or an obfuscated port.
func validNodePort(p string) bool {
	if p == "" {
		return true
	}
	if len(p) < 2 || p[0] != ':' {
		return false
	}
	p = p[1:]
	if p[0] == '_' {
		for i := 1; i < len(p); i++ {
			if c := p[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
				return false
			}
		}
		return len(p) > 1
	}
	if len(p) > 5 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

// parseHostPort parses an address with or without a port ("192.0.2.1", "192.0.2.1:80",
// "2001:db8::1", "[2001:db8::1]:80").
func parseHostPort(s string) (netip.Addr, bool) {
	// Choose by shape rather than try one parser after the other: a failed parse allocates its
	// error, and most peers come with a port.
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		ap, err := netip.ParseAddrPort(s)
		return cleanAddr(ap.Addr()), err == nil
	}
	a, err := netip.ParseAddr(s)
	return cleanAddr(a), err == nil
}

// cleanAddr unmaps and drops the zone, so that one host has one form in logs and in matching.
func cleanAddr(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// skipToken returns the offset past the RFC 9110 token at s[i].
func skipToken(s string, i int) int {
	for i < len(s) && isTchar(s[i]) {
		i++
	}
	return i
}

func isTchar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
