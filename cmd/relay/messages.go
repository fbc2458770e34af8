package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// relay messages: the message history through the admin API (GET /v1/messages and friends).

const messagesAbout = `Message history through the admin API: did the relay get job X, and what did each target answer?

  list      [-route R] [-target T] [-job-id J] [-state S] [-since 24h|RFC3339] [-until ...]
            [-limit N] [-cursor C] [-json]
  show      [-body] [-json] ID
  redeliver [-target T] ID

state is queued, in_flight, retrying, delivered or dead. "Did the relay get job X?":
relay messages list -job-id X.
` + adminFlagsHelp

func cmdMessages(args []string, stdout, stderr io.Writer) error {
	c := newCommand("messages", "messages <list|show|redeliver> [flags] [ID]", messagesAbout)
	client := adminFlags(c.FlagSet)
	filters := map[string]*string{}
	for _, f := range []struct{ name, param, help string }{
		{"route", "route", "list: only this route"},
		{"target", "target", "list: only messages with a delivery to this target; redeliver: only to this target"},
		{"job-id", "job_id", "list: only this job ID (fal request_id, FASHN id, Fotor taskId...)"},
		{"state", "state", "list: only messages with a delivery in this state (queued, in_flight, retrying, delivered, dead)"},
		{"since", "since", "list: received this long ago (24h) or at this time (RFC 3339) or later"},
		{"until", "until", "list: received before this long ago (1h) or this time (RFC 3339)"},
		{"cursor", "cursor", "list: continue after the page that printed it"},
	} {
		filters[f.param] = c.String(f.name, "", f.help)
	}
	limit := c.Int("limit", 50, "list: at most this many")
	asJSON := c.Bool("json", false, "print the API's JSON")
	withBody := c.Bool("body", false, "show: print the body too")
	pos, err := c.parse(args, stdout)
	if err != nil {
		return err
	}
	sub, pos, err := c.subcommand(pos, "list", "show", "redeliver")
	if err != nil {
		return err
	}
	switch {
	case sub == "list" && len(pos) > 0:
		return fmt.Errorf("messages list: unexpected argument %q (filters are flags: -job-id %s)", pos[0], pos[0])
	case sub != "list" && len(pos) != 1:
		return fmt.Errorf("messages %s: give exactly one message ID", sub)
	}
	api, err := client()
	if err != nil {
		return err
	}
	q := url.Values{}
	switch sub {
	case "list":
		for k, v := range filters {
			if *v != "" {
				q.Set(k, *v)
			}
		}
		q.Set("limit", fmt.Sprint(*limit))
		var page struct {
			Messages []json.RawMessage `json:"messages"`
			Next     string            `json:"next"`
			History  bool              `json:"history"`
		}
		if err := api.do(http.MethodGet, "/v1/messages", q, &page); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(page)
		}
		return printMessageList(stdout, stderr, page.Messages, page.Next, page.History, q)
	case "show":
		if *withBody {
			q.Set("body", "true")
		}
		var raw json.RawMessage
		if err := api.do(http.MethodGet, "/v1/messages/"+url.PathEscape(pos[0]), q, &raw); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, raw)
		}
		var m relay.MessageJSON
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		return printMessage(stdout, &m)
	}
	if t := *filters["target"]; t != "" {
		q.Set("target", t)
	}
	var res struct {
		Redelivered []string `json:"redelivered"`
	}
	if err := api.do(http.MethodPost, "/v1/messages/"+url.PathEscape(pos[0])+"/redeliver", q, &res); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "redelivered %s\n", strings.Join(res.Redelivered, ", "))
	return err
}

func printMessageList(stdout, stderr io.Writer, raws []json.RawMessage, next string, history bool, q url.Values) error {
	if len(raws) == 0 {
		what := "no message matches"
		if j := q.Get("job_id"); j != "" {
			what = fmt.Sprintf("no message with job ID %q", j)
		}
		if !history {
			what += " (history is off: delivered messages are not kept)"
		}
		_, err := fmt.Fprintln(stdout, what)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tROUTE\tJOB\tJOB STATUS\tDUPLICATES\tDELIVERIES")
	for _, raw := range raws {
		var m relay.MessageJSON
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		var ds []string
		for _, d := range m.Deliveries {
			ds = append(ds, d.Target+":"+d.State)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.ReceivedAt.UTC().Format(time.RFC3339), m.Route,
			orDash(m.JobID), orDash(m.JobStatus), m.Duplicates, strings.Join(ds, " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(stderr, "more: add -cursor %s\n", next)
	}
	return nil
}

func printMessage(w io.Writer, m *relay.MessageJSON) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"id", m.ID}, {"received", m.ReceivedAt.UTC().Format(time.RFC3339Nano)}, {"route", m.Route},
		{"provider", m.Provider}, {"job", orDash(m.JobID)}, {"job status", orDash(m.JobStatus)},
		{"from", orDash(m.SourceAddr)}, {"body", fmt.Sprintf("%d bytes %s", m.Size, m.ContentType)},
		{"duplicates", duplicates(m)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range m.Deliveries {
		fmt.Fprintf(w, "\n%s  %s  (%s, %d attempts)\n", d.Target, strings.ToUpper(d.State), d.ID, d.Attempt)
		switch {
		case d.DeliveredAt != nil:
			fmt.Fprintf(w, "  delivered at %s\n", d.DeliveredAt.UTC().Format(time.RFC3339Nano))
		case d.DeadAt != nil:
			fmt.Fprintf(w, "  dead since %s\n", d.DeadAt.UTC().Format(time.RFC3339Nano))
		case d.NextDue != nil:
			fmt.Fprintf(w, "  next due %s\n", d.NextDue.UTC().Format(time.RFC3339Nano))
		}
		if len(d.Attempts) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  #\tSTART\tDURATION\tSTATUS\tERROR\tANSWER")
		for _, a := range d.Attempts {
			answer := ""
			switch {
			case a.Response != nil:
				answer = strings.Join(strings.Fields(*a.Response), " ")
			case a.ResponseBase64 != nil:
				answer = "(binary, base64) " + *a.ResponseBase64
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", a.Number, a.Start.UTC().Format(time.RFC3339Nano),
				time.Duration(a.DurationMS*float64(time.Millisecond)).Round(time.Microsecond), statusText(a.Status),
				orDash(strings.Join(strings.Fields(a.Error), " ")), orDash(truncate(answer, 60)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	switch {
	case m.Body != nil:
		body := []byte(*m.Body)
		var pretty bytes.Buffer
		if json.Indent(&pretty, body, "", "  ") == nil {
			body = pretty.Bytes()
		}
		fmt.Fprintf(w, "\nbody:\n%s\n", body)
	case m.BodyBase64 != nil:
		raw, _ := base64.StdEncoding.DecodeString(*m.BodyBase64)
		fmt.Fprintf(w, "\nbody (%d bytes, not UTF-8; base64):\n%s\n", len(raw), *m.BodyBase64)
	}
	return nil
}

func duplicates(m *relay.MessageJSON) string {
	if m.Duplicates == 0 || m.LastDuplicateAt == nil {
		return "0"
	}
	return fmt.Sprintf("%d, last at %s", m.Duplicates, m.LastDuplicateAt.UTC().Format(time.RFC3339))
}

func statusText(s int) string {
	if s == 0 {
		return "-"
	}
	return fmt.Sprint(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
