// Package filters holds the checks a webhook passes before it is stored, and the provider presets
// that read its job ID and status.
package filters

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hookrelay/hookrelay/relay"
)

// MaxValueLen caps an extracted job ID or status, in bytes. Both become part of a store key and of
// delivery headers, so a sender must not be able to make them arbitrarily large.
const MaxValueLen = 512

// Providers lists the presets NewPreset knows.
func Providers() []string { return []string{"fashn", "fal", "fotor", "abstrakt", "generic"} }

// Generic configures the generic preset.
//
// A path is a dot-separated list of object keys, e.g. "data.items.0.id". A segment that is a
// non-negative integer (no leading zeros) indexes an array; on an object it is an ordinary key.
// Keys containing a dot cannot be addressed.
type Generic struct {
	JobIDPath string // this or JobIDHeader is required
	// JobIDHeader names a request header holding the job ID (an idempotency key), instead of a
	// path in the body. It is only as trustworthy as the route's verification: a signature over
	// the body alone does not cover it.
	JobIDHeader string
	StatusPath  string            // optional: without it every status is ""
	StatusMap   map[string]string // raw status -> normalised; unmapped values are kept raw
}

// Preset reads the job ID and normalised status out of one provider's webhook bodies. It is not
// changed after NewPreset, so one value serves concurrent requests.
//
// Extraction rules: a JSON string is used as is, a number by its literal text (1 is "1", 1.0 is
// "1.0"), true and false by their text. Null, an empty string, or a path that leads nowhere
// (a missing key, an index past the end, a scalar or null on the way) give "": no job ID, or no
// status. An object or array where the value is expected is an error, as is a value longer than
// MaxValueLen or one holding a control character (it could not be sent as a header). When an
// object repeats a key the last one counts, as with encoding/json and JavaScript's JSON.parse, so
// the relay reads the same ID the target will.
type Preset struct {
	name       string
	idHeader   string // canonical header name holding the job ID; "" reads idPath
	idPath     path
	statusPath path // no steps: the preset reads no status
	statusMap  map[string]string
	// otherStatus replaces a present status that statusMap lacks; "" keeps the raw value.
	otherStatus string
	ack         int
	// The route's defaults when it names none: the allowlist of the addresses the provider
	// documents as its webhooks' source (fotor signs nothing), and the verify type (fal signs).
	sourceAddrs []string
	verify      string
}

var _ relay.Extractor = (*Preset)(nil)

// NewPreset returns the preset called name: fashn, fal, fotor, abstrakt, or generic, which g
// configures. g must be nil for the others.
func NewPreset(name string, g *Generic) (*Preset, error) {
	var p *Preset
	switch name {
	case "fashn":
		p = builtin(name, "id", "status", map[string]string{"completed": "succeeded", "failed": "failed"})
		// FASHN sends only completed and failed today; anything else cannot be a final result.
		p.otherStatus = "processing"
	case "fal":
		// Not gateway_request_id: it changes between delivery attempts and would defeat dedupe.
		p = builtin(name, "request_id", "status", map[string]string{"OK": "succeeded", "ERROR": "failed"})
		p.verify = "fal"
	case "fotor":
		p = builtin(name, "taskId", "status", map[string]string{"0": "processing", "1": "succeeded", "2": "failed"})
		// Fotor's doc asks for a 200 to avoid duplicate notifications.
		p.ack, p.sourceAddrs = http.StatusOK, []string{"54.212.95.175", "44.236.127.35"}
	case "abstrakt":
		// Abstrakt already uses the normalised names.
		p = builtin(name, "job_id", "status", nil)
	case "generic":
		if g == nil {
			return nil, errors.New(`preset "generic": job ID path is required`)
		}
		return newGeneric(g)
	default:
		return nil, fmt.Errorf("unknown preset %q: want one of %s", name, strings.Join(Providers(), ", "))
	}
	if g != nil {
		return nil, fmt.Errorf("preset %q: paths and status map are only for the generic preset", name)
	}
	return p, nil
}

// builtin builds a fixed preset. Its paths are constants known to parse.
func builtin(name, idPath, statusPath string, statusMap map[string]string) *Preset {
	id, _ := parsePath(idPath)
	st, _ := parsePath(statusPath)
	return &Preset{name: name, idPath: id, statusPath: st, statusMap: statusMap, ack: http.StatusAccepted}
}

