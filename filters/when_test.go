package filters

import (
	"errors"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/relay"
)

func TestCheckStatus(t *testing.T) {
	generic := func(g *Generic) *Preset {
		p, err := NewPreset("generic", g)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	preset := func(name string) *Preset {
		p, err := NewPreset(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		preset *Preset
		status string
		want   string // "" accepts
	}{
		{preset("fashn"), "failed", ""},
		{preset("fashn"), "succeeded", ""},
		{preset("fashn"), "processing", ""},
		{preset("fashn"), "completed", `normalises it to "succeeded"`},
		{preset("fashn"), "cancelled", `not a status of preset fashn, whose statuses are failed, processing, succeeded`},
		{preset("fal"), "failed", ""},
		{preset("fal"), "OK", `normalises it to "succeeded"`},
		{preset("fal"), "IN_QUEUE", ""}, // unmapped values pass raw
		{preset("fotor"), "2", `normalises it to "failed"`},
		{preset("abstrakt"), "failed", ""},
		{preset("abstrakt"), "", "empty"},
		{generic(&Generic{JobIDPath: "id"}), "failed", "reads no status"},
		{generic(&Generic{JobIDPath: "id", StatusPath: "state", StatusMap: map[string]string{"done": "succeeded"}}), "done", `normalises it to "succeeded"`},
		{generic(&Generic{JobIDPath: "id", StatusPath: "state"}), "anything", ""},
	} {
		err := tc.preset.CheckStatus(tc.status)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s.CheckStatus(%q) = %v, want %q", tc.preset.Name(), tc.status, err, tc.want)
		}
	}
}

func TestWhenMatch(t *testing.T) {
	fashn, _ := NewPreset("fashn", nil)
	body := []byte(`{"id":"j","status":"completed","data":{"plan":"pro","seats":3,"trial":false,"tags":["a"],"nothing":null}}`)
	job := relay.Job{ID: "j", Status: "succeeded"}
	for _, tc := range []struct {
		name   string
		status []string
		body   map[string]string
		want   bool
	}{
		{"status in list", []string{"failed", "succeeded"}, nil, true},
		{"status not in list", []string{"failed"}, nil, false},
		{"string equals", nil, map[string]string{"data.plan": "pro"}, true},
		{"string differs", nil, map[string]string{"data.plan": "free"}, false},
		{"number by its text", nil, map[string]string{"data.seats": "3"}, true},
		{"boolean by its text", nil, map[string]string{"data.trial": "false"}, true},
		{"missing path", nil, map[string]string{"data.region": "eu"}, false},
		{"null is no value", nil, map[string]string{"data.nothing": "null"}, false},
		{"array is no scalar", nil, map[string]string{"data.tags": "a"}, false},
		{"array element", nil, map[string]string{"data.tags.0": "a"}, true},
		{"status and body, both hold", []string{"succeeded"}, map[string]string{"data.plan": "pro", "data.seats": "3"}, true},
		{"status and body, one fails", []string{"succeeded"}, map[string]string{"data.plan": "pro", "data.seats": "4"}, false},
	} {
		w, err := NewWhen(fashn, tc.status, tc.body)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := w.Match(job, body); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNewWhenErrorsNameTheCondition(t *testing.T) {
	fashn, _ := NewPreset("fashn", nil)
	if _, err := NewWhen(fashn, nil, nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty filter: %v", err)
	}
	_, err := NewWhen(fashn, []string{"failed", "completed"}, nil)
	if fe, ok := errors.AsType[*relay.FieldError](err); !ok || fe.Field != "status[1]" {
		t.Fatalf("status error: %v", err)
	}
	_, err = NewWhen(fashn, nil, map[string]string{"data..x": "1"})
	if fe, ok := errors.AsType[*relay.FieldError](err); !ok || fe.Field != "body" || !strings.Contains(err.Error(), "empty segment") {
		t.Fatalf("body error: %v", err)
	}
}
