package filters_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// GitHub's published test vector (docs/DESIGN.md section 5, from GitHub's "Validating webhook
// deliveries").
const (
	ghVecSecret = "It's a Secret to Everybody"
	ghVecBody   = "Hello, World!"
	ghVecSig    = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	ghOther     = "another secret, 16+"
)

func TestGitHubVerify(t *testing.T) {
	hexSig := ghVecSig[len("sha256="):]
	tests := []struct {
		name    string
		secrets []string
		header  string // X-Hub-Signature-256; "" sends none
		body    string
		want    string
	}{
		{"published vector", []string{ghVecSecret}, ghVecSig, ghVecBody, ""},
		{"rotation: second secret valid", []string{ghOther, ghVecSecret}, ghVecSig, ghVecBody, ""},
		{"secret with a trailing newline", []string{ghVecSecret + "\n"}, ghVecSig, ghVecBody, ""},
		{"upper-case hex", []string{ghVecSecret}, "sha256=" + strings.ToUpper(hexSig), ghVecBody, ""},

		{"wrong secret", []string{ghOther}, ghVecSig, ghVecBody, "X-Hub-Signature-256 signature matched none of 1 secrets"},
		{"tampered body", []string{ghVecSecret}, ghVecSig, "Hello, World?", "matched none of 1 secrets"},
		{"missing header", []string{ghVecSecret}, "", ghVecBody, "missing X-Hub-Signature-256 header"},
		{"no prefix", []string{ghVecSecret}, hexSig, ghVecBody, `does not start with "sha256="`},
		{"sha1 prefix", []string{ghVecSecret}, "sha1=" + hexSig, ghVecBody, `does not start with "sha256="`},
		{"truncated", []string{ghVecSecret}, ghVecSig[:len(ghVecSig)-2], ghVecBody, "signature is 62 characters, want 64 (hex)"},
		{"not hex", []string{ghVecSecret}, "sha256=" + strings.Repeat("z", 64), ghVecBody, "signature is not valid hex"},
		{"two signatures", []string{ghVecSecret}, ghVecSig + "," + ghVecSig, ghVecBody, "signature is 136 characters"},
		{"too long", []string{ghVecSecret}, "sha256=" + strings.Repeat("0", 5000), ghVecBody, "over the 4096-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := filters.NewGitHub(tt.secrets)
			if err != nil {
				t.Fatal(err)
			}
			h := map[string]string{}
			if tt.header != "" {
				h["X-Hub-Signature-256"] = tt.header
			}
			err = v.Verify(whRequest("/hooks/gh", h, []byte(tt.body)), []byte(tt.body))
			whCheck(t, err, tt.want, ghVecSecret, ghOther, hexSig)
		})
	}
}

func TestNewGitHubErrors(t *testing.T) {
	for _, tt := range []struct {
		secrets []string
		want    string
	}{
		{nil, "github: no secrets"},
		{[]string{ghVecSecret, "  "}, "github: secret 2 is empty"},
	} {
		if v, err := filters.NewGitHub(tt.secrets); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewGitHub(%q) = %v, %v; want error containing %q", tt.secrets, v, err, tt.want)
		}
	}
}

// A GitHub route forwards the event and delivery headers beside its own, each once, and the
// route's own slice is not written to.
func TestGitHubForwardHeaders(t *testing.T) {
	g, err := filters.NewGitHub([]string{ghVecSecret})
	if err != nil {
		t.Fatal(err)
	}
	own := make([]string, 2, 8) // room to append into, which WithDefaults must not use
	copy(own, []string{"X-Request-Id", "x-github-event"})
	got := relay.Route{Verifier: g, ForwardHeaders: own}.WithDefaults().ForwardHeaders
	if want := []string{"X-Request-Id", "x-github-event", "X-GitHub-Delivery"}; !slices.Equal(got, want) {
		t.Errorf("ForwardHeaders = %q, want %q", got, want)
	}
	if own[:3][2] != "" {
		t.Errorf("the route's own slice was written to: %q", own[:3])
	}
	if got := (relay.Route{Verifier: g}).WithDefaults().ForwardHeaders; !slices.Equal(got, []string{"X-GitHub-Event", "X-GitHub-Delivery"}) {
		t.Errorf("with none of its own: %q", got)
	}
}