func newGeneric(g *Generic) (*Preset, error) {
	p := &Preset{name: "generic", ack: http.StatusAccepted}
	switch {
	case g.JobIDPath != "" && g.JobIDHeader != "":
		return nil, errors.New(`preset "generic": give a job ID path or a job ID header, not both`)
	case g.JobIDHeader != "":
		h, err := macHeaderName("job ID header", g.JobIDHeader)
		if err != nil {
			return nil, fmt.Errorf(`preset "generic": %w`, err)
		}
		p.idHeader = h
	case g.JobIDPath == "":
		return nil, errors.New(`preset "generic": job ID path is required`)
	default:
		id, err := parsePath(g.JobIDPath)
		if err != nil {
			return nil, fmt.Errorf(`preset "generic": job ID path: %w`, err)
		}
		p.idPath = id
	}
	var err error
	if g.StatusPath == "" {
		if len(g.StatusMap) > 0 {
			return nil, errors.New(`preset "generic": status map given without a status path`)
		}
		return p, nil
	}
	if p.statusPath, err = parsePath(g.StatusPath); err != nil {
		return nil, fmt.Errorf(`preset "generic": status path: %w`, err)
	}
	if len(g.StatusMap) > 0 {
		// A copy, so a caller changing its map later cannot race with requests.
		p.statusMap = make(map[string]string, len(g.StatusMap))
		for from, to := range g.StatusMap {
			// The same rules as an extracted status, so the map cannot produce what Extract refuses.
			switch {
			case from == "":
				return nil, errors.New(`preset "generic": status map has an empty key (an empty status is no status)`)
			case to == "":
				return nil, fmt.Errorf(`preset "generic": status map[%q] is empty`, from)
			case len(to) > MaxValueLen || hasControl([]byte(to)):
				return nil, fmt.Errorf(`preset "generic": status map[%q] is longer than %d bytes or holds a control character`, from, MaxValueLen)
			}
			p.statusMap[from] = to
		}
	}
	return p, nil
}

// Name returns the preset's name, e.g. "fal".
func (p *Preset) Name() string { return p.name }

// AckStatus is the HTTP status a sender gets for a newly stored webhook: 200 where the provider's
// doc asks for it (fotor), otherwise 202.
func (p *Preset) AckStatus() int { return p.ack }

// SourceAddrs are the addresses the provider documents as the source of its webhooks (fotor's,
// docs/DESIGN.md section 5): a route's allowlist unless it names one. A new slice each call.
func (p *Preset) SourceAddrs() []string { return slices.Clone(p.sourceAddrs) }

// Verify is the verify type of the provider's signature (fal): a route's unless it names one; ""
// when the provider has none.
func (p *Preset) Verify() string { return p.verify }

// Extract reads the job ID and normalised status out of body. An error means the body is not a JSON
// object or does not have the provider's shape; its message is safe to show the sender.
//
// It validates body once with json.Valid and then walks only the configured paths over the raw
// bytes, skipping everything else without decoding it: no map, no allocation beyond the results.
func (p *Preset) Extract(body []byte) (relay.Job, error) {
	if !json.Valid(body) {
		return relay.Job{}, errors.New("body is not valid JSON")
	}
	// encoding/json accepts invalid UTF-8 and turns it into U+FFFD, so two different job IDs would
	// read as one; a target may decode the bytes otherwise again.
	if !utf8.Valid(body) {
		return relay.Job{}, errors.New("body is not valid UTF-8")
	}
	// The same for an escaped half of a surrogate pair: "\ud800" and "\udbff" both decode to U+FFFD.
	if loneSurrogate(body) {
		return relay.Job{}, errors.New(`body holds an unpaired surrogate escape (\ud800-\udfff), which is not a character`)
	}
	start := skipSpace(body, 0)
	if body[start] != '{' {
		return relay.Job{}, fmt.Errorf("body is a JSON %s, want an object", typeName(body[start]))
	}
	var job relay.Job
	var raw []byte
	var err error
	if len(p.idPath.steps) > 0 {
		if raw, err = find(body, start, p.idPath, "job ID"); err != nil {
			return relay.Job{}, err
		}
		id, err := scalarText(raw, "job ID", p.idPath.text)
		if err != nil {
			return relay.Job{}, err
		}
		if id != nil {
			job.ID = string(id)
		}
	}
	if len(p.statusPath.steps) == 0 {
		return job, nil
	}
	raw, err = find(body, start, p.statusPath, "status")
	if err != nil {
		return relay.Job{}, err
	}
	st, err := scalarText(raw, "status", p.statusPath.text)
	if err != nil {
		return relay.Job{}, err
	}
	if st != nil {
		job.Status = p.normalise(st)
	}
	return job, nil
}

