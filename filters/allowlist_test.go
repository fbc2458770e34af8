package filters_test

import (
	"errors"
	"math/rand/v2"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

func mustAllowlist(t testing.TB, entries ...string) *filters.Allowlist {
	t.Helper()
	a, err := filters.NewAllowlist(entries)
	if err != nil {
		t.Fatalf("NewAllowlist(%q): %v", entries, err)
	}
	return a
}

func TestAllowlistAdmit(t *testing.T) {
	a := mustAllowlist(t,
		"192.0.2.0/24",
		"198.51.100.7",
		"10.0.0.0/8",
		"2001:db8::/32",
		"2001:db8:ffff::1", // inside the /32 already: merged
		"::ffff:203.0.113.0/120",
		"::ffff:100.64.0.1",
		"fd00::/127",
	)
	tests := []struct {
		addr string
		want bool
	}{
		{"192.0.2.0", true},
		{"192.0.2.255", true},
		{"192.0.1.255", false},
		{"192.0.3.0", false},
		{"198.51.100.7", true},
		{"198.51.100.6", false},
		{"198.51.100.8", false},
		{"10.0.0.0", true},
		{"10.255.255.255", true},
		{"9.255.255.255", false},
		{"11.0.0.0", false},
		{"::ffff:192.0.2.9", true},     // mapped address, IPv4 entry
		{"::ffff:198.51.100.8", false}, // mapped address, not listed
		{"203.0.113.200", true},        // IPv4 address, mapped entry
		{"::ffff:203.0.113.1", true},
		{"203.0.114.0", false},
		{"100.64.0.1", true},
		{"100.64.0.2", false},
		{"2001:db8::", true},
		{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{"2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"2001:db9::", false},
		{"2001:db8::1%eth0", true}, // zones are ignored
		{"fd00::", true},
		{"fd00::1", true},
		{"fd00::2", false},
		{"::", false},
		{"::1", false},
		{"0.0.0.0", false},
		{"255.255.255.255", false},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"::c000:209", false}, // 192.0.2.9 as an IPv4-compatible (not mapped) address: IPv6
	}
	r := httptest.NewRequest("POST", "/hook", nil)
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			addr := netip.MustParseAddr(tt.addr)
			err := a.Admit(r, addr)
			if got := err == nil; got != tt.want {
				t.Fatalf("Admit(%s) = %v, want admitted %v", addr, err, tt.want)
			}
			if a.Contains(addr) != tt.want {
				t.Errorf("Contains(%s) = %v", addr, !tt.want)
			}
			if err != nil {
				var e *relay.Error
				if !errors.As(err, &e) || e.Kind != relay.KindForbidden {
					t.Fatalf("error %v is not relay.Forbidden", err)
				}
				if !strings.Contains(e.Err.Error(), addr.String()) {
					t.Errorf("cause %q does not name %s", e.Err, addr)
				}
			}
		})
	}
	if err := a.Admit(r, netip.Addr{}); relay.KindOf(err) != relay.KindForbidden {
		t.Errorf("Admit(no address) = %v, want forbidden", err)
	}
}

