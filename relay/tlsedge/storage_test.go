package tlsedge_test

import (
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/hookrelay/hookrelay/relay/tlsedge/storagetest"
)

// The storage contract holds for certmagic's own FileStorage, the embedded store's certificate
// storage: this proves the contract test itself.
func TestFileStorageContract(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storagetest.Open {
		dir := t.TempDir()
		return func(*testing.T) certmagic.Storage { return &certmagic.FileStorage{Path: dir} }
	})
}
