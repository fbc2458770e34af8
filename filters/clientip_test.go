package filters_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
)

var cipTrusted = []string{"10.0.0.0/8", "2001:db8:cafe::/48", "192.0.2.10"}

// cipRequest builds a request from peer with the header lines given as "Name: value" pairs, in
// order, repeated names giving several lines.
func cipRequest(peer string, headers ...string) *http.Request {
	r := httptest.NewRequest("POST", "/hook", nil)
	r.RemoteAddr = peer
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		r.Header.Add(name, strings.TrimPrefix(value, " "))
	}
	return r
}

func TestClientIP(t *testing.T) {
	const (
		spoofed = "Forwarded: for=54.212.95.175" // a Fotor address, which an allowlist admits
		proxy   = "10.0.0.1:5555"
	)
	tests := []struct {
		name    string
		trusted []string // nil: cipTrusted
		header  string   // for NewClientIPHeader
		peer    string
		headers []string
		want    string // "" for the zero Addr
	}{
		// Spoofing: no trusted proxy, or an untrusted peer: every header is ignored.
		{name: "no proxies: XFF ignored", trusted: []string{}, peer: "203.0.113.5:4711", headers: []string{"X-Forwarded-For: 54.212.95.175"}, want: "203.0.113.5"},
		{name: "no proxies: Forwarded ignored", trusted: []string{}, peer: "203.0.113.5:4711", headers: []string{spoofed}, want: "203.0.113.5"},
		{name: "no proxies: X-Real-IP ignored", trusted: []string{}, peer: "203.0.113.5:4711", headers: []string{"X-Real-IP: 54.212.95.175"}, want: "203.0.113.5"},
		{name: "no proxies: peer is 10/8", trusted: []string{}, peer: "10.0.0.1:1", headers: []string{"X-Forwarded-For: 54.212.95.175"}, want: "10.0.0.1"},
		{name: "untrusted peer: headers ignored", peer: "203.0.113.5:4711", headers: []string{"X-Forwarded-For: 54.212.95.175", spoofed, "X-Real-IP: 54.212.95.175"}, want: "203.0.113.5"},
		{name: "untrusted IPv6 peer", peer: "[2001:db8:beef::1]:443", headers: []string{"X-Forwarded-For: 54.212.95.175"}, want: "2001:db8:beef::1"},
		{name: "no headers: the peer", peer: proxy, want: "10.0.0.1"},

		// X-Forwarded-For from a trusted peer.
		{name: "XFF one hop", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1"}, want: "198.51.100.1"},
		{name: "XFF spoofed left-most", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175, 198.51.100.1"}, want: "198.51.100.1"},
		{name: "XFF spoofed, two trusted hops", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175, 44.236.127.35, 198.51.100.1, 10.0.0.2, 192.0.2.10"}, want: "198.51.100.1"},
		{name: "XFF several lines", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175", "X-Forwarded-For: 198.51.100.1, 10.0.0.2"}, want: "198.51.100.1"},
		{name: "XFF lines in order", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1", "X-Forwarded-For: 10.0.0.3"}, want: "198.51.100.1"},
		{name: "XFF all trusted: left-most", peer: proxy, headers: []string{"X-Forwarded-For: 10.0.0.3,10.0.0.2"}, want: "10.0.0.3"},
		{name: "XFF ports", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1:4711, 10.0.0.2:80"}, want: "198.51.100.1"},
		{name: "XFF IPv6 bracketed with port", peer: proxy, headers: []string{"X-Forwarded-For: [2001:db8::1]:4711"}, want: "2001:db8::1"},
		{name: "XFF IPv6 bare", peer: proxy, headers: []string{"X-Forwarded-For: 2001:db8::1"}, want: "2001:db8::1"},
		{name: "XFF IPv6 trusted hop", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1, 2001:db8:cafe::7"}, want: "198.51.100.1"},
		{name: "XFF mapped", peer: proxy, headers: []string{"X-Forwarded-For: ::ffff:198.51.100.1"}, want: "198.51.100.1"},
		{name: "XFF mapped trusted hop", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1, ::ffff:10.0.0.2"}, want: "198.51.100.1"},
		{name: "XFF tabs and spaces", peer: proxy, headers: []string{"X-Forwarded-For: \t198.51.100.1 ,\t10.0.0.2 "}, want: "198.51.100.1"},
		{name: "XFF junk left of the client is not read", peer: proxy, headers: []string{"X-Forwarded-For: not-an-ip, 198.51.100.1"}, want: "198.51.100.1"},
		{name: "XFF malformed", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1, not-an-ip"}, want: "10.0.0.1"},
		{name: "XFF hostname", peer: proxy, headers: []string{"X-Forwarded-For: example.com"}, want: "10.0.0.1"},
		{name: "XFF empty entry", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1,,10.0.0.2"}, want: "10.0.0.1"},
		{name: "XFF empty", peer: proxy, headers: []string{"X-Forwarded-For: "}, want: "10.0.0.1"},
		{name: "XFF trailing comma", peer: proxy, headers: []string{"X-Forwarded-For: 198.51.100.1,"}, want: "10.0.0.1"},
		{name: "XFF zone dropped", peer: proxy, headers: []string{"X-Forwarded-For: fe80::1%eth0"}, want: "fe80::1"},
		{name: "XFF unknown hides what is left of it", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175, unknown, 10.0.0.2"}, want: "10.0.0.2"},
		{name: "XFF unknown right-most", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175, unknown"}, want: "10.0.0.1"},

		// Forwarded (RFC 7239), preferred over X-Forwarded-For.
		{name: "Forwarded", peer: proxy, headers: []string{"Forwarded: for=198.51.100.1"}, want: "198.51.100.1"},
		{name: "Forwarded RFC 7239 example", peer: proxy, headers: []string{"Forwarded: for=192.0.2.43, for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com"}, want: "198.51.100.17"},
		{name: "Forwarded quoted IPv6 with port", peer: proxy, headers: []string{`Forwarded: For="[2001:db8::1]:4711"`}, want: "2001:db8::1"},
		{name: "Forwarded quoted IPv6", peer: proxy, headers: []string{`Forwarded: for="[2001:db8::1]"`}, want: "2001:db8::1"},
		{name: "Forwarded IPv6 obfuscated port", peer: proxy, headers: []string{`Forwarded: for="[2001:db8::1]:_p0rt"`}, want: "2001:db8::1"},
		{name: "Forwarded quoted IPv4 with port", peer: proxy, headers: []string{`Forwarded: for="198.51.100.1:8080"`}, want: "198.51.100.1"},
		{name: "Forwarded bare IPv6 quoted", peer: proxy, headers: []string{`Forwarded: for="2001:db8::1"`}, want: "2001:db8::1"},
		{name: "Forwarded case and spaces", peer: proxy, headers: []string{"Forwarded: proto=https ; FOR=198.51.100.1 ,  for=10.0.0.2"}, want: "198.51.100.1"},
		{name: "Forwarded spoofed left-most", peer: proxy, headers: []string{"Forwarded: for=54.212.95.175, for=198.51.100.1, for=10.0.0.2"}, want: "198.51.100.1"},
		{name: "Forwarded several lines", peer: proxy, headers: []string{spoofed, "Forwarded: for=198.51.100.1", "Forwarded: for=10.0.0.2"}, want: "198.51.100.1"},
		{name: "Forwarded all trusted", peer: proxy, headers: []string{`Forwarded: for=10.0.0.3, for="[2001:db8:cafe::1]"`}, want: "10.0.0.3"},
		{name: "Forwarded quoted pair", peer: proxy, headers: []string{`Forwarded: for="198.51.100\.1";proto="h\"ttp,;"`}, want: "198.51.100.1"},
		{name: "Forwarded comma inside quotes", peer: proxy, headers: []string{`Forwarded: for=198.51.100.1;host="a,for=54.212.95.175"`}, want: "198.51.100.1"},
		{name: "Forwarded empty elements skipped", peer: proxy, headers: []string{"Forwarded: for=198.51.100.1, ,;, for=10.0.0.2,"}, want: "198.51.100.1"},
		{name: "Forwarded preferred over XFF", peer: proxy, headers: []string{"X-Forwarded-For: 203.0.113.9", "Forwarded: for=198.51.100.1"}, want: "198.51.100.1"},
		{name: "Forwarded obfuscated", peer: proxy, headers: []string{"Forwarded: for=_hidden"}, want: "10.0.0.1"},
		{name: "Forwarded quoted obfuscated", peer: proxy, headers: []string{`Forwarded: for="_hidden"`}, want: "10.0.0.1"},
		{name: "Forwarded unknown", peer: proxy, headers: []string{"Forwarded: for=unknown"}, want: "10.0.0.1"},
		{name: "Forwarded unknown hides what is left of it", peer: proxy, headers: []string{"Forwarded: for=54.212.95.175, for=unknown, for=10.0.0.2"}, want: "10.0.0.2"},
		{name: "Forwarded obfuscated hides what is left of it", peer: proxy, headers: []string{"Forwarded: for=54.212.95.175, for=_x"}, want: "10.0.0.1"},
		{name: "Forwarded element without for", peer: proxy, headers: []string{"Forwarded: for=54.212.95.175, proto=https"}, want: "10.0.0.1"},
		{name: "Forwarded unquoted IPv6", peer: proxy, headers: []string{"Forwarded: for=[2001:db8::1]"}, want: "10.0.0.1"},
		{name: "Forwarded unquoted port", peer: proxy, headers: []string{"Forwarded: for=198.51.100.1:80"}, want: "10.0.0.1"},
		{name: "Forwarded unterminated quote", peer: proxy, headers: []string{`Forwarded: for="198.51.100.1`}, want: "10.0.0.1"},
		{name: "Forwarded unclosed bracket", peer: proxy, headers: []string{`Forwarded: for="[2001:db8::1"`}, want: "10.0.0.1"},
		{name: "Forwarded IPv4 in brackets", peer: proxy, headers: []string{`Forwarded: for="[198.51.100.1]"`}, want: "10.0.0.1"},
		{name: "Forwarded bad port", peer: proxy, headers: []string{`Forwarded: for="198.51.100.1:http"`}, want: "10.0.0.1"},
		{name: "Forwarded for twice", peer: proxy, headers: []string{"Forwarded: for=198.51.100.1;for=198.51.100.2"}, want: "10.0.0.1"},
		{name: "Forwarded empty for", peer: proxy, headers: []string{`Forwarded: for=""`}, want: "10.0.0.1"},
		{name: "Forwarded no value", peer: proxy, headers: []string{"Forwarded: for="}, want: "10.0.0.1"},
		{name: "Forwarded hostname", peer: proxy, headers: []string{"Forwarded: for=example.com"}, want: "10.0.0.1"},
		{name: "Forwarded junk", peer: proxy, headers: []string{"Forwarded: garbage"}, want: "10.0.0.1"},
		{name: "Forwarded empty header", peer: proxy, headers: []string{"Forwarded: "}, want: "10.0.0.1"},
		{name: "Forwarded malformed: XFF not used instead", peer: proxy, headers: []string{"Forwarded: for=", "X-Forwarded-For: 198.51.100.1"}, want: "10.0.0.1"},

		// X-Real-IP, when neither of the others is there.
		{name: "X-Real-IP", peer: proxy, headers: []string{"X-Real-IP: 198.51.100.1"}, want: "198.51.100.1"},
		{name: "X-Real-IP with port", peer: proxy, headers: []string{"X-Real-IP: [2001:db8::1]:80"}, want: "2001:db8::1"},
		{name: "X-Real-IP trusted address", peer: proxy, headers: []string{"X-Real-IP: 10.0.0.9"}, want: "10.0.0.9"},
		{name: "X-Real-IP two lines", peer: proxy, headers: []string{"X-Real-IP: 198.51.100.1", "X-Real-IP: 198.51.100.2"}, want: "10.0.0.1"},
		{name: "X-Real-IP list", peer: proxy, headers: []string{"X-Real-IP: 198.51.100.1, 198.51.100.2"}, want: "10.0.0.1"},
		{name: "X-Real-IP junk", peer: proxy, headers: []string{"X-Real-IP: junk"}, want: "10.0.0.1"},
		{name: "XFF preferred over X-Real-IP", peer: proxy, headers: []string{"X-Real-IP: 203.0.113.9", "X-Forwarded-For: 198.51.100.1"}, want: "198.51.100.1"},

		// One header named: a sender's other headers, passed through by the proxy, are not read.
		{name: "XFF only: sender's Forwarded ignored", header: "x-forwarded-for", peer: proxy, headers: []string{spoofed, "X-Forwarded-For: 198.51.100.1"}, want: "198.51.100.1"},
		{name: "XFF only: absent", header: "X-Forwarded-For", peer: proxy, headers: []string{spoofed, "X-Real-IP: 54.212.95.175"}, want: "10.0.0.1"},
		{name: "Forwarded only", header: "forwarded", peer: proxy, headers: []string{"X-Forwarded-For: 54.212.95.175", "Forwarded: for=198.51.100.1"}, want: "198.51.100.1"},
		{name: "X-Real-IP only", header: "X-Real-IP", peer: proxy, headers: []string{spoofed, "X-Forwarded-For: 54.212.95.175", "X-Real-IP: 198.51.100.1"}, want: "198.51.100.1"},

		// The peer itself.
		{name: "peer mapped and trusted", peer: "[::ffff:10.0.0.1]:5555", headers: []string{"X-Forwarded-For: 198.51.100.1"}, want: "198.51.100.1"},
		{name: "peer IPv6 trusted", peer: "[2001:db8:cafe::1]:443", headers: []string{"Forwarded: for=198.51.100.1"}, want: "198.51.100.1"},
		{name: "peer mapped, untrusted", peer: "[::ffff:203.0.113.5]:5555", want: "203.0.113.5"},
		{name: "peer with zone", peer: "[fe80::1%eth0]:5555", want: "fe80::1"},
		{name: "peer without port", peer: "203.0.113.5", want: "203.0.113.5"},
		{name: "no peer address", peer: "@", headers: []string{"X-Forwarded-For: 54.212.95.175"}, want: ""},
		{name: "empty peer", peer: "", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trusted := tt.trusted
			if trusted == nil {
				trusted = cipTrusted
			}
			c, err := filters.NewClientIPHeader(trusted, tt.header)
			if err != nil {
				t.Fatal(err)
			}
			var want netip.Addr
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			r := cipRequest(tt.peer, tt.headers...)
			if got := c.ClientAddr(r); got != want {
				t.Errorf("ClientAddr = %v, want %v (peer %q, headers %q)", got, want, tt.peer, r.Header)
			}
		})
	}
}

func TestNewClientIPErrors(t *testing.T) {
	if _, err := filters.NewClientIPHeader([]string{"10.0.0.0/8", "proxy.internal"}, ""); err == nil || !strings.Contains(err.Error(), `trusted proxy "proxy.internal"`) {
		t.Errorf("bad proxy: %v", err)
	}
	if _, err := filters.NewClientIPHeader(nil, "X-Client-IP"); err == nil || !strings.Contains(err.Error(), "X-Client-IP") {
		t.Errorf("bad header: %v", err)
	}
	c, err := filters.NewClientIPHeader(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ClientAddr(cipRequest("10.0.0.1:1", "X-Real-IP: 198.51.100.1")); got != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("no proxies: %v", got)
	}
}

// The resolver feeds the allowlist: a forged header from an untrusted sender never gets it in.
func TestClientIPWithAllowlist(t *testing.T) {
	c, err := filters.NewClientIPHeader(cipTrusted, "")
	if err != nil {
		t.Fatal(err)
	}
	a := mustAllowlist(t, mustPreset(t, "fotor", nil).SourceAddrs()...)
	tests := []struct {
		peer    string
		headers []string
		admit   bool
	}{
		{"203.0.113.5:1", []string{"X-Forwarded-For: 54.212.95.175"}, false},
		{"10.0.0.1:1", []string{"X-Forwarded-For: 54.212.95.175, 203.0.113.5"}, false},
		{"10.0.0.1:1", []string{"X-Forwarded-For: 203.0.113.5, 54.212.95.175"}, true},
		{"10.0.0.1:1", []string{"X-Forwarded-For: 54.212.95.175, junk"}, false},
		{"54.212.95.175:1", []string{"X-Forwarded-For: 203.0.113.5"}, true}, // an untrusted peer's header is not read
	}
	for _, tt := range tests {
		r := cipRequest(tt.peer, tt.headers...)
		if err := a.Admit(r, c.ClientAddr(r)); (err == nil) != tt.admit {
			t.Errorf("peer %s %q: Admit = %v, want admitted %v", tt.peer, tt.headers, err, tt.admit)
		}
	}
}

func BenchmarkClientIP(b *testing.B) {
	c, err := filters.NewClientIPHeader(cipTrusted, "")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("X-Forwarded-For", func(b *testing.B) {
		r := cipRequest("10.0.0.1:5555", "X-Forwarded-For: 198.51.100.1, 10.0.0.3, 10.0.0.2")
		want := netip.MustParseAddr("198.51.100.1")
		b.ReportAllocs()
		for b.Loop() {
			if c.ClientAddr(r) != want {
				b.Fatal("wrong address")
			}
		}
	})
	b.Run("Forwarded", func(b *testing.B) {
		r := cipRequest("10.0.0.1:5555", `Forwarded: for="[2001:db8::1]:4711", for=10.0.0.3;proto=https, for=10.0.0.2`)
		want := netip.MustParseAddr("2001:db8::1")
		b.ReportAllocs()
		for b.Loop() {
			if c.ClientAddr(r) != want {
				b.Fatal("wrong address")
			}
		}
	})
	b.Run("untrusted-peer", func(b *testing.B) {
		r := cipRequest("203.0.113.5:5555", "X-Forwarded-For: 198.51.100.1, 10.0.0.3, 10.0.0.2")
		b.ReportAllocs()
		for b.Loop() {
			c.ClientAddr(r)
		}
	})
}

// Whatever the headers, the parser does not panic, and the answer is an address in the one form
// used for matching and rate-limit keys: unmapped, without a zone.
func FuzzClientIP(f *testing.F) {
	for _, s := range []string{
		"for=198.51.100.1", `for="[2001:db8::1]:4711", for=10.0.0.2`, `for="\"`, "for=_x;by=y,",
		"198.51.100.1, 10.0.0.2", "[2001:db8::1]:80", "unknown", ",,", `for="[::ffff:1.2.3.4]:_a"`,
	} {
		f.Add(s)
	}
	c, err := filters.NewClientIPHeader(cipTrusted, "")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, name := range []string{"Forwarded", "X-Forwarded-For", "X-Real-IP"} {
			r := httptest.NewRequest("POST", "/hook", nil)
			r.RemoteAddr = "10.0.0.1:5555"
			r.Header.Set(name, v)
			got := c.ClientAddr(r)
			if !got.IsValid() || got.Is4In6() || got.Zone() != "" {
				t.Fatalf("%s: %q gave %v", name, v, got)
			}
		}
	})
}
