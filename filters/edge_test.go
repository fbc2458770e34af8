package filters_test

import (
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
)

// Trusting every address would let any sender name its own: refused, however it is spelled.
func TestClientIPRefusesTrustingEveryone(t *testing.T) {
	for _, trusted := range [][]string{
		{"0.0.0.0/0"}, {"::/0"}, {"10.0.0.0/8", "::/0"}, {"0.0.0.0/1", "128.0.0.0/1"},
		{"::ffff:0.0.0.0/96"}, {"::/1", "8000::/1"},
	} {
		_, err := filters.NewClientIPHeader(trusted, "X-Forwarded-For")
		if err == nil || !strings.Contains(err.Error(), "/0") {
			t.Errorf("%v: err = %v, want a refusal naming the /0", trusted, err)
		}
	}
	if _, err := filters.NewClientIPHeader([]string{"0.0.0.0/1", "::/1"}, "X-Forwarded-For"); err != nil {
		t.Errorf("half the addresses: %v", err)
	}
}
