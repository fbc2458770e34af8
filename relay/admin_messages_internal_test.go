package relay

import (
	"testing"
	"time"
)

func TestTextOrBase64(t *testing.T) {
	for _, tc := range []struct {
		in        []byte
		text, b64 string
		isText    bool
	}{
		{[]byte(`{"a":"é"}`), `{"a":"é"}`, "", true},
		{[]byte{0xff, 0xfe, 0x00}, "", "//4A", false},
	} {
		text, b64 := textOrBase64(tc.in)
		if tc.isText && (text == nil || *text != tc.text || b64 != nil) {
			t.Errorf("%q: text %v, base64 %v", tc.in, text, b64)
		}
		if !tc.isText && (b64 == nil || *b64 != tc.b64 || text != nil) {
			t.Errorf("%q: text %v, base64 %v", tc.in, text, b64)
		}
	}
}

func TestMessageIDTime(t *testing.T) {
	at := time.Date(2026, 12, 2, 6, 0, 0, 123e6, time.UTC)
	got, ok := messageIDTime(new(idSource).next(at))
	if !ok || !got.Equal(at) {
		t.Fatalf("messageIDTime(next(%v)) = %v, %v", at, got, ok)
	}
	for _, bad := range []string{"", "nope", "m1", "UUUUUUUUUUUUUUUUUUUUUUUUUU"} {
		if _, ok := messageIDTime(bad); ok {
			t.Errorf("messageIDTime(%q) ok", bad)
		}
	}
}
