package main

import (
	"bytes"
	"flag"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Every command's -h prints its usage line, a sentence about it and its flags to stdout, and exits
// 0; a command line that cannot run exits 2 and says why.
func TestBinaryHelpAndUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		usage string   // the usage line's start
		flags []string // flags the help lists
	}{
		{[]string{"serve", "-h"}, "usage: relay serve ", []string{"-config", "-ready-file"}},
		{[]string{"check", "-h"}, "usage: relay check ", []string{"-config"}},
		{[]string{"sink", "-h"}, "usage: relay sink ", []string{"-listen", "-secret-env", "-secret-file"}},
		{[]string{"dlq", "-h"}, "usage: relay dlq <list|show|replay|drop>", []string{"-admin", "-config", "-token-env", "-token-file", "-route", "-all"}},
		{[]string{"dlq", "list", "-h"}, "usage: relay dlq ", []string{"-limit", "-json"}},
		{[]string{"messages", "--help"}, "usage: relay messages <list|show|redeliver>", []string{"-config", "-job-id", "-body"}},
		{[]string{"reload", "-h"}, "usage: relay reload ", []string{"-admin", "-config", "-token-file"}},
		{[]string{"health", "-help"}, "usage: relay health ", []string{"-admin", "-config", "-token-env", "-token-file"}},
		{[]string{"version", "-h"}, "usage: relay version\n", nil},
	} {
		out, code := relayCmd(t, nil, tc.args...)
		parts := strings.SplitN(out, "\n\n", 3) // the usage line, what the command does, more
		if code != 0 || !strings.HasPrefix(out, tc.usage) || len(parts) < 2 || !regexp.MustCompile(`^[A-Z][^\n]*(\n.*)*[.?]\n?$`).MatchString(parts[1]) {
			t.Errorf("relay %s: exit %d, want 0 with %q, then a sentence:\n%s", strings.Join(tc.args, " "), code, tc.usage, out)
		}
		for _, f := range tc.flags {
			if !strings.Contains(out, "\n  "+f+" ") && !strings.Contains(out, "\n  "+f+"\n") {
				t.Errorf("relay %s does not list %s:\n%s", strings.Join(tc.args, " "), f, out)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq"}, "dlq: give a subcommand: list, show, replay, drop"},
		{[]string{"dlq", "frob"}, `dlq: unknown subcommand "frob"`},
		{[]string{"messages"}, "messages: give a subcommand: list, show, redeliver"},
		{[]string{"dlq", "list", "-nope"}, "flag provided but not defined: -nope (relay dlq -h lists the flags)"},
		{[]string{"check", "-config", "x.yaml", "extra"}, `check: unexpected argument "extra"`},
		{[]string{"version", "now"}, `version: unexpected argument "now"`},
		{[]string{"health", "-token-env", "X", "-token-file", "y"}, "use -token-env or -token-file, not both"},
		{[]string{"sink", "-secret-env", "X", "-secret-file", "y"}, "use -secret-env or -secret-file, not both"},
	} {
		if out, code := relayCmd(t, nil, tc.args...); code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("relay %s: exit %d, want 2 with %q:\n%s", strings.Join(tc.args, " "), code, tc.want, out)
		}
	}
	out, code := relayCmd(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "relay ") || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, ")\n") {
		t.Errorf("relay version: exit %d, %q; want one line ending in a newline", code, out)
	}
}