// ExtractRequest is Extract, with the job ID read from the configured header when there is one:
// present once, it is held to the rules of an extracted value; absent, there is no job ID.
func (p *Preset) ExtractRequest(h http.Header, body []byte) (relay.Job, error) {
	job, err := p.Extract(body)
	if err != nil || p.idHeader == "" {
		return job, err
	}
	vals := h.Values(p.idHeader)
	switch {
	case len(vals) > 1:
		return relay.Job{}, fmt.Errorf("job ID header %s is given %d times", p.idHeader, len(vals))
	case len(vals) == 0:
		return job, nil
	}
	v := strings.TrimSpace(vals[0])
	switch {
	case len(v) > MaxValueLen:
		return relay.Job{}, fmt.Errorf("job ID header %s is longer than %d bytes", p.idHeader, MaxValueLen)
	case hasControl([]byte(v)) || !utf8.ValidString(v):
		return relay.Job{}, fmt.Errorf("job ID header %s holds a control character or invalid UTF-8", p.idHeader)
	}
	job.ID = v
	return job, nil
}

var _ relay.RequestExtractor = (*Preset)(nil)

func (p *Preset) normalise(raw []byte) string {
	if s, ok := p.statusMap[string(raw)]; ok { // the compiler does not copy raw for this lookup
		return s
	}
	if p.otherStatus != "" {
		return p.otherStatus
	}
	return string(raw)
}

// path is a parsed JSON path.
type path struct {
	text  string // as configured, for messages
	steps []step
}

type step struct {
	key   string
	index int // the array index key names, or -1 when it names none
}

func parsePath(s string) (path, error) {
	if s == "" {
		return path{}, errors.New("empty path")
	}
	if !utf8.ValidString(s) {
		// JSON keys decode to valid UTF-8, so such a path could never match.
		return path{}, fmt.Errorf("path %q is not valid UTF-8", s)
	}
	segs := strings.Split(s, ".")
	p := path{text: s, steps: make([]step, len(segs))}
	for i, seg := range segs {
		if seg == "" {
			return path{}, fmt.Errorf("path %q has an empty segment", s)
		}
		p.steps[i] = step{key: seg, index: arrayIndex(seg)}
	}
	return p, nil
}

// arrayIndex returns the index seg names, or -1. "01" and "-1" name none: they stay keys.
func arrayIndex(seg string) int {
	if seg != "0" && seg[0] == '0' {
		return -1
	}
	for i := 0; i < len(seg); i++ {
		if seg[i] < '0' || seg[i] > '9' {
			return -1
		}
	}
	n, err := strconv.Atoi(seg)
	if err != nil { // too large to index anything
		return -1
	}
	return n
}

// The scanning below assumes body is valid JSON (Extract checked it with json.Valid), which keeps
// it short: no syntax errors to report and every container is closed.

// find returns the raw value at p in body, whose value at offset i is an object, or nil when the
// path leads nowhere. An object on the way with keys that differ from the path's key only in case
// is an error: a target that matches keys case-insensitively (Go's encoding/json) could read
// another value than the relay.
func find(body []byte, i int, p path, what string) ([]byte, error) {
	for n, s := range p.steps {
		ok := false
		switch body[i] {
		case '{':
			var clash bool
			i, ok, clash = member(body, i, s.key)
			if clash {
				where := "the body"
				if n > 0 {
					where = fmt.Sprintf("the object at %q", strings.Join(p.segments()[:n], "."))
				}
				return nil, fmt.Errorf("%s at %q: %s has keys that differ from %q only in case, which a target may read as one", what, p.text, where, s.key)
			}
		case '[':
			i, ok = element(body, i, s.index)
		}
		if !ok {
			return nil, nil
		}
	}
	return body[i:skipValue(body, i)], nil
}

// segments returns the path's keys.
func (p path) segments() []string {
	out := make([]string, len(p.steps))
	for i, s := range p.steps {
		out[i] = s.key
	}
	return out
}

// member returns the offset of the value of key in the object at body[i]; the last one wins when
// key repeats. clash reports a key other than key that equals it but for case.
func member(body []byte, i int, key string) (at int, found, clash bool) {
	i = skipSpace(body, i+1)
	if body[i] == '}' {
		return 0, false, false
	}
	for {
		end := skipString(body, i)
		k := body[i:end]
		i = skipSpace(body, end) // at ':'
		i = skipSpace(body, i+1) // at the value
		switch keyMatch(k, key) {
		case matchExact:
			at, found = i, true
		case matchFold:
			clash = true
		}
		i = skipSpace(body, skipValue(body, i)) // at ',' or '}'
		if body[i] == '}' {
			return at, found, clash
		}
		i = skipSpace(body, i+1)
	}
}

