package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// brokenBase is a valid configuration; each case below breaks it in one way.
const brokenBase = `listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
data_dir: ./data
targets:
  - name: app
    url: http://127.0.0.1:9000/hooks
    timeout: 5s
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    verify:
      type: url_token
      secrets_env: [BROKEN_TEST_TOKEN]
`

func whole(s string) func(string) string    { return func(string) string { return s } }
func appendTo(s string) func(string) string { return func(b string) string { return b + s } }

// edit replaces each old (which must occur) by its new.
func edit(pairs ...string) func(string) string {
	return func(b string) string {
		for i := 0; i < len(pairs); i += 2 {
			if !strings.Contains(b, pairs[i]) {
				panic("brokenBase lacks " + pairs[i])
			}
			b = strings.Replace(b, pairs[i], pairs[i+1], 1)
		}
		return b
	}
}

// Each broken configuration gets exactly its message, with file, line and key path, and check
// and serve (the real binary) say the same and exit 1.
func TestBrokenConfigs(t *testing.T) {
	t.Setenv("BROKEN_TEST_TOKEN", "a-token-of-24-characters")
	t.Setenv("BROKEN_TEST_EMPTY", "")
	t.Setenv("BROKEN_TEST_WHSEC", "whsec_")
	os.Unsetenv("BROKEN_TEST_UNSET")
	if err := parseOnly(t, brokenBase); err != nil {
		t.Fatalf("the base is invalid: %v", err)
	}
	for _, tc := range []struct {
		name string
		mk   func(string) string
		want string
	}{
		{`empty file`, whole(``),
			`relay.yaml: 1 problem:
relay.yaml: the file is empty; start from config.example.yaml`},
		{`only comments`, whole(`# listen: 127.0.0.1:8080
`),
			`relay.yaml: 1 problem:
relay.yaml: the file is empty; start from config.example.yaml`},
		{`a list at the top`, whole(`- listen: 127.0.0.1:8080
`),
			`relay.yaml: 1 problem:
relay.yaml:1: want a mapping of settings (key: value lines) at the top; start from config.example.yaml`},
		{`indentation error`, edit(`    timeout: 5s`, `   timeout: 5s`),
			`relay.yaml: 1 problem:
relay.yaml:8: YAML syntax: did not find expected '-' indicator (check the indentation and quoting of this line)`},
		{`unterminated quote`, edit(`url: http://127.0.0.1:9000/hooks`, `url: "http://127.0.0.1:9000/hooks`),
			`relay.yaml: 1 problem:
relay.yaml:7: YAML syntax: found unexpected end of stream (check the indentation and quoting of this line)`},
		{`misspelt top-level key`, edit(`listen: 127.0.0.1:0
admin`, `listn: 127.0.0.1:0
admin`),
			`relay.yaml: 1 problem:
relay.yaml:1: listn: unknown key; did you mean listen?`},
		{`unknown key without a near one`, appendTo(`colour: red
`),
			`relay.yaml: 1 problem:
relay.yaml:17: colour: unknown key; the keys here are listen, data_dir, trusted_proxies, client_ip_header, allowlist, allowlist_files, admin, tls, log, store, history, timeouts, delivery, targets, routes`},
		{`every unknown key at once`, edit(`    timeout: 5s`, `    timout: 5s
    concurency: 4`),
			`relay.yaml: 2 problems:
relay.yaml:8: targets[0].timout: unknown key; did you mean timeout?
relay.yaml:9: targets[0].concurency: unknown key; did you mean concurrency?`},
		{`repeated key`, edit(`    provider: fashn`, `    provider: fashn
    provider: fal`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].provider: given twice (first at line 12); keep one`},
		{`duration in words`, edit(`timeout: 5s`, `timeout: 1 hour`),
			`relay.yaml: 1 problem:
relay.yaml:8: targets[0].timeout: want a duration such as 90s, 5m or 72h, got "1 hour"`},
		{`duration without unit`, edit(`    provider: fashn`, `    provider: fashn
    dedupe_ttl: 3600`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].dedupe_ttl: want a duration such as 90s, 5m or 72h, got "3600"`},
		{`negative size`, edit(`    provider: fashn`, `    provider: fashn
    max_body: -4MiB`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].max_body: "-4MiB" is not a size such as 1MiB, 512KiB or 65536 (bytes, up to 1TiB)`},
		{`words for a number`, edit(`    timeout: 5s`, `    timeout: 5s
    concurrency: lots`),
			`relay.yaml: 1 problem:
relay.yaml:9: targets[0].concurrency: want a whole number, got "lots"`},
		{`not a boolean`, edit(`    provider: fashn`, `    provider: fashn
    require_job_id: maybe`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].require_job_id: want true or false, got "maybe"`},
		{`a value where a list goes`, edit(`    targets: [app]`, `    targets: {name: app}`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].targets: want a list ([a, b] or lines starting with -), got a mapping`},
		{`targets not a list`, edit(`targets:
  - name: app
    url: http://127.0.0.1:9000/hooks
    timeout: 5s
`, `targets: app
`),
			`relay.yaml: 1 problem:
relay.yaml:5: targets: want a list ([a, b] or lines starting with -), got "app"`},
		{`problems of every kind in one file`, edit(`listen: 127.0.0.1:0`, `listen: 127.0.0.1`, `    timeout: 5s`, `    timeout: soon
    retries: 3`, `[BROKEN_TEST_TOKEN]`, `[BROKEN_TEST_UNSET]`),
			`relay.yaml: 4 problems:
relay.yaml:1: listen: "127.0.0.1" is not host:port (for example 0.0.0.0:443 or 127.0.0.1:8080)
relay.yaml:8: targets[0].timeout: want a duration such as 90s, 5m or 72h, got "soon"
relay.yaml:9: targets[0].retries: unknown key; the keys here are name, url, timeout, concurrency, rate, burst, signing_secret_env, signing_secret_file, retry, headers, tls
relay.yaml:17: routes[0].verify.secrets_env[0]: environment variable BROKEN_TEST_UNSET is not set; export it or remove the key`},
		{`misspelt provider`, edit(`provider: fashn`, `provider: fashion`),
			`relay.yaml: 1 problem:
relay.yaml:12: routes[0].provider: "fashion" is not a provider; did you mean fashn?`},
		{`misspelt provider on a route without checks`, edit(`provider: fashn`, `provider: fotr`, `    verify:
      type: url_token
      secrets_env: [BROKEN_TEST_TOKEN]
`, ``),
			`relay.yaml: 1 problem:
relay.yaml:12: routes[0].provider: "fotr" is not a provider; did you mean fotor?`},
		{`signing secret from an env var and a file`, edit(`    timeout: 5s`, `    timeout: 5s
    signing_secret_env: BROKEN_TEST_UNSET
    signing_secret_file: secret.txt`),
			`relay.yaml: 2 problems:
relay.yaml:6: targets[0]: set signing_secret_env or signing_secret_file, not both
relay.yaml:9: targets[0].signing_secret_env: environment variable BROKEN_TEST_UNSET is not set; export it or remove the key`},
		{`misspelt verify type`, edit(`type: url_token`, `type: url_tokn`),
			`relay.yaml: 1 problem:
relay.yaml:15: routes[0].verify.type: "url_tokn" is not a verify type; did you mean url_token?`},
		{`misspelt target in a route`, edit(`targets: [app]`, `targets: [ap]`),
			`relay.yaml: 1 problem:
relay.yaml:13: routes[0].targets[0]: unknown target "ap"; did you mean app?`},
		{`upper-case target name`, edit(`- name: app`, `- name: App`, `targets: [app]`, `targets: [App]`),
			`relay.yaml: 1 problem:
relay.yaml:6: targets[0].name: "App" must be 1-63 lower-case letters, digits, - or _`},
		{`target defined twice`, edit(`routes:`, `  - name: app
    url: http://127.0.0.1:9001/hooks
routes:`),
			`relay.yaml: 1 problem:
relay.yaml:9: targets[1].name: "app" is used by another target; names must be unique`},
		{`route path without slash`, edit(`path: /hooks/fashn`, `path: hooks/fashn`),
			`relay.yaml: 1 problem:
relay.yaml:11: routes[0].path: "hooks/fashn" must start with /`},
		{`two routes on one path`, appendTo(`  - name: other
    path: /hooks/fashn
    provider: abstrakt
    targets: [app]
    insecure: true
`),
			`relay.yaml: 1 problem:
relay.yaml:18: routes[1].path: "/hooks/fashn" is also the path of routes[0]; paths must be unique`},
		{`env var not set`, edit(`[BROKEN_TEST_TOKEN]`, `[BROKEN_TEST_UNSET]`),
			`relay.yaml: 1 problem:
relay.yaml:16: routes[0].verify.secrets_env[0]: environment variable BROKEN_TEST_UNSET is not set; export it or remove the key`},
		{`env var set but empty`, edit(`[BROKEN_TEST_TOKEN]`, `[BROKEN_TEST_EMPTY]`),
			`relay.yaml: 1 problem:
relay.yaml:16: routes[0].verify.secrets_env[0]: environment variable BROKEN_TEST_EMPTY is set but empty; give it the secret's value`},
		{`target timeout above the lease`, edit(`timeout: 5s`, `timeout: 5m`),
			`relay.yaml: 1 problem:
relay.yaml:8: targets[0].timeout: 5m0s must be positive and below delivery.lease (2m0s)`},
		{`retry multiplier below 1`, edit(`    timeout: 5s`, `    timeout: 5s
    retry: {multiplier: 0.5}`),
			`relay.yaml: 1 problem:
relay.yaml:9: targets[0].retry.multiplier: must be at least 1, got 0.5`},
		{`retry max_backoff below initial`, edit(`    timeout: 5s`, `    timeout: 5s
    retry:
      initial: 1m
      max_backoff: 10s`),
			`relay.yaml: 1 problem:
relay.yaml:11: targets[0].retry.max_backoff: must be at least retry.initial (1m0s), got 10s`},
		{`admin off loopback without a token`, edit(`  listen: 127.0.0.1:0
data_dir`, `  listen: 0.0.0.0:9090
data_dir`),
			`relay.yaml: 1 problem:
relay.yaml:3: admin.listen: 0.0.0.0:9090 is not a loopback address: set admin.token_env or admin.token_file so the admin API needs a bearer token`},
		{`unknown store type`, appendTo(`store: {type: postgres}
`),
			`relay.yaml: 1 problem:
relay.yaml:17: store.type: "postgres" is not embedded or redis`},
		{`redis store without its section`, appendTo(`store:
  type: redis
`),
			`relay.yaml: 1 problem:
relay.yaml:17: store.redis: store.type is redis: set store.redis.url or store.redis.addrs`},
		{`redis prefix, shards and replicas out of range`, appendTo("store:\n  type: redis\n  redis:\n    url: redis://127.0.0.1:1/0\n    shards: 5000\n    min_replicas: -1\n    prefix: \"a{b}\"\n"),
			`relay.yaml: 3 problems:
relay.yaml:21: store.redis.shards: must be within 1..1024, got 5000 (1 keeps the layout of earlier releases)
relay.yaml:22: store.redis.min_replicas: must be 0 (do not wait for replicas) or more, got -1
relay.yaml:23: store.redis.prefix: "a{b}" must not contain braces: the keys have their own hash tag`},
		{`unknown log level`, appendTo(`log: {level: verbose}
`),
			`relay.yaml: 1 problem:
relay.yaml:17: log.level: "verbose" is not one of debug, info, warn, error`},
		{`header timeout above read timeout`, appendTo(`timeouts:
  read_header: 2m
  read: 1m
`),
			`relay.yaml: 1 problem:
relay.yaml:18: timeouts.read_header: 2m0s is above timeouts.read (1m0s), which includes the headers`},
		{`route open to anyone`, edit(`    verify:
      type: url_token
      secrets_env: [BROKEN_TEST_TOKEN]
`, ``),
			`relay.yaml: 1 problem:
relay.yaml:10: routes[0]: accepts webhooks from anyone: add verify (url_token, or the provider's signature scheme), an allowlist, or insecure: true to accept that`},
		{`insecure_skip_verify`, edit(`http://127.0.0.1:9000/hooks`, `https://127.0.0.1:9000/hooks`, `    timeout: 5s`, `    timeout: 5s
    tls: {insecure_skip_verify: true}`),
			`relay.yaml: 1 problem:
relay.yaml:9: targets[0].tls.insecure_skip_verify: is refused: an unverified target can be impersonated; trust its private CA with tls.ca_file (and tls.server_name if its certificate names another host)`},
		{`signing secret empty after whsec_`, edit(`    timeout: 5s`, `    timeout: 5s
    signing_secret_env: BROKEN_TEST_WHSEC`),
			`relay.yaml: 1 problem:
relay.yaml:9: targets[0].signing_secret_env: the secret is not usable: empty signing secret after whsec_`},
		{`hop-by-hop forward header`, edit(`    targets: [app]`, `    targets: [app]
    forward_headers: [X-Request-Id, Connection]`),
			`relay.yaml: 1 problem:
relay.yaml:14: routes[0].forward_headers[1]: Connection is a hop-by-hop header; it describes a connection, not a webhook`},
		{`two bad URLs in a list`, edit(`routes:`, `  - name: b
    url: ftp://127.0.0.1/x
  - name: c
    url: 127.0.0.1:9000
routes:`),
			`relay.yaml: 2 problems:
relay.yaml:10: targets[1].url: "ftp://127.0.0.1/x" is not an absolute http:// or https:// URL, nor unix:///path/to.sock:/path
relay.yaml:12: targets[2].url: "127.0.0.1:9000" is not an absolute http:// or https:// URL, nor unix:///path/to.sock:/path`},
		{`bad allowlist entry`, edit(`    targets: [app]`, `    targets: [app]
    allowlist: [10.0.0.0/8, 300.1.2.3]`),
			`relay.yaml: 1 problem:
relay.yaml:14: routes[0].allowlist[1]: allowlist entry "300.1.2.3" is not an IP address or CIDR prefix`},
		{`negative retention`, appendTo(`history: {retention: -1h}
`),
			`relay.yaml: 1 problem:
relay.yaml:17: history.retention: must be 0 (history off) or positive, got -1h0m0s`},
		{`unknown tls mode`, appendTo(`tls: {mode: on}
`),
			`relay.yaml: 1 problem:
relay.yaml:17: tls.mode: "on" is not off, files or acme`},
		{`tls certificate without its key`, appendTo(`tls:
  mode: files
  cert_file: edge.crt
`),
			`relay.yaml: 1 problem:
relay.yaml:17: tls.key_file: mode files needs the private key's PEM file`},
		{`tls files unreadable`, appendTo(`tls:
  mode: files
  cert_file: missing.crt
  key_file: missing.key
`),
			`relay.yaml: 2 problems:
relay.yaml:19: tls.cert_file: cannot read: open missing.crt: no such file or directory
relay.yaml:20: tls.key_file: cannot read: open missing.key: no such file or directory`},
		{`acme domain with an underscore`, appendTo(`tls:
  mode: acme
  acme:
    domains: [hooks.example.com, hooks_example.com]
`),
			`relay.yaml: 1 problem:
relay.yaml:20: tls.acme.domains[1]: "hooks_example.com" has a character '_' not allowed in a domain name (use the punycode xn-- form)`},
		{`acme email and CA not usable`, appendTo(`tls:
  mode: acme
  acme:
    domains: [hooks.example.com]
    email: ops@example
    ca: http://ca.example.com/directory
`),
			`relay.yaml: 2 problems:
relay.yaml:21: tls.acme.email: "ops@example" is not an email address like ops@example.com (the CA writes there about expiring certificates)
relay.yaml:22: tls.acme.ca: "http://ca.example.com/directory" is not an https:// ACME directory URL (default https://acme-v02.api.letsencrypt.org/directory)`},
		{`unknown status in a filter`, edit(`    targets: [app]`, `    targets:
      - name: app
        when: {status: [done]}`),
			`relay.yaml: 1 problem:
relay.yaml:15: routes[0].targets[0].when.status[0]: "done" is not a status of preset fashn, whose statuses are failed, processing, succeeded`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := tc.mk(brokenBase)
			err := parseOnly(t, file)
			if err == nil {
				t.Fatalf("accepted:\n%s", file)
			}
			if err.Error() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", err, tc.want)
			}
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "relay.yaml"), file)
			for _, cmd := range []string{"check", "serve"} {
				c := exec.Command(relayBin, cmd, "-config", "relay.yaml")
				c.Dir = dir
				var out bytes.Buffer
				c.Stdout, c.Stderr = &out, &out
				if err := c.Run(); c.ProcessState == nil || c.ProcessState.ExitCode() != 1 || out.String() != "relay: "+tc.want+"\n" {
					t.Errorf("relay %s: %v\n%s\nwant exit 1 and\nrelay: %s", cmd, err, out.String(), tc.want)
				}
			}
		})
	}
}

// parseOnly parses file as serve and check do, named relay.yaml.
func parseOnly(t *testing.T, file string) error {
	t.Helper()
	_, _, err := parseConfig([]byte(file), "relay.yaml", io.Discard)
	return err
}
