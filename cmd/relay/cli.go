package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// command is a subcommand's flags and the usage its -h prints.
type command struct {
	*flag.FlagSet
	usage string // after "usage: relay "
	about string // what the command does
}

// usageError is a command line that cannot run: exit status 2, as for an unknown command.
type usageError struct{ error }

func newCommand(name, usage, about string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parse prints the usage, and run the error
	fs.Usage = func() {}
	return &command{FlagSet: fs, usage: usage, about: about}
}

// parse parses flags before and after the positional arguments (relay dlq show ID -admin URL),
// which flag.Parse alone stops at, and returns the positional ones; "--" ends the flags. -h prints
// the usage to stdout and returns flag.ErrHelp.
func (c *command) parse(args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := c.Parse(args); errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: relay %s\n\n%s\n", c.usage, c.about)
			if hasFlags(c.FlagSet) {
				fmt.Fprint(stdout, "\nflags:\n")
				c.SetOutput(stdout)
				c.PrintDefaults()
			}
			return nil, err
		} else if err != nil {
			return nil, usageError{fmt.Errorf("%s: %w (relay %s -h lists the flags)", c.Name(), err, c.Name())}
		}
		rest := c.Args()
		if n := len(args) - len(rest); len(rest) == 0 || (n > 0 && args[n-1] == "--") {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

func hasFlags(fs *flag.FlagSet) (ok bool) {
	fs.VisitAll(func(*flag.Flag) { ok = true })
	return ok
}

// subcommand splits off the first positional argument, which must be one of subs.
func (c *command) subcommand(pos []string, subs ...string) (string, []string, error) {
	if len(pos) > 0 && slices.Contains(subs, pos[0]) {
		return pos[0], pos[1:], nil
	}
	what := "give a subcommand"
	if len(pos) > 0 {
		what = fmt.Sprintf("unknown subcommand %q", pos[0])
	}
	return "", nil, usageError{fmt.Errorf("%s: %s: %s (relay %s -h)", c.Name(), what, strings.Join(subs, ", "), c.Name())}
}

// noArgs is parse for a command that takes no positional arguments.
func (c *command) noArgs(args []string, stdout io.Writer) error {
	pos, err := c.parse(args, stdout)
	if err == nil && len(pos) > 0 {
		err = usageError{fmt.Errorf("%s: unexpected argument %q", c.Name(), pos[0])}
	}
	return err
}

// adminClient talks to a running relay's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

const adminFlagsHelp = `The admin API's address and token come from -config FILE (admin.listen, admin.token_env,
admin.token_file), or -admin, -token-env and -token-file, which win over the file.`

// adminFlags adds the flags every admin command takes; the function it returns makes the client
// once they are parsed.
func adminFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	config := fs.String("config", "", "read the admin address and token from the relay's config file")
	base := fs.String("admin", "http://"+defaultAdminListen, "the relay's admin API")
	tokenEnv := fs.String("token-env", "HOOKRELAY_ADMIN_TOKEN", "env var holding the admin bearer token, if the API needs one")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token")
	return func() (*adminClient, error) {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		env, file, where := *tokenEnv, *tokenFile, "admin token"
		switch {
		case set["token-env"] && set["token-file"]:
			return nil, usageError{errors.New("use -token-env or -token-file, not both")}
		case set["token-file"], !set["token-env"] && os.Getenv(env) == "":
			env = "" // a file, or the default variable unset: no token
		}
		if *config != "" {
			u, a, err := adminOf(*config)
			if err != nil {
				return nil, err
			}
			if !set["admin"] {
				*base = u
			}
			if !set["token-env"] && !set["token-file"] {
				env, file, where = a.TokenEnv, a.TokenFile, *config+": admin"
			}
		}
		token, err := readSecret(env, file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		u, err := url.Parse(*base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-admin %q is not an http(s) URL", *base)
		}
		return &adminClient{base: strings.TrimSuffix(*base, "/"), token: token, http: &http.Client{Timeout: 30 * time.Second}}, nil
	}
}

// adminOf reads the admin block of a config file, alone: an admin command need not have the
// secrets the rest of the file names. url is where the API answers on this machine.
func adminOf(path string) (url string, a adminConfig, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", a, fmt.Errorf("read config: %w", err)
	}
	// Decoded as serve decodes it, but only the admin block's problems matter here.
	var f fileConfig
	root, bad := decodeFile(raw, &f)
	bad = slices.DeleteFunc(bad, func(q problem) bool {
		return root != nil && q.path != "admin" && !strings.HasPrefix(q.path, "admin.")
	})
	if err := bad.report(path, root); err != nil {
		return "", a, err
	}
	a = f.Admin
	if a.Listen == "" {
		a.Listen = defaultAdminListen
	}
	host, port, err := net.SplitHostPort(a.Listen)
	switch {
	case a.Listen == "off":
		return "", a, fmt.Errorf("%s: admin.listen is off: the relay serves no admin API", path)
	case err != nil || port == "0":
		return "", a, fmt.Errorf("%s: admin.listen %q names no port to connect to; give -admin URL", path, a.Listen)
	case host == "" || net.ParseIP(host).IsUnspecified(): // listening everywhere: loopback too
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), a, nil
}

// do sends a request and decodes a JSON answer into out; a non-2xx answer is an error with the
// API's message.
func (c *adminClient) do(method, path string, q url.Values, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, e.Error)
		}
		return fmt.Errorf("%s %s: %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: answer is not JSON: %w", method, path, err)
		}
	}
	return nil
}

// printJSON prints an API answer indented.
func printJSON(w io.Writer, raw json.RawMessage) error {
	var out bytes.Buffer
	_ = json.Indent(&out, raw, "", "  ")
	_, err := fmt.Fprintln(w, out.String())
	return err
}

// adminCommand parses the command line of an admin command that takes only the admin flags and
// returns its client.
func adminCommand(name, about string, args []string, stdout io.Writer) (*adminClient, error) {
	c := newCommand(name, name+" [-config FILE] [-admin URL] [-token-env NAME | -token-file PATH]", about+"\n\n"+adminFlagsHelp)
	client := adminFlags(c.FlagSet)
	if err := c.noArgs(args, stdout); err != nil {
		return nil, err
	}
	return client()
}

// cmdHealth exits 0 when the relay answers ready: a container health check.
func cmdHealth(args []string, stdout io.Writer) error {
	api, err := adminCommand("health", "Exit 0 when the relay answers ready on its admin API: a container health check.", args, stdout)
	if err != nil {
		return err
	}
	if err := api.do(http.MethodGet, "/readyz", nil, nil); err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	_, err = fmt.Fprintln(stdout, "ready")
	return err
}

func cmdVersion(args []string, stdout io.Writer) error {
	c := newCommand("version", "version", "Print the version, the Go version and platform, and the commit built from.")
	if err := c.noArgs(args, stdout); err != nil {
		return err
	}
	info, _ := debug.ReadBuildInfo()
	_, err := fmt.Fprintln(stdout, versionLine(info))
	return err
}

// versionLine names the build: the version, Go's, the platform and, when the build recorded it,
// the VCS commit (marked modified when the tree had changes).
func versionLine(info *debug.BuildInfo) string {
	s := fmt.Sprintf("relay %s (%s, %s/%s", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	var rev, modified string
	if info != nil {
		for _, kv := range info.Settings {
			switch kv.Key {
			case "vcs.revision":
				rev = kv.Value
			case "vcs.modified":
				modified = kv.Value
			}
		}
	}
	if rev != "" {
		s += ", commit " + rev
		if modified == "true" {
			s += " modified"
		}
	}
	return s + ")"
}
