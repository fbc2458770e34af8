package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hookrelay/hookrelay/relay/redistest"
)

// A short bench against the real relay binary: every webhook acknowledged as new is delivered
// exactly once, duplicates sent are acknowledged as duplicates and never delivered, and every
// delivery matches what was sent. Speed is not asserted; it is what the bench reports.
func TestBenchAgainstRealBinary(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		redis bool
	}{
		{"embedded", nil, false},
		{"embedded-tls", []string{"-tls"}, false},
		{"redis", []string{"-store", "redis"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-relay-bin", relayBin, "-duration", "2s", "-senders", "8", "-dup", "0.2",
				"-drain", "30s", "-progress=false"}, tc.args...)
			if tc.redis {
				args = append(args, "-redis-addr", redistest.Start(t, redistest.Options{}).Addr)
			}
			o, err := parseFlags(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			checkRun(t, o)
		})
	}
}

// checkRun runs the bench and checks what it measured.
func checkRun(t *testing.T, o *options) {
	t.Helper()
	var progress bytes.Buffer
	rep, err := bench(t.Context(), o, &progress)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, progress.String())
	}
	r := rep.Relay
	var out bytes.Buffer
	rep.print(&out)
	t.Log(out.String())
	switch {
	case r.NewAcks == 0 || r.DupAcks == 0:
		t.Errorf("want both new and duplicate acknowledgements, got %d new, %d duplicate", r.NewAcks, r.DupAcks)
	case r.Errors != 0:
		t.Errorf("%d errors: %s", r.Errors, r.ErrorKinds)
	case r.Lost != 0:
		t.Errorf("lost %d acknowledged webhooks", r.Lost)
	case r.DupDeliv != 0:
		t.Errorf("%d duplicates delivered", r.DupDeliv)
	case r.Deliveries != r.UniqueAcked || r.Unique != r.UniqueAcked || r.NewAcks != r.UniqueAcked:
		t.Errorf("deliveries %d (unique %d), acknowledged as new %d, unique acknowledged %d: want all equal",
			r.Deliveries, r.Unique, r.NewAcks, r.UniqueAcked)
	case r.Bad != 0:
		t.Errorf("%d deliveries did not match what was sent; first: %s", r.Bad, r.FirstBad)
	case r.MemIdle == 0 || r.MemPeak == 0 || r.MemHWM < r.MemIdle:
		t.Errorf("memory figures missing: idle %d KiB, peak %d KiB, high-water %d KiB", r.MemIdle, r.MemPeak, r.MemHWM)
	case o.url == "" && !strings.Contains(strings.Join(r.Store, "\n"), "dedupe"):
		t.Errorf("no dedupe-key figures from the store: %q", r.Store)
	}
}

// Bad flags are rejected up front with a message naming the flag.
func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-store", "redis"}, "-redis-addr"},
		{[]string{"-store", "etcd"}, `-store "etcd"`},
		{[]string{"-dup", "1"}, "-dup"},
		{[]string{"-baseline", "caddy"}, "only baseline is nginx"},
		{[]string{"-url", "http://127.0.0.1:8080"}, "-config-dir"},
		{[]string{"-senders", "0"}, "-senders"},
		{[]string{"-n", "0", "-duration", "0s"}, "-duration"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), tc.args, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

// -write-config writes a config and secrets that the relay starts with, and -url benches that
// relay with the same secrets.
func TestWriteConfigThenURL(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"-write-config", dir, "-sink-listen", "127.0.0.1:0"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "fixed address") {
		t.Fatalf("-sink-listen :0 with -write-config: exit %d, %q", code, stderr.String())
	}
	// The config names the sink's address: the test holds that port from here to the run.
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sinkLn.Close()
	sinkAddr := sinkLn.Addr().String()
	if code := run(t.Context(), []string{"-write-config", dir, "-sink-listen", sinkAddr, "-relay-listen", "127.0.0.1:0", "-relay-admin", "127.0.0.1:0"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-write-config: exit %d, %s", code, stderr.String())
	}
	p, err := startRelay(t.Context(), relayBin, filepath.Join(dir, fileConfig), filepath.Join(t.TempDir(), "relay.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	o, err := parseFlags([]string{"-url", "http://" + p.addr, "-config-dir", dir, "-sink-listen", sinkAddr,
		"-relay-pid", strconv.Itoa(p.pid()), "-duration", "1s", "-senders", "4", "-drain", "30s", "-progress=false"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o.sinkLn = sinkLn
	checkRun(t, o)
}

// The bench builds the relay with the Dockerfile's flags (so that it measures what ships, and the
// Go build cache serves cmd/relay's test build and this one alike).
func TestBuildFlagsMatchDockerfile(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	want := `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/relay ./cmd/relay`
	if !strings.Contains(string(raw), want) {
		t.Fatalf("the Dockerfile no longer builds with %s: update relayBuildFlags and this test", want)
	}
	got := strings.Join(relayBuildFlags, " ")
	if got != `-trimpath -ldflags -s -w -X main.version=bench` {
		t.Errorf("relayBuildFlags = %q, not the Dockerfile's", got)
	}
}

// relayBin is the relay binary, built once for the package as the bench builds it.
var relayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "relay-bench-bin")
	if err != nil {
		panic(err)
	}
	relayBin, err = buildRelay(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
