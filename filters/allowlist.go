package filters

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/hookrelay/hookrelay/relay"
)

// Allowlist admits only senders whose address is in a set of CIDR prefixes and single addresses,
// IPv4 and IPv6. It is not changed after NewAllowlist, so one value serves concurrent requests.
//
// IPv4-mapped IPv6 addresses (::ffff:192.0.2.1) are IPv4 here, in entries and in addresses, since
// a dual-stack listener reports IPv4 peers that way. An IPv6 prefix does not match IPv4 addresses:
// ::/0 is all of IPv6, 0.0.0.0/0 all of IPv4. Zones (fe80::1%eth0) are ignored when matching.
type Allowlist struct {
	set prefixSet
}

var _ relay.Guard = (*Allowlist)(nil)

// NewAllowlist parses entries: CIDR prefixes ("192.0.2.0/24", "2001:db8::/32") and single
// addresses ("192.0.2.1", "2001:db8::1"). A prefix with host bits set ("192.0.2.1/24") is refused
// as the likely typo it is, as is an empty list, which would refuse everyone. Errors name the
// entry.
func NewAllowlist(entries []string) (*Allowlist, error) {
	if len(entries) == 0 {
		return nil, errors.New("allowlist has no entries")
	}
	set, err := newPrefixSet(entries, "allowlist entry")
	if err != nil {
		return nil, err
	}
	return &Allowlist{set: set}, nil
}

// ReadAllowlistFile reads allowlist entries from a file: one a line, with blank lines and
// comments (from # to the end of the line) ignored. Each entry is checked as NewAllowlist would,
// and errors say file:line. A file without entries is an error too: a list emptied by mistake
// must not pass for one that protects the route.
func ReadAllowlistFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var entries []string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s, _, _ := strings.Cut(sc.Text(), "#")
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, err := parseEntry(s, "allowlist entry"); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		entries = append(entries, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%s: no allowlist entries", path)
	}
	return entries, nil
}

// Contains reports whether addr is in the list.
func (a *Allowlist) Contains(addr netip.Addr) bool { return a.set.contains(addr) }

// Admit admits client if it is in the list, and otherwise refuses it with relay.Forbidden.
func (a *Allowlist) Admit(_ *http.Request, client netip.Addr) error {
	if !client.IsValid() {
		// No peer address (not a TCP connection): nothing to match, so nothing is allowed.
		return relay.Forbidden(errors.New("no source address to match against the allowlist"))
	}
	if a.set.contains(client) {
		return nil
	}
	return relay.Forbidden(notAllowedError{client})
}

// notAllowedError formats only when logged, keeping a flood of refusals cheap.
type notAllowedError struct{ addr netip.Addr }

func (e notAllowedError) Error() string {
	return "source address " + e.addr.String() + " is not in the allowlist"
}

// prefixSet matches addresses against a set of prefixes in O(log n) without allocating: each
// prefix is an inclusive range of integers; the ranges are sorted and merged, so at most one can
// hold an address, found by binary search (docs/BENCHMARKS.md).
type prefixSet struct {
	v4 []span4
	v6 []span6
}

type span4 struct{ lo, hi uint32 }
type span6 struct{ lo, hi u128 }

// u128 is an IPv6 address as a number, for ordering.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

var max128 = u128{^uint64(0), ^uint64(0)}

func newPrefixSet(entries []string, what string) (prefixSet, error) {
	var s prefixSet
	for _, e := range entries {
		p, err := parseEntry(e, what)
		if err != nil {
			return prefixSet{}, err
		}
		a := p.Addr()
		if a.Is4() {
			b := a.As4()
			lo := binary.BigEndian.Uint32(b[:])
			hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
			s.v4 = append(s.v4, span4{lo, hi})
			continue
		}
		lo := addr128(a)
		hi := lo
		if host := 128 - p.Bits(); host >= 64 {
			hi.lo = ^uint64(0)
			hi.hi |= uint64(1)<<(host-64) - 1
		} else {
			hi.lo |= uint64(1)<<host - 1
		}
		s.v6 = append(s.v6, span6{lo, hi})
	}
	s.v4 = merge4(s.v4)
	s.v6 = merge6(s.v6)
	return s, nil
}

// merge4 sorts spans and joins those that overlap or touch, so that they are disjoint.
func merge4(s []span4) []span4 {
	slices.SortFunc(s, func(a, b span4) int { return cmp.Compare(a.lo, b.lo) })
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.hi == ^uint32(0) || x.lo <= last.hi+1 { // no overflow: last.hi is not the top
				last.hi = max(last.hi, x.hi)
				continue
			}
		}
		out = append(out, x)
	}
	return slices.Clip(out)
}

func merge6(s []span6) []span6 {
	slices.SortFunc(s, func(a, b span6) int {
		if c := cmp.Compare(a.lo.hi, b.lo.hi); c != 0 {
			return c
		}
		return cmp.Compare(a.lo.lo, b.lo.lo)
	})
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.hi == max128 || !last.hi.next().less(x.lo) {
				if last.hi.less(x.hi) {
					last.hi = x.hi
				}
				continue
			}
		}
		out = append(out, x)
	}
	return slices.Clip(out)
}

// next returns a+1; a must not be max128.
func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func (s *prefixSet) contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:])
		// Find the first span starting after v; only the one before it can hold v.
		i, j := 0, len(s.v4)
		for i < j {
			m := int(uint(i+j) >> 1)
			if v < s.v4[m].lo {
				j = m
			} else {
				i = m + 1
			}
		}
		return i > 0 && v <= s.v4[i-1].hi
	}
	if a.Is6() {
		v := addr128(a)
		i, j := 0, len(s.v6)
		for i < j {
			m := int(uint(i+j) >> 1)
			if v.less(s.v6[m].lo) {
				j = m
			} else {
				i = m + 1
			}
		}
		return i > 0 && !s.v6[i-1].hi.less(v)
	}
	return false // the zero Addr
}

func addr128(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// parseEntry parses a prefix or a single address into a prefix, IPv4-mapped ones as IPv4. what
// names the list in errors ("allowlist entry", "trusted proxy").
func parseEntry(s, what string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty %s", what)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%s %q is not a valid CIDR prefix", what, s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%s %q has host bits set: the network is %s", what, s, p.Masked())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s %q is not an IP address or CIDR prefix", what, s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s %q has a zone, which is not supported", what, s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
