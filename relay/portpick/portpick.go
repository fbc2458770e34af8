// Package portpick picks TCP ports for programs that cannot bind port 0 and report what they got
// (nginx, redis-server). A picked port is not assumed free: the caller starts the program on it
// and, when the program reports the port taken, picks again. That is the start-up protocol for
// such programs, not a retry of a failure.
package portpick

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// Pick returns a random port between 10000 and the start of the kernel's ephemeral range (which
// outgoing connections and port 0 use), so only a program that binds it explicitly can hold it.
func Pick() int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				lo = n
			}
		}
	}
	return 10000 + rand.IntN(lo-10000)
}

// Attempts bounds how often a caller picks again after the port was taken: twenty collisions in
// a row mean something else is wrong.
const Attempts = 20