const (
	matchNone = iota
	matchExact
	matchFold // equal under Unicode case folding, as encoding/json matches field names
)

// keyMatch compares the quoted key with want, exactly and under case folding.
func keyMatch(quoted []byte, want string) int {
	raw := quoted[1 : len(quoted)-1]
	if needsDecode(raw) {
		var k string
		if json.Unmarshal(quoted, &k) != nil {
			return matchNone
		}
		raw = []byte(k)
	}
	switch {
	case string(raw) == want:
		return matchExact
	case bytes.EqualFold(raw, []byte(want)):
		return matchFold
	}
	return matchNone
}

// element returns the offset of element n of the array at body[i].
func element(body []byte, i, n int) (int, bool) {
	if n < 0 {
		return 0, false
	}
	i = skipSpace(body, i+1)
	if body[i] == ']' {
		return 0, false
	}
	for k := 0; k < n; k++ {
		i = skipSpace(body, skipValue(body, i)) // at ',' or ']'
		if body[i] == ']' {
			return 0, false
		}
		i = skipSpace(body, i+1)
	}
	return i, true
}

// loneSurrogate reports a \u escape of a UTF-16 surrogate that is not a high one followed at once
// by an escaped low one. body is valid JSON, so a backslash is always the start of an escape.
func loneSurrogate(body []byte) bool {
	for i := 0; ; {
		k := bytes.IndexByte(body[i:], '\\')
		if k < 0 {
			return false
		}
		i += k
		if body[i+1] != 'u' {
			i += 2
			continue
		}
		switch v := hex4(body[i+2 : i+6]); {
		case v >= 0xdc00 && v <= 0xdfff:
			return true
		case v >= 0xd800 && v <= 0xdbff:
			if i+12 > len(body) || body[i+6] != '\\' || body[i+7] != 'u' {
				return true
			}
			if low := hex4(body[i+8 : i+12]); low < 0xdc00 || low > 0xdfff {
				return true
			}
			i += 12
		default:
			i += 6
		}
	}
}

// hex4 is the value of four hex digits (valid JSON guarantees them).
func hex4(b []byte) int {
	v := 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		v = v<<4 | int(c)
	}
	return v
}

// needsDecode reports whether a string's raw bytes differ from its decoded text: escapes, or
// invalid UTF-8, which decoding replaces with U+FFFD.
func needsDecode(raw []byte) bool {
	return bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw)
}

// scalarText returns the text of the raw value, or nil when there is none (absent, null, "").
func scalarText(raw []byte, what, at string) ([]byte, error) {
	if raw == nil {
		return nil, nil
	}
	text := raw
	switch raw[0] {
	case '{', '[':
		return nil, fmt.Errorf("%s at %q is an %s, want a string or number", what, at, typeName(raw[0]))
	case 'n':
		return nil, nil
	case '"':
		text = raw[1 : len(raw)-1]
		if needsDecode(text) {
			// An escape takes at most 6 bytes per decoded byte: a longer string is surely over the
			// cap, and is refused before spending an allocation on it.
			if len(text) > 6*MaxValueLen {
				return nil, tooLong(what, at)
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, fmt.Errorf("%s at %q is not a valid JSON string", what, at) // unreachable after json.Valid
			}
			text = []byte(s)
		}
	}
	switch {
	case len(text) == 0:
		return nil, nil
	case len(text) > MaxValueLen:
		return nil, tooLong(what, at)
	case hasControl(text):
		return nil, fmt.Errorf("%s at %q contains a control character", what, at)
	}
	return text, nil
}

func tooLong(what, at string) error {
	return fmt.Errorf("%s at %q is longer than %d bytes", what, at, MaxValueLen)
}

// hasControl reports an ASCII control character, which net/http refuses in a header value.
func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

func typeName(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 'n':
		return "null"
	case 't', 'f':
		return "boolean"
	default:
		return "number"
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// skipString returns the offset just past the string starting at b[i]. It jumps from quote to
// quote with bytes.IndexByte, the bulk of a payload being strings (URLs), and treats a quote as
// escaped when an odd number of backslashes precede it.
func skipString(b []byte, i int) int {
	for i++; ; i++ {
		i += bytes.IndexByte(b[i:], '"') // found: the JSON is valid
		n := 0
		for k := i - 1; b[k] == '\\'; k-- { // stops at the opening quote at the latest
			n++
		}
		if n%2 == 0 {
			return i + 1
		}
	}
}

// skipValue returns the offset just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\n', '\r', '\t':
				return i
			}
			i++
		}
		return i
	}
}
