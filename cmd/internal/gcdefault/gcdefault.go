// Package gcdefault is the garbage collector's target for this project's binaries: the relay, and
// relay-floor, which must run as the relay does so that GC settings do not tell them apart.
package gcdefault

import (
	"os"
	"runtime/debug"
)

// Percent is the target unless GOGC is set: the relay's live heap is small (tens of MiB), so
// collecting less often buys CPU per webhook for a few MiB (docs/BENCHMARKS.md).
const Percent = 400

// Apply sets Percent unless the environment sets GOGC.
func Apply() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(Percent)
	}
}
