package relay

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// The admin API answers a Host only when it names localhost, a configured name or the address the
// connection arrived on, whatever port, case or trailing dot it carries.
func FuzzAdminHost(f *testing.F) {
	for _, h := range []string{"localhost:9090", "LOCALHOST.", "127.0.0.1:9090", "[::1]:9090", "127.0.0.2",
		"relay-admin.internal", "evil.example", "localhost.evil.example", "", ":9090", "[127.0.0.1]", "127.0.0.1%eth0",
		"xn--80ak6aa92e.com", "0x7f.0.0.1", "2130706433", "[::ffff:127.0.0.1]:1"} {
		f.Add(h)
	}
	a := &adminAPI{hosts: map[string]bool{"localhost": true, "relay-admin.internal": true}}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}
	f.Fuzz(func(t *testing.T, host string) {
		req := httptest.NewRequest(http.MethodGet, "/healthz", nil)
		req.Host = host
		req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, net.Addr(local)))
		got := a.hostAllowed(req)

		name := host
		if h, _, err := net.SplitHostPort(host); err == nil {
			name = h
		}
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]"))
		want := name == "localhost" || name == "relay-admin.internal" ||
			(err == nil && ip.Unmap().WithZone("") == netip.MustParseAddr("127.0.0.1"))
		if got != want {
			t.Fatalf("Host %q: allowed %v, want %v", host, got, want)
		}
	})
}