// Flags go before, between or after the positional arguments; "--" ends them.
func TestCommandParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		a, b string
	}{
		{[]string{"show", "ID"}, []string{"show", "ID"}, "", ""},
		{[]string{"show", "ID", "-a", "x"}, []string{"show", "ID"}, "x", ""},
		{[]string{"-a", "x", "show", "-b=y", "ID"}, []string{"show", "ID"}, "x", "y"},
		{[]string{"show", "--", "-a", "x"}, []string{"show", "-a", "x"}, "", ""},
		{[]string{"-b", "y", "--", "-ID"}, []string{"-ID"}, "", "y"},
		{nil, nil, "", ""},
	} {
		c := newCommand("t", "t", "T.")
		a, b := c.String("a", "", ""), c.String("b", "", "")
		pos, err := c.parse(tc.args, &bytes.Buffer{})
		if err != nil || !slices.Equal(pos, tc.pos) || *a != tc.a || *b != tc.b {
			t.Errorf("parse %q = %q, -a %q, -b %q, %v; want %q, %q, %q", tc.args, pos, *a, *b, err, tc.pos, tc.a, tc.b)
		}
	}
	var help bytes.Buffer
	c := newCommand("t", "t [-a A]", "Does t.")
	c.String("a", "", "the a")
	if _, err := c.parse([]string{"x", "-h"}, &help); err != flag.ErrHelp || help.String() != "usage: relay t [-a A]\n\nDoes t.\n\nflags:\n  -a string\n    \tthe a\n" {
		t.Errorf("-h after an argument: %v, printed %q", err, help.String())
	}
}

// The admin API's address as the config names it, from this machine.
func TestAdminOf(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		admin, url, err string
	}{
		{"", "http://127.0.0.1:9090", ""},
		{"admin: {listen: 127.0.0.1:9191, token_env: T}", "http://127.0.0.1:9191", ""},
		{"admin: {listen: ':9191'}", "http://127.0.0.1:9191", ""},
		{"admin: {listen: 0.0.0.0:9191}", "http://127.0.0.1:9191", ""},
		{"admin: {listen: '[::]:9191'}", "http://127.0.0.1:9191", ""},
		{"admin: {listen: '[::1]:9191'}", "http://[::1]:9191", ""},
		{"admin: {listen: 'relay.internal:9191'}", "http://relay.internal:9191", ""},
		{"admin: {listen: 'off'}", "", "admin.listen is off"},
		{"admin: {listen: 127.0.0.1:0}", "", `admin.listen "127.0.0.1:0" names no port to connect to; give -admin URL`},
		{"admin: {listen: 9090}", "", `admin.listen "9090" names no port`},
		{"admin: [1, 2]", "", "c.yaml:3: admin: want a mapping (key: value lines), got a list"},
		{"admin: {listn: 127.0.0.1:9191}", "", "c.yaml:3: admin.listn: unknown key; did you mean listen?"},
		// Only the admin block matters: the rest of the file need not be valid.
		{"admin: {listen: 127.0.0.1:9191}\ntargets: nope\nbogus: 1", "http://127.0.0.1:9191", ""},
	} {
		path := filepath.Join(dir, "c.yaml")
		writeFile(t, path, "listen: 127.0.0.1:8080\nroutes: [{name: x}]\n"+tc.admin+"\n")
		url, _, err := adminOf(path)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("%q: %v, want an error naming the file and %q", tc.admin, err, tc.err)
			}
			continue
		}
		if err != nil || url != tc.url {
			t.Errorf("%q: %q, %v; want %q", tc.admin, url, err, tc.url)
		}
	}
}

