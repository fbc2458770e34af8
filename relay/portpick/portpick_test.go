package portpick

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// Picked ports stay below the ephemeral range and above the well-known and registered ports
// most services use.
func TestPickBelowEphemeralRange(t *testing.T) {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if n, err := strconv.Atoi(strings.Fields(string(b))[0]); err == nil && n > 12000 {
			lo = n
		}
	}
	for range 1000 {
		if p := Pick(); p < 10000 || p >= lo {
			t.Fatalf("Pick() = %d, want within [10000, %d)", p, lo)
		}
	}
}