// The ends of the address spaces, where a range's end plus one overflows.
func TestAllowlistEdges(t *testing.T) {
	tests := []struct {
		entries []string
		in, out []string
	}{
		{[]string{"0.0.0.0/0"}, []string{"0.0.0.0", "255.255.255.255", "::ffff:1.2.3.4"}, []string{"::", "2001:db8::1"}},
		{[]string{"::/0"}, []string{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1"}, []string{"1.2.3.4", "::ffff:1.2.3.4"}},
		{[]string{"255.255.255.255", "0.0.0.0/1", "128.0.0.0/1"}, []string{"0.0.0.0", "127.255.255.255", "128.0.0.0", "255.255.255.255"}, nil},
		{[]string{"255.255.255.255/32", "255.255.255.254"}, []string{"255.255.255.255", "255.255.255.254"}, []string{"255.255.255.253", "0.0.0.0"}},
		{[]string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"}, []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"}, []string{"::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"}},
		{[]string{"8000::/1", "::/1"}, []string{"7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::"}, nil},
		{[]string{"2001:db8::/64", "2001:db8:0:1::/64"}, []string{"2001:db8::ffff:ffff:ffff:ffff", "2001:db8:0:1::"}, []string{"2001:db8:0:2::", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"}},
		{[]string{"10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/8", "10.1.0.0/16"}, []string{"10.0.0.127", "10.0.0.128", "10.200.0.0"}, []string{"11.0.0.0"}},
	}
	for _, tt := range tests {
		a := mustAllowlist(t, tt.entries...)
		for _, s := range tt.in {
			if !a.Contains(netip.MustParseAddr(s)) {
				t.Errorf("%q: %s not contained", tt.entries, s)
			}
		}
		for _, s := range tt.out {
			if a.Contains(netip.MustParseAddr(s)) {
				t.Errorf("%q: %s contained", tt.entries, s)
			}
		}
	}
}

// The sorted, merged ranges against netip.Prefix.Contains over random lists, probing at and just
// beside every prefix's ends, where an off-by-one would show.
func TestAllowlistMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 50; round++ {
		var prefixes []netip.Prefix
		var entries []string
		for i := 0; i < 1+rng.IntN(200); i++ {
			p := randomPrefix(rng)
			prefixes = append(prefixes, p)
			entries = append(entries, p.String())
		}
		a := mustAllowlist(t, entries...)
		var probes []netip.Addr
		for _, p := range prefixes {
			first, last := p.Addr(), lastAddr(p)
			probes = append(probes, first, last, first.Prev(), last.Next())
		}
		for i := 0; i < 200; i++ {
			probes = append(probes, randomPrefix(rng).Addr())
		}
		for _, addr := range probes {
			if !addr.IsValid() {
				continue
			}
			want := false
			for _, p := range prefixes {
				want = want || p.Contains(addr)
			}
			if got := a.Contains(addr); got != want {
				t.Fatalf("round %d: Contains(%s) = %v, want %v; list %q", round, addr, got, want, entries)
			}
		}
	}
}

// randomPrefix returns a random IPv4 or IPv6 prefix, short ones rarely, so that lists overlap and
// touch without covering everything.
func randomPrefix(rng *rand.Rand) netip.Prefix {
	if rng.IntN(2) == 0 {
		var b [4]byte
		for i := range b {
			b[i] = byte(rng.IntN(4)) // a small space, so that prefixes meet
		}
		return netip.PrefixFrom(netip.AddrFrom4(b), 20+rng.IntN(13)).Masked()
	}
	var b [16]byte
	b[0], b[1] = 0x20, 0x01
	for i := 14; i < 16; i++ {
		b[i] = byte(rng.IntN(4))
	}
	b[7] = byte(rng.IntN(2))
	return netip.PrefixFrom(netip.AddrFrom16(b), 50+rng.IntN(79)).Masked()
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestAllowlistBadEntries(t *testing.T) {
	tests := []struct {
		entries []string
		want    string // in the error
	}{
		{nil, "no entries"},
		{[]string{"10.0.0.0/8", ""}, "empty"},
		{[]string{"  "}, "empty"},
		{[]string{"10.0.0.1/8"}, `"10.0.0.1/8" has host bits set: the network is 10.0.0.0/8`},
		{[]string{"10.0.0.0/33"}, `"10.0.0.0/33"`},
		{[]string{"2001:db8::/129"}, `"2001:db8::/129"`},
		{[]string{"192.0.2.1", "example.com"}, `"example.com" is not an IP address`},
		{[]string{"1.2.3"}, `"1.2.3"`},
		{[]string{"fe80::1%eth0"}, `"fe80::1%eth0" has a zone`},
		{[]string{"10.0.0.0/8/8"}, `"10.0.0.0/8/8"`},
		{[]string{"10.0.0.0/-1"}, `"10.0.0.0/-1"`},
	}
	for _, tt := range tests {
		_, err := filters.NewAllowlist(tt.entries)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewAllowlist(%q) = %v, want an error containing %q", tt.entries, err, tt.want)
		}
	}
}

func TestReadAllowlistFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.txt")
	content := "# Fotor\n54.212.95.175\n\n  44.236.127.35   # second\r\n\t# indented comment\n2001:db8::/32\n#10.0.0.0/8\n"
	if err := os.WriteFile(good, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	entries, err := filters.ReadAllowlistFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"54.212.95.175", "44.236.127.35", "2001:db8::/32"}
	if strings.Join(entries, " ") != strings.Join(want, " ") {
		t.Fatalf("entries %q, want %q", entries, want)
	}
	a := mustAllowlist(t, entries...)
	if !a.Contains(netip.MustParseAddr("44.236.127.35")) || a.Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Error("the file's list does not match as written")
	}

	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("# list\n192.0.2.1\n192.0.2.300 # typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = filters.ReadAllowlistFile(bad)
	if err == nil || !strings.Contains(err.Error(), bad+":3:") || !strings.Contains(err.Error(), `"192.0.2.300"`) {
		t.Errorf("bad file: %v, want file:3 and the entry", err)
	}

	empty := filepath.Join(dir, "empty.txt")
	if err := os.WriteFile(empty, []byte("# 192.0.2.1\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := filters.ReadAllowlistFile(empty); err == nil || !strings.Contains(err.Error(), empty+": no allowlist entries") {
		t.Errorf("file without entries: %v", err)
	}

	if _, err := filters.ReadAllowlistFile(filepath.Join(dir, "missing.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func BenchmarkAllowlist(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	var entries []string
	for len(entries) < 1000 {
		var b4 [4]byte
		for i := range b4 {
			b4[i] = byte(rng.Uint32())
		}
		if rng.IntN(2) == 0 {
			entries = append(entries, netip.AddrFrom4(b4).String())
		} else {
			entries = append(entries, netip.PrefixFrom(netip.AddrFrom4(b4), 16+rng.IntN(17)).Masked().String())
		}
	}
	a := mustAllowlist(b, entries...)
	probes := make([]netip.Addr, 1024)
	for i := range probes {
		var b4 [4]byte
		for k := range b4 {
			b4[k] = byte(rng.Uint32())
		}
		probes[i] = netip.AddrFrom4(b4)
	}
	r := httptest.NewRequest("POST", "/hook", nil)
	// Random probes mostly miss, the dearer case: the refusal allocates its error.
	b.Run("random", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = a.Admit(r, probes[i&1023])
			i++
		}
	})
	// For scale: what the sorted ranges save over trying each prefix in turn.
	b.Run("linear-scan-reference", func(b *testing.B) {
		prefixes := make([]netip.Prefix, len(entries))
		for i, e := range entries {
			if !strings.Contains(e, "/") {
				e += "/32"
			}
			prefixes[i] = netip.MustParsePrefix(e)
		}
		i, n := 0, 0
		for b.Loop() {
			for _, p := range prefixes {
				if p.Contains(probes[i&1023]) {
					n++
					break
				}
			}
			i++
		}
	})
	b.Run("hit", func(b *testing.B) {
		e := entries[501]
		if !strings.Contains(e, "/") {
			e += "/32"
		}
		hit := netip.MustParsePrefix(e).Addr()
		b.ReportAllocs()
		for b.Loop() {
			if a.Admit(r, hit) != nil {
				b.Fatal("refused")
			}
		}
	})
}
