package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// adminClient talks to a running relay's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// adminFlags adds the flags every admin command takes.
func adminFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	base := fs.String("admin", "http://127.0.0.1:9090", "the relay's admin API")
	tokenEnv := fs.String("token-env", "HOOKRELAY_ADMIN_TOKEN", "env var holding the admin bearer token, if the API needs one")
	return func() (*adminClient, error) {
		u, err := url.Parse(*base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-admin %q is not an http(s) URL", *base)
		}
		return &adminClient{base: strings.TrimSuffix(*base, "/"), token: os.Getenv(*tokenEnv),
			http: &http.Client{Timeout: 30 * time.Second}}, nil
	}
}

// do sends a request and decodes a JSON answer into out; a non-2xx answer is an error with the
// API's message.
func (c *adminClient) do(method, path string, q url.Values, out any) (int, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return resp.StatusCode, fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, e.Error)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: answer is not JSON: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

type deadLetter struct {
	ID         string    `json:"id"`
	Route      string    `json:"route"`
	Target     string    `json:"target"`
	JobID      string    `json:"job_id"`
	Attempt    int       `json:"attempt"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	DeadAt     time.Time `json:"dead_at"`
}

const dlqUsage = `usage: relay dlq <list|show|replay|drop> [flags] [ID]

  list   [-route R] [-target T] [-since 24h|RFC3339] [-limit N] [-json]
  show   ID
  replay ID | replay [-route R] [-target T] [-since S] | replay -all
  drop   ID

Every subcommand takes -admin URL (default http://127.0.0.1:9090) and -token-env NAME
(default HOOKRELAY_ADMIN_TOKEN).
`

func cmdDLQ(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return flag.ErrHelp
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	route := fs.String("route", "", "only this route")
	target := fs.String("target", "", "only this target")
	since := fs.String("since", "", "only dead letters from this long ago (24h) or this time (RFC 3339) on")
	limit := fs.Int("limit", 100, "list at most this many")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	all := fs.Bool("all", false, "replay: every dead letter")
	pos, err := parseInterspersed(fs, args) // flags may follow the ID, as in relay messages
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	filter := url.Values{}
	for k, v := range map[string]string{"route": *route, "target": *target, "since": *since} {
		if v != "" {
			filter.Set(k, v)
		}
	}
	id := ""
	if len(pos) > 0 {
		id = pos[0]
	}
	needID := func() error {
		if id == "" || len(pos) > 1 {
			return fmt.Errorf("dlq %s: give exactly one dead letter ID", sub)
		}
		return nil
	}
	switch sub {
	case "list":
		q := filter
		q.Set("limit", fmt.Sprint(*limit))
		var page struct {
			DeadLetters []json.RawMessage `json:"dead_letters"`
			Next        string            `json:"next"`
		}
		if _, err := c.do(http.MethodGet, "/v1/dead-letters", q, &page); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(page)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tROUTE\tTARGET\tJOB\tATTEMPTS\tSTATUS\tDEAD AT\tERROR")
		for _, raw := range page.DeadLetters {
			var d deadLetter
			if err := json.Unmarshal(raw, &d); err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.ID, d.Route, d.Target, d.JobID, d.Attempt,
				d.LastStatus, d.DeadAt.UTC().Format(time.RFC3339), truncate(d.LastError, 60))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if page.Next != "" {
			fmt.Fprintf(stderr, "more: relay dlq list ... (the API's next cursor is %s)\n", page.Next)
		}
		return nil
	case "show":
		if err := needID(); err != nil {
			return err
		}
		var d json.RawMessage
		if _, err := c.do(http.MethodGet, "/v1/dead-letters/"+url.PathEscape(id), nil, &d); err != nil {
			return err
		}
		var out bytes.Buffer
		_ = json.Indent(&out, d, "", "  ")
		_, err := fmt.Fprintln(stdout, out.String())
		return err
	case "replay":
		var res struct {
			Replayed int `json:"replayed"`
		}
		switch {
		case id != "":
			if err := needID(); err != nil {
				return err
			}
			if _, err := c.do(http.MethodPost, "/v1/dead-letters/"+url.PathEscape(id)+"/replay", nil, &res); err != nil {
				return err
			}
		case len(filter) == 0 && !*all:
			return errors.New("dlq replay: give an ID, a filter (-route, -target, -since), or -all")
		default:
			q := filter
			if *all {
				q.Set("all", "true")
			}
			if _, err := c.do(http.MethodPost, "/v1/dead-letters/replay", q, &res); err != nil {
				return err
			}
		}
		_, err := fmt.Fprintf(stdout, "replayed %d\n", res.Replayed)
		return err
	case "drop":
		if err := needID(); err != nil {
			return err
		}
		if _, err := c.do(http.MethodDelete, "/v1/dead-letters/"+url.PathEscape(id), nil, nil); err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "dropped %s\n", id)
		return err
	}
	fmt.Fprint(stderr, dlqUsage)
	return fmt.Errorf("dlq: unknown subcommand %q", sub)
}

// cmdHealth exits 0 when the relay answers ready: a container health check.
func cmdHealth(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	if _, err := c.do(http.MethodGet, "/readyz", nil, nil); err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	_, err = fmt.Fprintln(stdout, "ready")
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
