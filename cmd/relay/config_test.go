package main

import (
	"context"
	"io"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

const minimal = `
targets:
  - name: app
    url: http://127.0.0.1:9000/hooks
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`

func TestExampleConfigIsValid(t *testing.T) {
	t.Setenv("HOOKRELAY_DEMO_TOKEN", "demo-token-0123456789abcdef") // as the README's command sets it
	t.Setenv("HOOKRELAY_DEMO_ABSTRAKT_TOKEN", "0123456789abcdef0123456789abcdef")
	t.Setenv("HOOKRELAY_DEMO_HMAC_KEY", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	c, _, err := loadConfig("../../config.example.yaml", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Validate(c.relayConfig()); err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) != 5 || c.Routes[2].AckStatus != 200 || c.Routes[0].AckStatus != 202 {
		t.Fatalf("routes %+v", c.Routes)
	}
}

func TestDefaults(t *testing.T) {
	c, _, err := parseConfig([]byte(minimal), "test.yaml", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tg, rt := c.Targets[0], c.Routes[0]
	for name, ok := range map[string]bool{
		"listen":          c.Listen == defaultListen,
		"store":           c.Store.Type == "embedded" && c.Store.Path == filepath.Join("data", "relay.db"),
		"timeout":         tg.Timeout == 30*time.Second,
		"concurrency":     tg.Concurrency == 8,
		"retry":           tg.Retry.Initial == time.Second && tg.Retry.Multiplier == 2 && tg.Retry.Max == 10*time.Minute && tg.Retry.MaxAttempts == 20,
		"max_body":        rt.MaxBody == 1<<20,
		"dedupe_ttl":      rt.DedupeTTL == 72*time.Hour,
		"ack_status":      rt.AckStatus == 202,
		"delivery.lease":  c.Delivery.Lease == 2*time.Minute,
		"log.format json": c.Log.Format == "json",
		"history":         *c.History.Retention == 72*time.Hour,
	} {
		if !ok {
			t.Errorf("default %s not applied: %+v", name, c)
		}
	}
}

// history.retention: unset is the default, 0 turns history off and stays 0.
func TestHistoryRetention(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want time.Duration
	}{{"", 72 * time.Hour}, {"history: {retention: 0s}\n", 0}, {"history: {retention: 24h}\n", 24 * time.Hour}} {
		c, _, err := parseConfig([]byte(tc.yaml+minimal), "test.yaml", io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := *c.History.Retention; got != tc.want {
			t.Errorf("%q: retention %v, want %v", tc.yaml, got, tc.want)
		}
	}
}

func TestSigningSecretFromEnvAndFile(t *testing.T) {
	t.Setenv("HOOKRELAY_TEST_SECRET", "whsec_aGVsbG8=")
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("whsec_d29ybGQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, value, want string
	}{
		{"signing_secret_env", "HOOKRELAY_TEST_SECRET", "hello"},
		{"signing_secret_file", file, "world"},
	} {
		y := strings.Replace(minimal, "url: http://127.0.0.1:9000/hooks", "url: http://127.0.0.1:9000/hooks\n    "+tc.key+": "+tc.value, 1)
		c, _, err := parseConfig([]byte(y), "test.yaml", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		targets, err := c.relayConfig().Targets, error(nil)
		if err != nil || string(targets[0].SigningKey) != tc.want {
			t.Fatalf("%s: key %q, %v; want %q", tc.key, targets[0].SigningKey, err, tc.want)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]byteSize{"1MiB": 1 << 20, "512KiB": 512 << 10, "64KB": 64000, "100": 100, "2 MiB": 2 << 20, "7B": 7} {
		var got byteSize
		if err := got.parseScalar(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "1TiB", "99999999999GiB"} {
		var b byteSize
		if err := b.parseScalar(in); err == nil {
			t.Errorf("parseByteSize(%q) accepted", in)
		}
	}
}

// routeYAML is a config with one route whose extra keys are given.
func routeYAML(provider, extra string) string {
	return `
targets:
  - name: app
    url: http://127.0.0.1:9000/hooks
routes:
  - name: r
    path: /hooks/r
    provider: ` + provider + `
    targets: [app]
` + extra
}

func TestRouteChecksConfig(t *testing.T) {
	t.Setenv("HOOKRELAY_TEST_TOKEN", "0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name     string
		yaml     string
		wantErr  []string
		posture  string
		guards   int
		verifier bool
	}{
		{name: "open route refused", yaml: routeYAML("fashn", ""),
			wantErr: []string{"routes[0]: accepts webhooks from anyone", "insecure: true"}},
		{name: "insecure accepted", yaml: routeYAML("fashn", "    insecure: true\n"), posture: "INSECURE"},
		{name: "fotor gets its source addresses", yaml: routeYAML("fotor", ""), posture: "allowlist of 2", guards: 1},
		{name: "fal gets its signature", yaml: routeYAML("fal", ""), posture: "verify fal (keys from https://rest.fal.ai/.well-known/jwks.json)", verifier: true},
		{name: "url token in the path", yaml: routeYAML("fashn", "    verify: {type: url_token, secrets_env: [HOOKRELAY_TEST_TOKEN]}\n"),
			posture: "/hooks/r/<token>", verifier: true},
		{name: "global allowlist is the default", yaml: "allowlist: [10.0.0.0/8]\n" + routeYAML("abstrakt", ""), posture: "allowlist of 1", guards: 1},
		{name: "rate limit", yaml: routeYAML("fashn", "    insecure: true\n    rate_limit: {per_ip: 5, per_ip_burst: 10, route: 100, route_burst: 100}\n"),
			posture: "rate limit 5/s per address", guards: 1},
		{name: "secret env unset", yaml: routeYAML("fashn", "    verify: {type: github, secrets_env: [HOOKRELAY_TEST_UNSET]}\n"),
			wantErr: []string{"routes[0].verify.secrets_env[0]: environment variable HOOKRELAY_TEST_UNSET is not set"}},
		{name: "no secrets", yaml: routeYAML("fashn", "    verify: {type: stripe}\n"),
			wantErr: []string{"routes[0].verify: type stripe needs secrets_env or secrets_files"}},
		{name: "unknown scheme", yaml: routeYAML("fashn", "    verify: {type: md5, secrets_env: [HOOKRELAY_TEST_TOKEN]}\n"),
			wantErr: []string{`routes[0].verify.type: "md5" is not a verify type; use one of standard_webhooks,`}},
		{name: "bad allowlist entry", yaml: routeYAML("fashn", "    allowlist: [300.1.1.1]\n"),
			wantErr: []string{"routes[0].allowlist[0]:", "300.1.1.1"}},
		{name: "bad client ip header", yaml: "client_ip_header: X-Client\n" + routeYAML("fashn", "    insecure: true\n"),
			wantErr: []string{"client_ip_header:", "X-Client"}},
		{name: "empty allowlist file", yaml: routeYAML("fashn", "    allowlist_files: [/dev/null]\n"),
			wantErr: []string{"routes[0].allowlist_files[0]:"}},
		{name: "bad trusted proxy", yaml: "trusted_proxies: [nonsense]\n" + routeYAML("fashn", "    insecure: true\n"),
			wantErr: []string{"trusted_proxies:", "nonsense"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := parseConfig([]byte(tc.yaml), "test.yaml", io.Discard)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := c.Routes[0]
			if !strings.Contains(r.posture(), tc.posture) {
				t.Errorf("posture %q lacks %q", r.posture(), tc.posture)
			}
			routes, err := c.relayConfig().Routes, error(nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(routes[0].Guards) != tc.guards || (routes[0].Verifier != nil) != tc.verifier {
				t.Errorf("guards %d verifier %v; want %d, %v", len(routes[0].Guards), routes[0].Verifier != nil, tc.guards, tc.verifier)
			}
		})
	}
}

func TestRedisStoreConfig(t *testing.T) {
	t.Setenv("HOOKRELAY_TEST_REDIS_PW", "s3cret-pw")
	base := routeYAML("fashn", "    insecure: true\n")
	for _, tc := range []struct {
		name    string
		store   string
		wantErr []string
	}{
		{"url", "store: {type: redis, redis: {url: redis://127.0.0.1:6379/2}}", nil},
		{"sentinel", "store: {type: redis, redis: {addrs: [127.0.0.1:26379, 127.0.0.1:26380], master_name: mymaster, password_env: HOOKRELAY_TEST_REDIS_PW}}", nil},
		{"password in url", "store: {type: redis, redis: {url: 'redis://:pw@127.0.0.1:6379/0'}}", []string{"store.redis.url: holds a password; move it to password_env"}},
		{"redis without settings", "store: {type: redis}", []string{"store.redis: store.type is redis"}},
		{"url and addrs", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, addrs: [127.0.0.1:6379]}}", []string{"store.redis: set url or addrs, not both"}},
		{"bad addr", "store: {type: redis, redis: {addrs: [localhost]}}", []string{"store.redis.addrs[0]:"}},
		{"password env unset", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, password_env: HOOKRELAY_TEST_UNSET}}", []string{"store.redis.password_env:", "not set"}},
		{"braces in prefix", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, prefix: '{x}'}}", []string{"store.redis.prefix:"}},
		{"redis settings with embedded", "store: {type: embedded, redis: {url: redis://127.0.0.1:6379}}", []string{"store.redis: set, but store.type is embedded"}},
		{"negative shards", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, shards: -1}}", []string{"store.redis.shards: must be within 1..1024, got -1"}},
		{"too many shards", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, shards: 2000}}", []string{"store.redis.shards: must be within 1..1024, got 2000"}},
		{"negative min_replicas", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, min_replicas: -1}}", []string{"store.redis.min_replicas: must be 0"}},
		{"replica_timeout beyond read_timeout", "store: {type: redis, redis: {url: redis://127.0.0.1:6379, min_replicas: 1, replica_timeout: 1500ms}}",
			[]string{"store.redis.replica_timeout: must be above 0 and at most half of read_timeout (2s), got 1.5s"}},
		{"unknown type", "store: {type: etcd}", []string{`store.type: "etcd" is not embedded or redis`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := parseConfig([]byte(tc.store+"\n"+base), "test.yaml", io.Discard)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if c.redis == nil || c.Store.Redis.Prefix != "hookrelay" {
					t.Fatalf("no client or default prefix: %+v", c.Store.Redis)
				}
				c.redis.Close()
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
	_, _, err := parseConfig([]byte(routeYAML("fashn", "    insecure: true\n    rate_limit: {per_ip: 1, shared: true}\n")), "test.yaml", io.Discard)
	if err == nil || !strings.Contains(err.Error(), "routes[0].rate_limit: shared: true keeps the limit in Redis") {
		t.Fatalf("shared rate limit on the embedded store: %v", err)
	}
}

// Two replicas built from one config share a route's rate limit through Redis, and the relay's
// readiness follows Redis' health.
func TestSharedRateLimitAndReadinessOnRedis(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{AOF: true})
	yaml := "store: {type: redis, redis: {url: 'redis://" + rs.Addr + "/0', dial_timeout: 200ms, read_timeout: 200ms}}\n" +
		routeYAML("fashn", "    insecure: true\n    rate_limit: {per_ip: 0.001, per_ip_burst: 3, shared: true}\n")
	var admitted int
	for replica := range 2 {
		c, log, err := parseConfig([]byte(yaml), "test.yaml", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		rc := c.relayConfig()
		routes, targets, err := rc.Routes, rc.Targets, error(nil)
		if err != nil {
			t.Fatal(err)
		}
		store, err := openStore(c, log)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		for range 3 {
			req := httptest.NewRequest("POST", "/hooks/r", nil)
			if routes[0].Guards[0].Admit(req, netip.MustParseAddr("203.0.113.9")) == nil {
				admitted++
			}
		}
		if replica == 1 {
			r, err := relay.New(relay.Config{Routes: routes, Targets: targets, Store: store})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := r.Ready(ctx); err != nil {
				t.Fatalf("not ready with Redis up: %v", err)
			}
			rs.Kill()
			if err := r.Ready(ctx); err == nil {
				t.Fatal("ready with Redis down")
			}
			rs.Restart()
			waitUntil(t, "ready again after Redis restarted", func() bool { return r.Ready(ctx) == nil })
		}
	}
	if admitted != 3 {
		t.Fatalf("two replicas admitted %d requests from one address, want the shared burst of 3", admitted)
	}
}

func TestAdminConfig(t *testing.T) {
	t.Setenv("HOOKRELAY_TEST_ADMIN", "admin-token-0123456789abcdef")
	t.Setenv("HOOKRELAY_TEST_SHORT", "short")
	shortFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, shortFile, "short6\n")
	base := routeYAML("fashn", "    insecure: true\n")
	for _, tc := range []struct {
		admin, wantErr string
	}{
		{"", ""},
		{"admin: {listen: off}", ""},
		{"admin: {listen: '[::1]:9090'}", ""},
		{"admin: {listen: '0.0.0.0:9090'}", "admin.listen: 0.0.0.0:9090 is not a loopback address: set admin.token_env or admin.token_file"},
		{"admin: {listen: '0.0.0.0:9090', token_env: HOOKRELAY_TEST_ADMIN}", ""},
		{"admin: {listen: '0.0.0.0:9090', token_env: HOOKRELAY_TEST_SHORT}", "admin.token_env: the token is 5 characters"},
		{"admin: {listen: '0.0.0.0:9090', token_file: " + shortFile + "}", "admin.token_file: the token is 6 characters"},
		{"admin: {listen: '0.0.0.0:9090', token_env: HOOKRELAY_TEST_UNSET}", "admin.token_env: environment variable HOOKRELAY_TEST_UNSET is not set"},
		{"admin: {listen: nowhere}", "admin.listen:"},
	} {
		c, _, err := parseConfig([]byte(tc.admin+"\n"+base), "test.yaml", io.Discard)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.admin, err)
			} else if tc.admin == "" && c.Admin.Listen != "127.0.0.1:9090" {
				t.Errorf("default admin listen %q", c.Admin.Listen)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: error %v, want %q", tc.admin, err, tc.wantErr)
		}
	}
}
