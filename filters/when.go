package filters

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hookrelay/hookrelay/relay"
)

// When is a target's filter on a route: the webhook's normalised status is one of Status (when
// given) and, for each body path, the value there equals the given text (a string's value, a
// number's literal text, true or false). It is not changed after NewWhen, so one value serves
// concurrent requests.
type When struct {
	status map[string]bool // nil: any status
	body   []bodyEquals
}

type bodyEquals struct {
	path path
	want string
}

var _ relay.Matcher = (*When)(nil)

// NewWhen builds a filter for the webhooks of preset p. A status that p never produces (a raw
// value it normalises to another, a value outside a closed set, or any status when p reads none)
// is refused, since the filter could never match it. Errors about one condition are
// relay.FieldErrors naming "status[i]" or "body".
func NewWhen(p *Preset, status []string, body map[string]string) (*When, error) {
	if len(status) == 0 && len(body) == 0 {
		return nil, errors.New("empty: give status, body, or both")
	}
	w := &When{}
	var errs []error
	if len(status) > 0 {
		w.status = map[string]bool{}
	}
	for i, s := range status {
		if err := p.CheckStatus(s); err != nil {
			errs = append(errs, &relay.FieldError{Field: fmt.Sprintf("status[%d]", i), Err: err})
		}
		w.status[s] = true
	}
	for _, k := range slices.Sorted(maps.Keys(body)) {
		pt, err := parsePath(k)
		switch {
		case err != nil:
			errs = append(errs, &relay.FieldError{Field: "body", Err: err})
		case body[k] == "":
			errs = append(errs, relay.FieldErrorf("body", "path %q: an empty value never matches (an empty string is no value)", k))
		}
		w.body = append(w.body, bodyEquals{path: pt, want: body[k]})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return w, nil
}

// Match reports whether the webhook passes every condition. body was checked by Extract.
func (w *When) Match(job relay.Job, body []byte) bool {
	if w.status != nil && !w.status[job.Status] {
		return false
	}
	if len(w.body) == 0 {
		return true
	}
	start := skipSpace(body, 0)
	if start >= len(body) || body[start] != '{' {
		return false
	}
	for _, b := range w.body {
		raw, err := find(body, start, b.path, "value")
		if err != nil { // keys differing only in case on the path: ambiguous, so no match
			return false
		}
		got, err := scalarText(raw, "value", b.path.text)
		if err != nil || got == nil || string(got) != b.want {
			return false
		}
	}
	return true
}

// CheckStatus reports why s cannot be the status of one of this preset's webhooks, or nil when
// it can: a filter on it can match.
func (p *Preset) CheckStatus(s string) error {
	if len(p.statusPath.steps) == 0 {
		return fmt.Errorf("preset %s reads no status, so no webhook has one (for generic: set generic.status)", p.name)
	}
	if s == "" {
		return errors.New("empty; a webhook without a status matches no status filter")
	}
	if to, ok := p.statusMap[s]; ok && to != s {
		return fmt.Errorf("%q is never seen: preset %s normalises it to %q; filter on %q", s, p.name, to, to)
	}
	if p.otherStatus == "" {
		return nil // unmapped values pass raw: any may come
	}
	known := map[string]bool{p.otherStatus: true}
	for _, to := range p.statusMap {
		known[to] = true
	}
	if !known[s] {
		return fmt.Errorf("%q is not a status of preset %s, whose statuses are %s", s, p.name,
			strings.Join(slices.Sorted(maps.Keys(known)), ", "))
	}
	return nil
}
