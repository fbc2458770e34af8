// Package storagetest is the contract a certmagic.Storage must meet for the relay: what
// certmagic.FileStorage does, which the suite also runs against to prove itself.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// Open returns a handle on the storage under test. Handles opened by one test share their data
// and locks, as replicas do.
type Open func(t *testing.T) certmagic.Storage

// Run runs the contract. Each subtest gets fresh storage through newStorage, which returns an
// Open for it.
func Run(t *testing.T, newStorage func(t *testing.T) Open) {
	ctx := context.Background()
	t.Run("Missing", func(t *testing.T) {
		s := newStorage(t)(t)
		if _, err := s.Load(ctx, "acme/none.json"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load missing = %v, want fs.ErrNotExist", err)
		}
		if _, err := s.Stat(ctx, "acme/none.json"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat missing = %v, want fs.ErrNotExist", err)
		}
		if s.Exists(ctx, "acme/none.json") {
			t.Error("Exists missing = true")
		}
		if _, err := s.List(ctx, "acme", false); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("List missing = %v, want fs.ErrNotExist", err)
		}
		if err := s.Delete(ctx, "acme/none.json"); err != nil {
			t.Errorf("Delete missing = %v, want nil", err)
		}
	})
	t.Run("StoreLoadOverwrite", func(t *testing.T) {
		s := newStorage(t)(t)
		for _, v := range [][]byte{[]byte("first"), {0, 1, 2, 255, '\n'}, {}} {
			if err := s.Store(ctx, "certificates/ca/a.example.com/a.example.com.crt", v); err != nil {
				t.Fatal(err)
			}
			got, err := s.Load(ctx, "certificates/ca/a.example.com/a.example.com.crt")
			if err != nil || !bytes.Equal(got, v) {
				t.Errorf("Load = %q, %v; want %q", got, err, v)
			}
		}
	})
	t.Run("Stat", func(t *testing.T) {
		s := newStorage(t)(t)
		before := time.Now()
		if err := s.Store(ctx, "certificates/ca/a.example.com/a.key", []byte("12345")); err != nil {
			t.Fatal(err)
		}
		fi, err := s.Stat(ctx, "certificates/ca/a.example.com/a.key")
		if err != nil {
			t.Fatal(err)
		}
		if fi.Key != "certificates/ca/a.example.com/a.key" || !fi.IsTerminal || fi.Size != 5 {
			t.Errorf("Stat = %+v", fi)
		}
		if fi.Modified.Before(before.Add(-2*time.Second)) || fi.Modified.After(time.Now().Add(2*time.Second)) {
			t.Errorf("Modified %v is not the time of the Store (%v)", fi.Modified, before)
		}
		dir, err := s.Stat(ctx, "certificates/ca")
		if err != nil || dir.IsTerminal || dir.Key != "certificates/ca" {
			t.Errorf("Stat of a directory = %+v, %v; want a non-terminal key", dir, err)
		}
		if !s.Exists(ctx, "certificates/ca") || !s.Exists(ctx, "certificates/ca/a.example.com/a.key") {
			t.Error("Exists is false for a stored key or its directory")
		}
		if s.Exists(ctx, "certificates/c") {
			t.Error("Exists is true for a prefix that is not a directory")
		}
	})
	t.Run("List", func(t *testing.T) {
		s := newStorage(t)(t)
		for _, k := range []string{"acme/a/x.json", "acme/a/b/y.json", "acme/a/b/z.json", "acme/c.json", "acme/ab/w.json", "other/q"} {
			if err := s.Store(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		check := func(prefix string, recursive bool, want []string) {
			t.Helper()
			got, err := s.List(ctx, prefix, recursive)
			slices.Sort(got)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("List(%q, %v) = %q, %v; want %q", prefix, recursive, got, err, want)
			}
		}
		check("acme", false, []string{"acme/a", "acme/ab", "acme/c.json"})
		check("acme/a", false, []string{"acme/a/b", "acme/a/x.json"})
		check("acme", true, []string{"acme/a", "acme/a/b", "acme/a/b/y.json", "acme/a/b/z.json", "acme/a/x.json",
			"acme/ab", "acme/ab/w.json", "acme/c.json"})
	})
	t.Run("Delete", func(t *testing.T) {
		s := newStorage(t)(t)
		for _, k := range []string{"acme/a/x.json", "acme/a/b/y.json", "acme/ab/w.json"} {
			if err := s.Store(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Delete(ctx, "acme/a/b/y.json"); err != nil {
			t.Fatal(err)
		}
		if s.Exists(ctx, "acme/a/b/y.json") {
			t.Error("a deleted key exists")
		}
		if err := s.Delete(ctx, "acme/a"); err != nil {
			t.Fatal(err)
		}
		if s.Exists(ctx, "acme/a") || s.Exists(ctx, "acme/a/x.json") {
			t.Error("a deleted directory or a key under it exists")
		}
		if got, err := s.Load(ctx, "acme/ab/w.json"); err != nil || string(got) != "acme/ab/w.json" {
			t.Errorf("deleting acme/a took its neighbour acme/ab along: %q, %v", got, err)
		}
	})
	t.Run("Lock", func(t *testing.T) {
		open := newStorage(t)
		a, b := open(t), open(t)
		if err := a.Lock(ctx, "issue_cert_a.example.com"); err != nil {
			t.Fatal(err)
		}
		// Another holder waits, and gives up with its context.
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := b.Lock(short, "issue_cert_a.example.com"); err == nil {
			t.Fatal("a second Lock of a held lock returned nil")
		}
		if tl, ok := b.(certmagic.TryLocker); ok {
			if got, err := tl.TryLock(ctx, "issue_cert_a.example.com"); err != nil || got {
				t.Fatalf("TryLock of a held lock = %v, %v", got, err)
			}
		}
		// Other names are independent.
		if err := b.Lock(ctx, "issue_cert_b.example.com"); err != nil {
			t.Fatal(err)
		}
		if err := b.Unlock(ctx, "issue_cert_b.example.com"); err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() { got <- b.Lock(ctx, "issue_cert_a.example.com") }()
		select {
		case err := <-got:
			t.Fatalf("Lock of a held lock returned %v before the Unlock", err)
		case <-time.After(200 * time.Millisecond):
		}
		if err := a.Unlock(ctx, "issue_cert_a.example.com"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the waiting Lock did not get the lock after Unlock")
		}
		if err := b.Unlock(ctx, "issue_cert_a.example.com"); err != nil {
			t.Fatal(err)
		}
		if tl, ok := a.(certmagic.TryLocker); ok {
			if got, err := tl.TryLock(ctx, "issue_cert_a.example.com"); err != nil || !got {
				t.Fatalf("TryLock of a free lock = %v, %v", got, err)
			}
			if err := a.Unlock(ctx, "issue_cert_a.example.com"); err != nil {
				t.Fatal(err)
			}
		}
	})
}
