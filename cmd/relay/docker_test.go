package main

import (
	"debug/elf"
	"os"
	"strings"
	"testing"
)

// No Docker engine runs here, so the image is checked in two halves: TestMain builds the binary
// with the Dockerfile's own build command (every binary test runs that binary), and this test
// checks that the result fits a distroless/scratch image and that the Dockerfile says what the
// image needs.
func TestDockerfileBinaryIsStaticAndVersioned(t *testing.T) {
	f, err := elf.Open(relayBin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic loader (PT_INTERP): it would not start on distroless/static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary links shared libraries %v (%v)", libs, err)
	}
	out, code := relayCmd(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "relay "+dockerVersion+" (go1.") {
		t.Errorf("relay version: exit %d, %q; want the VERSION build argument %q", code, out, dockerVersion)
	}

	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile := string(raw)
	for _, want := range []string{
		"CGO_ENABLED=0 go build",        // static
		"FROM gcr.io/distroless/static", // CA certificates, no shell, no libc
		"USER nonroot",
		`VOLUME ["/var/lib/hookrelay"]`,
		"EXPOSE 443 80 8080 9090",
		`HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/relay", "health", "-config", "/etc/hookrelay/config.yaml"]`,
	} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
