package filters_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// BenchmarkFilterChain runs what ingress runs for one accepted webhook before the store: client
// address behind a trusted proxy, a 1,000-entry allowlist, per-address and route rate limits, an
// HMAC signature over the body, and the preset's job-ID extraction.
//
//	go test -run '^$' -bench FilterChain -benchmem ./filters/
func BenchmarkFilterChain(b *testing.B) {
	body, err := os.ReadFile("testdata/fal_ok.json")
	if err != nil {
		b.Fatal(err)
	}
	clients, _ := filters.NewClientIPHeader([]string{"10.0.0.0/8"}, "")
	entries := []string{"203.0.113.7"}
	for i := range 999 {
		entries = append(entries, "198.18."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256))
	}
	allow, _ := filters.NewAllowlist(entries)
	limit, _ := filters.NewRateLimiter(filters.RateConfig{PerIP: 1e9, PerIPBurst: 1e9, Route: 1e9, RouteBurst: 1e9})
	const secret = "chain-benchmark-secret"
	verify, _ := filters.NewHMAC(filters.HMACConfig{Header: "X-Signature", Prefix: "sha256="}, []string{secret}, nil)
	preset, _ := filters.NewPreset("fal", nil)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	sig := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	guards := []relay.Guard{allow, limit}

	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest("POST", "/hooks/fal", strings.NewReader(""))
		r.RemoteAddr = "10.1.2.3:4567"
		r.Header.Set("X-Forwarded-For", "203.0.113.7, 10.0.0.9")
		r.Header.Set("X-Signature", sig)
		for pb.Next() {
			client := clients.ClientAddr(r)
			for _, g := range guards {
				if err := g.Admit(r, client); err != nil {
					b.Fatal(err)
				}
			}
			if err := verify.Verify(r, body); err != nil {
				b.Fatal(err)
			}
			if job, err := preset.Extract(body); err != nil || job.ID == "" {
				b.Fatal(job, err)
			}
		}
	})
}
