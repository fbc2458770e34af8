package filewatch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// write writes text to path and gives it a modification time of its own, so that a rewrite
// within the file system's timestamp granularity is still a change.
func write(t *testing.T, path, text string, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

func TestValueReloadsOnChangeAndKeepsTheLastGoodValue(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	base := time.Now().Add(-time.Hour)
	write(t, a, "one", base)
	write(t, b, "x", base)
	loads := 0
	load := func() (string, error) {
		loads++
		ra, _ := os.ReadFile(a)
		rb, _ := os.ReadFile(b)
		if string(ra) == "bad" {
			return "", errors.New("a is bad")
		}
		return string(ra) + "+" + string(rb), nil
	}
	v, err := New(load, a, b)
	if err != nil || v.Get() != "one+x" {
		t.Fatalf("New: %v, %q", err, v.Get())
	}
	steps := []struct {
		name         string
		change       func()
		wantReloaded bool
		wantErr      string
		want         string
		wantLoads    int
	}{
		{"unchanged: not loaded again", func() {}, false, "", "one+x", 1},
		{"second file changed", func() { write(t, b, "yy", base.Add(time.Minute)) }, true, "", "one+yy", 2},
		{"broken: reported, old value kept", func() { write(t, a, "bad", base.Add(2*time.Minute)) }, false, "a is bad", "one+yy", 3},
		{"still broken: reported once", func() {}, false, "", "one+yy", 3},
		{"file removed: reported", func() { os.Remove(a) }, false, "no such file", "one+yy", 3},
		{"still removed: reported once", func() {}, false, "", "one+yy", 3},
		{"fixed", func() { write(t, a, "two", base.Add(3*time.Minute)) }, true, "", "two+yy", 4},
	}
	for _, s := range steps {
		s.change()
		reloaded, err := v.Reload()
		if reloaded != s.wantReloaded || (err == nil) != (s.wantErr == "") || (err != nil && !strings.Contains(err.Error(), s.wantErr)) {
			t.Fatalf("%s: Reload() = %v, %v; want %v, %q", s.name, reloaded, err, s.wantReloaded, s.wantErr)
		}
		if v.Get() != s.want || loads != s.wantLoads {
			t.Fatalf("%s: value %q after %d loads, want %q after %d", s.name, v.Get(), loads, s.want, s.wantLoads)
		}
	}
}

func TestNewFailsWhenAFileIsMissingOrTheLoadFails(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if _, err := New(func() (int, error) { return 1, nil }, f); err == nil {
		t.Fatal("New with a missing file succeeded")
	}
	// A load that fails on the missing file says so itself (naming the setting), not the stat.
	if _, err := New(func() (int, error) { return 0, errors.New("ca_file: cannot read") }, f); err == nil ||
		err.Error() != "ca_file: cannot read" {
		t.Fatalf("New with a missing file and a failing load: %v, want the load's error", err)
	}
	write(t, f, "x", time.Now())
	if _, err := New(func() (int, error) { return 0, errors.New("nope") }, f); err == nil || err.Error() != "nope" {
		t.Fatalf("New with a failing load: %v", err)
	}
}