func TestVersionLine(t *testing.T) {
	settings := func(kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{}
		for i := 0; i < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	for _, tc := range []struct {
		info *debug.BuildInfo
		want string // the end of the line
	}{
		{nil, ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"},
		{settings("-trimpath", "true"), ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"}, // built without VCS stamping
		{settings("vcs", "git", "vcs.revision", "0123abc", "vcs.modified", "false"), "/" + runtime.GOARCH + ", commit 0123abc)"},
		{settings("vcs.revision", "0123abc", "vcs.modified", "true"), ", commit 0123abc modified)"},
	} {
		got := versionLine(tc.info)
		if !strings.HasPrefix(got, "relay "+version+" (go") || !strings.HasSuffix(got, tc.want) {
			t.Errorf("versionLine = %q, want it to end in %q", got, tc.want)
		}
	}
}

// JSON logs write durations in seconds, a float, not integer nanoseconds.
func TestJSONLogDurationsInSeconds(t *testing.T) {
	var buf bytes.Buffer
	newLogger(logConfig{Level: "info", Format: "json"}, &buf).Info("x", "retry_in", 1105444610*time.Nanosecond,
		slog.Group("g", slog.Duration("d", 1500*time.Millisecond)), "n", 3)
	if got := buf.String(); !strings.Contains(got, `"retry_in":1.10544461,"g":{"d":1.5},"n":3}`) {
		t.Errorf("log line %s", got)
	}
	buf.Reset()
	newLogger(logConfig{Level: "info", Format: "text"}, &buf).Info("x", "retry_in", 1500*time.Millisecond)
	if got := buf.String(); !strings.Contains(got, "retry_in=1.5s") {
		t.Errorf("text log line %s", got)
	}
}

// Admin commands find the admin API and its token in the relay's config (here a token_file, which
// relay health had no flag for), and flags win over the file.
func TestBinaryAdminCommandsReadTheConfig(t *testing.T) {
	dir := t.TempDir()
	const token = "admin-token-0123456789abcdef"
	tokenFile := filepath.Join(dir, "admin_token")
	writeFile(t, tokenFile, token+"\n")
	cfg := writeConfig(t, dir, "http://127.0.0.1:1", "")
	text := strings.Replace(mustRead(t, cfg), "admin: {listen: 127.0.0.1:0}", "admin: {listen: 127.0.0.1:0, token_file: "+tokenFile+"}", 1)
	writeFile(t, cfg, text)
	p := startProc(t, nil, "serve", "-config", cfg)
	admin := p.adminURL(t)
	// The file as it would be with a fixed port: what the commands read.
	writeFile(t, cfg, strings.Replace(text, "127.0.0.1:0, token_file", p.bound.Admin+", token_file", 1))
	noAdmin := filepath.Join(dir, "off.yaml")
	writeFile(t, noAdmin, "admin: {listen: 'off'}\n")
	unsetEnv := filepath.Join(dir, "env.yaml")
	writeFile(t, unsetEnv, "admin: {listen: "+p.bound.Admin+", token_env: HOOKRELAY_TEST_UNSET}\n")

	env := []string{"HOOKRELAY_TEST_TOKEN=" + token, "HOOKRELAY_ADMIN_TOKEN="}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"health", "-config", cfg}, 0, "ready"},
		{[]string{"health", "-admin", admin, "-token-file", tokenFile}, 0, "ready"},
		{[]string{"health", "-admin", admin, "-token-env", "HOOKRELAY_TEST_TOKEN"}, 0, "ready"},
		{[]string{"health", "-admin", admin}, 1, "not ready: GET /readyz: 401"},
		{[]string{"health", "-config", cfg, "-token-env", "HOOKRELAY_ADMIN_TOKEN"}, 1, "HOOKRELAY_ADMIN_TOKEN"}, // the flag wins: that variable is empty
		{[]string{"health", "-config", cfg, "-admin", "http://127.0.0.1:1"}, 1, "connection refused"},           // so does -admin
		{[]string{"health", "-config", noAdmin}, 1, "admin.listen is off"},
		{[]string{"health", "-config", unsetEnv}, 1, unsetEnv + ": admin: environment variable HOOKRELAY_TEST_UNSET"},
		{[]string{"health", "-token-file", filepath.Join(dir, "nope"), "-admin", admin}, 1, filepath.Join(dir, "nope")},
		{[]string{"dlq", "list", "-config", cfg}, 0, "ID  ROUTE  TARGET"},
		{[]string{"dlq", "-config", cfg, "list", "-json"}, 0, `{"dead_letters":`}, // flags before the subcommand too
		{[]string{"messages", "list", "-config", cfg}, 0, "no message matches"},
	} {
		out, code := relayCmd(t, env, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("relay %s: exit %d, want %d with %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, out)
		}
	}

	// The relay's own JSON log writes its durations in seconds.
	if status, _ := postJSON(t, p.url()+"/nope", `{}`); status != http.StatusNotFound {
		t.Fatalf("post to no route: %d", status)
	}
	re := regexp.MustCompile(`"msg":"webhook rejected".*"duration":([^,}]+)`)
	waitUntil(t, "the rejection logged", func() bool { return re.MatchString(p.logs()) })
	d, err := strconv.ParseFloat(re.FindStringSubmatch(p.logs())[1], 64)
	if err != nil || d <= 0 || d > 60 {
		t.Errorf("duration %q, %v: want seconds", re.FindStringSubmatch(p.logs())[1], err)
	}
}
