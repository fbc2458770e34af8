// Package filewatch keeps a value built from files (a certificate pair, a CA pool, a TLS client)
// and builds it again when any of the files changes. Changes are noticed by stat alone (size and
// modification time), so looking is cheap enough to do every few seconds.
package filewatch

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// Value is the latest good value built from its files. It is safe for concurrent use.
type Value[T any] struct {
	files []string
	load  func() (T, error)
	cur   atomic.Pointer[T]

	mu     sync.Mutex // serialises reloads
	seen   stamp      // the stamp of the files cur came from
	failed stamp      // the stamp of the last version that failed, so it is reported once
}

// stamp identifies one version of the files cheaply, without reading them.
type stamp string

func stampOf(files []string) (stamp, error) {
	var b strings.Builder
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return stamp(b.String()), nil
}

// New builds the value from files now with load; it fails when load does, with load's error
// (which can say which file is at fault) rather than a bare stat error.
func New[T any](load func() (T, error), files ...string) (*Value[T], error) {
	v := &Value[T]{files: files, load: load}
	// Stamped before the build: a file that changes in between is built again on the next look.
	st, serr := stampOf(files)
	x, err := load()
	if err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	v.cur.Store(&x)
	v.seen = st
	return v, nil
}

// Get returns the latest good value.
func (v *Value[T]) Get() T { return *v.cur.Load() }

// Reload builds the value again when the files changed since the last look, and reports
// whether it did. A version of the files that cannot be read or built is reported once, as err;
// the old value stays. Files often change one at a time (a certificate, then its key), so the
// next change is tried again.
func (v *Value[T]) Reload() (reloaded bool, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st, err := stampOf(v.files)
	if err != nil {
		// Stamped by the error, so that the same failure is reported once.
		if st = stamp("error: " + err.Error()); st != v.failed {
			v.failed = st
			return false, err
		}
		return false, nil
	}
	if st == v.seen || st == v.failed {
		return false, nil
	}
	x, err := v.load()
	if err != nil {
		v.failed = st
		return false, err
	}
	v.cur.Store(&x)
	v.seen, v.failed = st, ""
	return true, nil
}
