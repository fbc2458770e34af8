package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

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

const dlqAbout = `Inspect, replay and drop dead letters through the admin API.

  list   [-route R] [-target T] [-since 24h|RFC3339] [-limit N] [-json]
  show   ID
  replay ID | replay [-route R] [-target T] [-since S] | replay -all
  drop   ID

` + adminFlagsHelp

func cmdDLQ(args []string, stdout, stderr io.Writer) error {
	c := newCommand("dlq", "dlq <list|show|replay|drop> [flags] [ID]", dlqAbout)
	client := adminFlags(c.FlagSet)
	route := c.String("route", "", "only this route")
	target := c.String("target", "", "only this target")
	since := c.String("since", "", "only dead letters from this long ago (24h) or this time (RFC 3339) on")
	limit := c.Int("limit", 100, "list at most this many")
	asJSON := c.Bool("json", false, "print the API's JSON")
	all := c.Bool("all", false, "replay: every dead letter")
	pos, err := c.parse(args, stdout)
	if err != nil {
		return err
	}
	sub, pos, err := c.subcommand(pos, "list", "show", "replay", "drop")
	if err != nil {
		return err
	}
	api, err := client()
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
	switch {
	case sub == "list" && len(pos) > 0:
		return fmt.Errorf("dlq list: unexpected argument %q (filters are flags: -route, -target, -since)", pos[0])
	case len(pos) > 1 || (len(pos) == 0 && (sub == "show" || sub == "drop")):
		return fmt.Errorf("dlq %s: give exactly one dead letter ID", sub)
	case len(pos) == 1:
		id = pos[0]
	}
	switch sub {
	case "list":
		filter.Set("limit", fmt.Sprint(*limit))
		var page struct {
			DeadLetters []json.RawMessage `json:"dead_letters"`
			Next        string            `json:"next"`
		}
		if err := api.do(http.MethodGet, "/v1/dead-letters", filter, &page); err != nil {
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
			// The error is the last column, whole: white space folded so that it stays one line.
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.ID, d.Route, d.Target, d.JobID, d.Attempt,
				d.LastStatus, d.DeadAt.UTC().Format(time.RFC3339), strings.Join(strings.Fields(d.LastError), " "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if page.Next != "" {
			fmt.Fprintf(stderr, "more: relay dlq list ... (the API's next cursor is %s)\n", page.Next)
		}
		return nil
	case "show":
		var d json.RawMessage
		if err := api.do(http.MethodGet, "/v1/dead-letters/"+url.PathEscape(id), nil, &d); err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "replay":
		var res struct {
			Replayed int `json:"replayed"`
		}
		switch {
		case id != "":
			err = api.do(http.MethodPost, "/v1/dead-letters/"+url.PathEscape(id)+"/replay", nil, &res)
		case len(filter) == 0 && !*all:
			return errors.New("dlq replay: give an ID, a filter (-route, -target, -since), or -all")
		default:
			if *all {
				filter.Set("all", "true")
			}
			err = api.do(http.MethodPost, "/v1/dead-letters/replay", filter, &res)
		}
		if err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "replayed %d\n", res.Replayed)
		return err
	}
	if err := api.do(http.MethodDelete, "/v1/dead-letters/"+url.PathEscape(id), nil, nil); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "dropped %s\n", id)
	return err
}
