// Package buildlock serialises builds of the relay binary by the test processes of one machine
// (cmd/relay's and cmd/relay-bench's TestMain run at the same time under go test ./...): they build
// with the same flags, so the second, waiting for the first, finds every package in the Go build
// cache instead of compiling the same ones alongside it.
package buildlock

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Hold blocks until no other process holds the lock, then holds it until release.
func Hold() (release func(), err error) {
	path := lockPath()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("build lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("build lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

func lockPath() string { return filepath.Join(os.TempDir(), "hookrelay-relay-build.lock") }
