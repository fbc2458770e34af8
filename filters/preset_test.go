package filters_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

func mustPreset(t testing.TB, name string, g *filters.Generic) *filters.Preset {
	t.Helper()
	p, err := filters.NewPreset(name, g)
	if err != nil {
		t.Fatalf("NewPreset(%q): %v", name, err)
	}
	return p
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The example payloads of the providers' own docs, copied verbatim into testdata.
func TestExtractProviderExamples(t *testing.T) {
	tests := []struct {
		file, preset string
		want         relay.Job
	}{
		{"fashn_completed.json", "fashn", relay.Job{ID: "123a87r9-4129-4bb3-be18-9c9fb5bd7fc1-u1", Status: "succeeded"}},
		{"fashn_failed.json", "fashn", relay.Job{ID: "123a87r9-4129-4bb3-be18-9c9fb5bd7fc1-u1", Status: "failed"}},
		{"fal_ok.json", "fal", relay.Job{ID: "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d", Status: "succeeded"}},
		{"fal_error.json", "fal", relay.Job{ID: "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d", Status: "failed"}},
		{"fotor_avatar.json", "fotor", relay.Job{ID: "39371b3800cc4a7e9e24867b0dfdf25b", Status: "succeeded"}},
		{"abstrakt_succeeded.json", "abstrakt", relay.Job{ID: "job_abc123xyz", Status: "succeeded"}},
		{"abstrakt_failed.json", "abstrakt", relay.Job{ID: "job_abc123xyz", Status: "failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := mustPreset(t, tt.preset, nil).Extract(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestExtract(t *testing.T) {
	long := strings.Repeat("x", filters.MaxValueLen)
	generic := &filters.Generic{
		JobIDPath:  "data.items.1.id",
		StatusPath: "data.state",
		StatusMap:  map[string]string{"done": "succeeded", "error": "failed"},
	}
	tests := []struct {
		name   string
		preset string
		g      *filters.Generic
		body   string
		want   relay.Job
	}{
		// Status normalisation per provider.
		{"fashn other status", "fashn", nil, `{"id":"a","status":"starting"}`, relay.Job{ID: "a", Status: "processing"}},
		{"fashn missing status", "fashn", nil, `{"id":"a"}`, relay.Job{ID: "a"}},
		{"fashn null status", "fashn", nil, `{"id":"a","status":null}`, relay.Job{ID: "a"}},
		{"fal raw status kept", "fal", nil, `{"request_id":"r","status":"IN_PROGRESS"}`, relay.Job{ID: "r", Status: "IN_PROGRESS"}},
		{"fal gateway_request_id ignored", "fal", nil,
			`{"gateway_request_id":"g1","request_id":"r","status":"OK"}`, relay.Job{ID: "r", Status: "succeeded"}},
		{"fal gateway_request_id after", "fal", nil,
			`{"request_id":"r","status":"OK","gateway_request_id":"g2"}`, relay.Job{ID: "r", Status: "succeeded"}},
		{"fal gateway_request_id only", "fal", nil, `{"gateway_request_id":"g","status":"OK"}`, relay.Job{Status: "succeeded"}},
		{"fotor 0", "fotor", nil, `{"taskId":"t","status":0}`, relay.Job{ID: "t", Status: "processing"}},
		{"fotor 1", "fotor", nil, `{"taskId":"t","status":1}`, relay.Job{ID: "t", Status: "succeeded"}},
		{"fotor 2", "fotor", nil, `{"taskId":"t","status":2}`, relay.Job{ID: "t", Status: "failed"}},
		{"fotor unknown 7", "fotor", nil, `{"taskId":"t","status":7}`, relay.Job{ID: "t", Status: "7"}},
		{"fotor 1.0 is literal", "fotor", nil, `{"taskId":"t","status":1.0}`, relay.Job{ID: "t", Status: "1.0"}},
		{"abstrakt processing", "abstrakt", nil, `{"job_id":"j","status":"processing"}`, relay.Job{ID: "j", Status: "processing"}},
		{"abstrakt raw", "abstrakt", nil, `{"job_id":"j","status":"queued"}`, relay.Job{ID: "j", Status: "queued"}},

		// Generic: nested path, array index, status map.
		{"generic mapped", "generic", generic,
			`{"data":{"items":[{"id":"first"},{"id":"second"}],"state":"done"}}`, relay.Job{ID: "second", Status: "succeeded"}},
		{"generic mapped failed", "generic", generic,
			`{"data":{"state":"error","items":[{},{"id":"x"}]}}`, relay.Job{ID: "x", Status: "failed"}},
		{"generic unmapped", "generic", generic,
			`{"data":{"items":[0,{"id":"x"}],"state":"retrying"}}`, relay.Job{ID: "x", Status: "retrying"}},
		{"generic index past end", "generic", generic, `{"data":{"items":[{"id":"x"}]}}`, relay.Job{}},
		{"generic index on object is a key", "generic", generic, `{"data":{"items":{"1":{"id":"k"}}}}`, relay.Job{ID: "k"}},
		{"generic scalar on the way", "generic", generic, `{"data":"oops"}`, relay.Job{}},
		{"generic null on the way", "generic", generic, `{"data":null}`, relay.Job{}},
		{"generic key on array", "generic", &filters.Generic{JobIDPath: "a.id"}, `{"a":[{"id":"x"}]}`, relay.Job{}},
		{"generic no status path", "generic", &filters.Generic{JobIDPath: "a.b"}, `{"a":{"b":"x"},"status":"OK"}`, relay.Job{ID: "x"}},
		{"generic deep", "generic", &filters.Generic{JobIDPath: "a.0.0.b", StatusPath: "s"},
			`{"s":true,"a":[[{"b":"deep"}]]}`, relay.Job{ID: "deep", Status: "true"}},
		{"generic leading zero is a key", "generic", &filters.Generic{JobIDPath: "a.01"}, `{"a":["x","y"]}`, relay.Job{}},

		// Value kinds.
		{"missing ID", "fashn", nil, `{"status":"completed"}`, relay.Job{Status: "succeeded"}},
		{"null ID", "fashn", nil, `{"id":null,"status":"completed"}`, relay.Job{Status: "succeeded"}},
		{"empty ID", "fashn", nil, `{"id":"","status":"failed"}`, relay.Job{Status: "failed"}},
		{"numeric ID", "fotor", nil, `{"taskId":12345,"status":1}`, relay.Job{ID: "12345", Status: "succeeded"}},
		{"numeric ID literal text", "fotor", nil, `{"taskId":-1.50e+3}`, relay.Job{ID: "-1.50e+3"}},
		{"huge numeric ID", "fotor", nil, `{"taskId":123456789012345678901234567890}`, relay.Job{ID: "123456789012345678901234567890"}},
		{"boolean ID", "fashn", nil, `{"id":false}`, relay.Job{ID: "false"}},
		{"empty object", "fal", nil, `{}`, relay.Job{}},
		{"whitespace", "fal", nil, " \r\n\t{ \"request_id\" :\t\"r\" , \"status\" : \"ERROR\" }\n", relay.Job{ID: "r", Status: "failed"}},
		{"whitespace after scalars", "fotor", nil, "{\"taskId\":12\t,\"status\":1\r\n}", relay.Job{ID: "12", Status: "succeeded"}},
		{"whitespace after literal", "fashn", nil, "{\"id\":true\t,\"status\":null }", relay.Job{ID: "true"}},
		{"ID at max length", "fashn", nil, `{"id":"` + long + `"}`, relay.Job{ID: long}},

		// Decoding follows encoding/json.
		{"escaped key", "fotor", nil, `{"t\u0061skId":"t","st\u0061tus":1}`, relay.Job{ID: "t", Status: "succeeded"}},
		{"escaped value", "fashn", nil, `{"id":"a\/b\u00e9\"q"}`, relay.Job{ID: `a/bé"q`}},
		{"escaped surrogate pair", "fashn", nil, `{"id":"a\ud83d\ude00","x":"\\ud800"}`, relay.Job{ID: "a😀"}},
		{"escaped status", "fashn", nil, `{"id":"a","status":"c\u006fmpleted"}`, relay.Job{ID: "a", Status: "succeeded"}},
		{"duplicate key last wins", "fotor", nil, `{"taskId":"first","status":0,"taskId":"last","status":2}`, relay.Job{ID: "last", Status: "failed"}},
		{"duplicate key last null", "fashn", nil, `{"id":"first","id":null}`, relay.Job{}},
		{"nested lookalike ignored", "fashn", nil, `{"x":{"id":"inner","s":"}"},"id":"outer"}`, relay.Job{ID: "outer"}},
		{"backslash runs before quotes", "fashn", nil, `{"a":"\\\"}\\\\","id":"ok\\"}`, relay.Job{ID: `ok\`}},
		{"braces inside strings", "fashn", nil, `{"a":"{[\"]}","b":["]",{"}":"\\"}],"id":"ok"}`, relay.Job{ID: "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mustPreset(t, tt.preset, tt.g).Extract([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestExtractErrors(t *testing.T) {
	long := strings.Repeat("x", filters.MaxValueLen+1)
	nested := &filters.Generic{JobIDPath: "data.id", StatusPath: "data.status"}
	tests := []struct {
		name    string
		preset  string
		g       *filters.Generic
		body    string
		wantErr string
	}{
		{"malformed JSON", "fashn", nil, `{"id":"a",}`, "body is not valid JSON"},
		{"invalid UTF-8 ID", "fashn", nil, "{\"id\":\"a\xffb\"}", "body is not valid UTF-8"},
		{"invalid UTF-8 elsewhere", "fashn", nil, "{\"id\":\"a\",\"x\":\"\xfe\"}", "body is not valid UTF-8"},
		{"lone high surrogate", "fashn", nil, `{"id":"job-\ud800"}`, `body holds an unpaired surrogate escape (\ud800-\udfff), which is not a character`},
		{"lone low surrogate", "fashn", nil, `{"x":"\uDC00","id":"a"}`, `body holds an unpaired surrogate escape (\ud800-\udfff), which is not a character`},
		{"high surrogate then a letter", "fashn", nil, `{"id":"\ud83dx"}`, `body holds an unpaired surrogate escape (\ud800-\udfff), which is not a character`},
		{"two high surrogates", "fashn", nil, `{"id":"\ud83d\ud83d"}`, `body holds an unpaired surrogate escape (\ud800-\udfff), which is not a character`},
		{"ID key in two cases", "fashn", nil, `{"id":"A","ID":"B"}`, `job ID at "id": the body has keys that differ from "id" only in case, which a target may read as one`},
		{"ID key in another case only", "fashn", nil, `{"Id":"B","status":"completed"}`, `job ID at "id": the body has keys that differ from "id" only in case, which a target may read as one`},
		{"ID key folded by Unicode", "fotor", nil, "{\"taskId\":\"a\",\"tas\u212aId\":\"b\"}", `job ID at "taskId": the body has keys that differ from "taskId" only in case, which a target may read as one`},
		{"escaped key in another case", "fashn", nil, `{"id":"A","\u0049D":"B"}`, `job ID at "id": the body has keys that differ from "id" only in case, which a target may read as one`},
		{"status key in two cases", "fashn", nil, `{"id":"A","status":"completed","Status":"failed"}`, `status at "status": the body has keys that differ from "status" only in case, which a target may read as one`},
		{"nested key in two cases", "generic", nested, `{"data":{"id":"a"},"Data":{"id":"b"}}`, `job ID at "data.id": the body has keys that differ from "data" only in case, which a target may read as one`},
		{"deeper key in two cases", "generic", nested, `{"data":{"id":"a","iD":"b"}}`, `job ID at "data.id": the object at "data" has keys that differ from "id" only in case, which a target may read as one`},
		{"truncated", "fashn", nil, `{"id":"a"`, "body is not valid JSON"},
		{"empty body", "fal", nil, ``, "body is not valid JSON"},
		{"trailing data", "fal", nil, `{} {}`, "body is not valid JSON"},
		{"top-level array", "fashn", nil, `[{"id":"a"}]`, "body is a JSON array, want an object"},
		{"top-level string", "fashn", nil, `"id"`, "body is a JSON string, want an object"},
		{"top-level null", "fashn", nil, `null`, "body is a JSON null, want an object"},
		{"top-level number", "fotor", nil, ` 1 `, "body is a JSON number, want an object"},
		{"object ID", "generic", nested, `{"data":{"id":{"value":"a"}}}`, `job ID at "data.id" is an object, want a string or number`},
		{"array ID", "fal", nil, `{"request_id":["a"]}`, `job ID at "request_id" is an array, want a string or number`},
		{"object status", "fotor", nil, `{"taskId":"t","status":{"code":1}}`, `status at "status" is an object, want a string or number`},
		{"array status nested", "generic", nested, `{"data":{"id":"a","status":[]}}`, `status at "data.status" is an array, want a string or number`},
		{"over-long ID", "fashn", nil, `{"id":"` + long + `"}`, `job ID at "id" is longer than 512 bytes`},
		{"over-long escaped ID", "fashn", nil, `{"id":"` + strings.Repeat(`\u0041`, filters.MaxValueLen+1) + `"}`, `job ID at "id" is longer than 512 bytes`},
		{"over-long numeric ID", "fotor", nil, `{"taskId":` + strings.Repeat("9", filters.MaxValueLen+1) + `}`, `job ID at "taskId" is longer than 512 bytes`},
		{"over-long status", "abstrakt", nil, `{"job_id":"j","status":"` + long + `"}`, `status at "status" is longer than 512 bytes`},
		{"control character ID", "fashn", nil, `{"id":"a\nb"}`, `job ID at "id" contains a control character`},
		{"NUL ID", "abstrakt", nil, `{"job_id":"\u0000"}`, `job ID at "job_id" contains a control character`},
		{"DEL status", "abstrakt", nil, "{\"job_id\":\"j\",\"status\":\"a\x7f\"}", `status at "status" contains a control character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mustPreset(t, tt.preset, tt.g).Extract([]byte(tt.body))
			if err == nil {
				t.Fatalf("got %+v, want error %q", got, tt.wantErr)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("error %q, want %q", err, tt.wantErr)
			}
			if got != (relay.Job{}) {
				t.Errorf("got %+v with an error, want the zero Job", got)
			}
		})
	}
}

func TestNewPreset(t *testing.T) {
	for _, tt := range []struct {
		name, verify string
		ack          int
		sources      []string
	}{{"fashn", "", 202, nil}, {"fal", "fal", 202, nil}, {"fotor", "", 200, []string{"54.212.95.175", "44.236.127.35"}},
		{"abstrakt", "", 202, nil}, {"generic", "", 202, nil}} {
		var g *filters.Generic
		if tt.name == "generic" {
			g = &filters.Generic{JobIDPath: "id"}
		}
		p := mustPreset(t, tt.name, g)
		if p.Name() != tt.name || p.AckStatus() != tt.ack || p.Verify() != tt.verify || !slices.Equal(p.SourceAddrs(), tt.sources) {
			t.Errorf("%s: Name %q, AckStatus %d, Verify %q, SourceAddrs %v; want %q, %d, %q, %v", tt.name, p.Name(), p.AckStatus(),
				p.Verify(), p.SourceAddrs(), tt.name, tt.ack, tt.verify, tt.sources)
		}
		if got := p.SourceAddrs(); len(got) > 0 {
			got[0] = "0.0.0.0/0"
			if p.SourceAddrs()[0] == got[0] {
				t.Errorf("%s: changing the returned slice changed the defaults", tt.name)
			}
		}
	}

	tests := []struct {
		name    string
		preset  string
		g       *filters.Generic
		wantErr string
	}{
		{"unknown", "replicate", nil, `unknown preset "replicate": want one of fashn, fal, fotor, abstrakt, generic`},
		{"empty name", "", nil, `unknown preset "": want one of fashn, fal, fotor, abstrakt, generic`},
		{"case matters", "FAL", nil, `unknown preset "FAL": want one of fashn, fal, fotor, abstrakt, generic`},
		{"generic without config", "generic", nil, `preset "generic": job ID path is required`},
		{"generic without ID path", "generic", &filters.Generic{StatusPath: "status"}, `preset "generic": job ID path is required`},
		{"builtin with generic", "fal", &filters.Generic{JobIDPath: "id"}, `preset "fal": paths and status map are only for the generic preset`},
		{"builtin with empty generic", "fotor", &filters.Generic{}, `preset "fotor": paths and status map are only for the generic preset`},
		{"empty segment", "generic", &filters.Generic{JobIDPath: "data..id"}, `preset "generic": job ID path: path "data..id" has an empty segment`},
		{"leading dot", "generic", &filters.Generic{JobIDPath: ".id"}, `preset "generic": job ID path: path ".id" has an empty segment`},
		{"trailing dot", "generic", &filters.Generic{JobIDPath: "id."}, `preset "generic": job ID path: path "id." has an empty segment`},
		{"bad status path", "generic", &filters.Generic{JobIDPath: "id", StatusPath: "a..b"}, `preset "generic": status path: path "a..b" has an empty segment`},
		{"invalid UTF-8 path", "generic", &filters.Generic{JobIDPath: "a\xff"}, `preset "generic": job ID path: path "a\xff" is not valid UTF-8`},
		{"map without status path", "generic", &filters.Generic{JobIDPath: "id", StatusMap: map[string]string{"a": "b"}},
			`preset "generic": status map given without a status path`},
		{"map empty key", "generic", &filters.Generic{JobIDPath: "id", StatusPath: "s", StatusMap: map[string]string{"": "failed"}},
			`preset "generic": status map has an empty key (an empty status is no status)`},
		{"map empty value", "generic", &filters.Generic{JobIDPath: "id", StatusPath: "s", StatusMap: map[string]string{"x": ""}},
			`preset "generic": status map["x"] is empty`},
		{"map bad value", "generic", &filters.Generic{JobIDPath: "id", StatusPath: "s", StatusMap: map[string]string{"x": "a\nb"}},
			`preset "generic": status map["x"] is longer than 512 bytes or holds a control character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := filters.NewPreset(tt.preset, tt.g)
			if err == nil {
				t.Fatalf("got preset %q, want error %q", p.Name(), tt.wantErr)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("error %q, want %q", err, tt.wantErr)
			}
		})
	}
}

// The preset keeps its own copy of the status map, so the caller's later writes cannot reach it.
func TestGenericCopiesStatusMap(t *testing.T) {
	m := map[string]string{"done": "succeeded"}
	p := mustPreset(t, "generic", &filters.Generic{JobIDPath: "id", StatusPath: "s", StatusMap: m})
	m["done"] = "failed"
	got, err := p.Extract([]byte(`{"id":"a","s":"done"}`))
	if err != nil || got.Status != "succeeded" {
		t.Errorf("got %+v, %v; want status succeeded", got, err)
	}
}

// presetSpec restates a preset's configuration for the reference implementation below.
type presetSpec struct {
	name        string
	g           *filters.Generic
	idPath      string
	statusPath  string
	statusMap   map[string]string
	otherStatus string
}

func fuzzSpecs() []presetSpec {
	gm := map[string]string{"done": "succeeded", "1": "failed"}
	return []presetSpec{
		{name: "fashn", idPath: "id", statusPath: "status", statusMap: map[string]string{"completed": "succeeded", "failed": "failed"}, otherStatus: "processing"},
		{name: "fal", idPath: "request_id", statusPath: "status", statusMap: map[string]string{"OK": "succeeded", "ERROR": "failed"}},
		{name: "fotor", idPath: "taskId", statusPath: "status", statusMap: map[string]string{"0": "processing", "1": "succeeded", "2": "failed"}},
		{name: "abstrakt", idPath: "job_id", statusPath: "status"},
		{name: "generic", g: &filters.Generic{JobIDPath: "data.items.0.id", StatusPath: "data.status", StatusMap: gm},
			idPath: "data.items.0.id", statusPath: "data.status", statusMap: gm},
		{name: "generic", g: &filters.Generic{JobIDPath: "avatarResult.1.images.0.id", StatusPath: "avatarResult.2.templateId"},
			idPath: "avatarResult.1.images.0.id", statusPath: "avatarResult.2.templateId"},
	}
}

// refDecode is the first half of the slow, obvious implementation: decode the whole body with
// encoding/json. ok is false where every preset must return an error.
func refDecode(body []byte) (v any, ok bool) {
	if !json.Valid(body) || !utf8.Valid(body) || refLoneSurrogate(body) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	_, isObj := v.(map[string]any)
	return v, isObj
}

// refEscape matches one escape; matched left to right, an escaped backslash is consumed whole.
var refEscape = regexp.MustCompile(`\\(u[0-9a-fA-F]{4}|.)`)

// refLoneSurrogate reports a \u escape of a surrogate that does not pair with its neighbour.
func refLoneSurrogate(body []byte) bool {
	ms := refEscape.FindAllSubmatchIndex(body, -1)
	for i := 0; i < len(ms); i++ {
		r, ok := refEscapeRune(body, ms[i])
		if !ok || !utf16.IsSurrogate(r) {
			continue
		}
		if i+1 == len(ms) || ms[i+1][0] != ms[i][1] {
			return true
		}
		r2, ok := refEscapeRune(body, ms[i+1])
		if !ok || utf16.DecodeRune(r, r2) == utf8.RuneError {
			return true
		}
		i++
	}
	return false
}

func refEscapeRune(body []byte, m []int) (rune, bool) {
	esc := string(body[m[2]:m[3]])
	if len(esc) != 5 {
		return 0, false
	}
	v, err := strconv.ParseUint(esc[1:], 16, 32)
	return rune(v), err == nil
}

// refExtract is the second half: walk the paths through the decoded maps and slices. ok is false
// where Extract must return an error.
func refExtract(s presetSpec, v any) (job relay.Job, ok bool) {
	if refClash(v, s.idPath) || (s.statusPath != "" && refClash(v, s.statusPath)) {
		return relay.Job{}, false
	}
	if job.ID, ok = refText(refFind(v, s.idPath)); !ok {
		return relay.Job{}, false
	}
	if s.statusPath == "" {
		return job, true
	}
	st, ok := refText(refFind(v, s.statusPath))
	if !ok {
		return relay.Job{}, false
	}
	switch mapped, inMap := s.statusMap[st]; {
	case st == "":
	case inMap:
		job.Status = mapped
	case s.otherStatus != "":
		job.Status = s.otherStatus
	default:
		job.Status = st
	}
	return job, true
}

// refClash reports an object on path with a key that equals the path's key but for case.
func refClash(v any, path string) bool {
	for _, seg := range strings.Split(path, ".") {
		if m, isMap := v.(map[string]any); isMap {
			for k := range m {
				if k != seg && strings.EqualFold(k, seg) {
					return true
				}
			}
		}
		if v = refFind(v, seg); v == nil {
			return false
		}
	}
	return false
}

func refFind(v any, path string) any {
	for _, seg := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[seg]
		case []any:
			n, err := strconv.Atoi(seg)
			if err != nil || n < 0 || n >= len(x) || (seg[0] == '0' && seg != "0") || seg[0] == '+' || seg[0] == '-' {
				return nil
			}
			v = x[n]
		default:
			return nil
		}
	}
	return v
}

func refText(v any) (string, bool) {
	var s string
	switch x := v.(type) {
	case nil:
	case string:
		s = x
	case json.Number:
		s = string(x)
	case bool:
		s = strconv.FormatBool(x)
	default:
		return "", false
	}
	if len(s) > filters.MaxValueLen || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", false
	}
	return s, true
}

func FuzzExtract(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no testdata: %v", err)
	}
	for _, name := range files {
		f.Add(readTestdata(f, filepath.Base(name)), "taskId")
	}
	for _, body := range []string{
		``, ` `, `{}`, `[]`, `null`, `"x"`, `0`, `{"id":"a"`, `{"id":"a",}`, "\ufeff{}",
		`{"id":{"a":1}}`, `{"id":[1]}`, `{"id":null}`, `{"id":12.5e-3}`, `{"id":true}`, `{"id":""}`,
		`{"request_id":"r","gateway_request_id":"g","status":"OK"}`,
		`{"taskId":"t","status":7}`, `{"taskId":"t","status":1.0}`, `{"taskId":"a","taskId":"b"}`,
		`{"t\u0061skId":"x\n"}`, `{"id":"\ud800"}`, "{\"id\":\"\xff\xfe\"}", `{"id":"\u0000"}`,
		`{"id":"a\"}\\"}`, `{"a":"\\\"}\\\\","id":"ok\\"}`, `{"a":"{","id":"b"}`, `{"a":["]",{"}":1}],"id":"c"}`,
		`{"data":{"items":[{"id":"x"}],"status":"done"}}`, `{"data":{"items":{"0":{"id":"k"}}}}`,
		`{"data":{"items":[]}}`, `{"data":"s"}`, `{"data":null}`,
		`{"id":"` + strings.Repeat("y", filters.MaxValueLen+1) + `"}`,
		`{"id":"` + strings.Repeat(`\u00e9`, filters.MaxValueLen/2) + `"}`,
		"{\"taskId\":12\t,\"status\":1\r}", "{\"id\":-0.5E+2\n}", "{\"id\":false\t}", "{\"id\" : null\r\n}",
		"\t{\"data\":{\"items\":[ {\"id\":1 } ,2\t] } }\n",
		`{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,"id":"deep"}`,
		`{"id":"A","ID":"B"}`, `{"Id":"x"}`, `{"id":"\ud83d\ude00"}`, `{"id":"\\ud800\udc00"}`, `{"id":"\udc00\ud800"}`, "{\"taskId\":\"a\",\"tas\u212aId\":\"b\"}", `{"data":{"items":[{"iD":"x"}]},"DATA":1}`,
	} {
		f.Add([]byte(body), "data.items.0.id")
		f.Add([]byte(body), "id")
	}

	specs := fuzzSpecs()
	presets := make([]*filters.Preset, len(specs))
	for i, s := range specs {
		presets[i] = mustPreset(f, s.name, s.g)
	}

	f.Fuzz(func(t *testing.T, body []byte, path string) {
		specs, presets := specs, presets
		// A generic preset on the fuzzed path too, when it is one NewPreset accepts.
		g := &filters.Generic{JobIDPath: path, StatusPath: path}
		if p, err := filters.NewPreset("generic", g); err == nil {
			specs = append(specs[:len(specs):len(specs)], presetSpec{name: "generic", idPath: path, statusPath: path})
			presets = append(presets[:len(presets):len(presets)], p)
		}
		v, valid := refDecode(body)
		for i, p := range presets {
			got, err := p.Extract(body)
			if err == nil && (len(got.ID) > filters.MaxValueLen || len(got.Status) > filters.MaxValueLen) {
				t.Fatalf("%s %q: ID or status over the cap: %+v", p.Name(), specs[i].idPath, got)
			}
			if !valid {
				if err == nil {
					t.Fatalf("%s: Extract(%q) = %+v, want an error: not a JSON object", p.Name(), body, got)
				}
				continue
			}
			want, ok := refExtract(specs[i], v)
			if ok != (err == nil) {
				t.Fatalf("%s %q: Extract(%q) = %+v, %v; reference says ok=%v %+v", p.Name(), specs[i].idPath, body, got, err, ok, want)
			}
			if ok && got != want {
				t.Fatalf("%s %q: Extract(%q) = %+v, reference %+v", p.Name(), specs[i].idPath, body, got, want)
			}
			// Stated directly: a string ID at the path comes back exactly.
			if s, isString := refFind(v, specs[i].idPath).(string); err == nil && isString && got.ID != s {
				t.Fatalf("%s %q: ID %q, the body holds %q", p.Name(), specs[i].idPath, got.ID, s)
			}
		}
	})
}

func BenchmarkExtract(b *testing.B) {
	body := readTestdata(b, "fotor_avatar.json")
	p := mustPreset(b, "fotor", nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Extract(body); err != nil {
			b.Fatal(err)
		}
	}
}
