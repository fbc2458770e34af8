package buildlock

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// While one holds the lock, nobody else can take it; after the release, anyone can.
func TestHoldExcludes(t *testing.T) {
	release, err := Hold()
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.Open(lockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("taking the held lock: %v, want EWOULDBLOCK", err)
	}
	release()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("taking the released lock: %v", err)
	}
}
