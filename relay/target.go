package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hookrelay/hookrelay/relay/filewatch"
)

// Header is a static header sent with every delivery to a target, such as the credential the
// service requires. Its value may be a secret: it prints and logs as "(not shown)".
type Header struct {
	Name, Value string
}

func (h Header) String() string { return h.Name + ": (not shown)" }

// LogValue keeps the value out of structured logs.
func (h Header) LogValue() slog.Value { return slog.StringValue(h.String()) }

// TargetTLS is how the relay speaks TLS to a target: which roots it trusts, which client
// certificate it presents. The files are reread when they change.
type TargetTLS struct {
	CAFile string // PEM roots, added to the system roots
	CAOnly bool   // trust CAFile's roots alone, not the system's
	// CertFile and KeyFile are the client certificate and key for mutual TLS; both or neither.
	CertFile, KeyFile string
	ServerName        string // to verify instead of the URL's host
	MinVersion        uint16 // tls.VersionTLS12 (the default when 0) or tls.VersionTLS13
}

// FieldError is a problem with one field of a setting (a Target's, a store's, the TLS edge's),
// named as the configuration file spells it ("tls.ca_file", "headers[1].name"), so that a config
// layer can report the whole key path.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// FieldErrorf is a FieldError for field with a formatted error (%w wraps, as in fmt.Errorf).
func FieldErrorf(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// CheckRoute validates rt's own settings, defaults applied, as New and Reload do: its forward
// headers, body cap, dedupe TTL and answer status (not its targets or checks). Every problem is a
// FieldError (joined). relay check uses it.
func CheckRoute(rt Route) error {
	rt = rt.WithDefaults()
	var errs []error
	names := rt.ForwardHeaders
	for i, name := range names {
		at := fmt.Sprintf("forward_headers[%d]", i)
		canon := http.CanonicalHeaderKey(name)
		switch {
		case !validHeaderName(name):
			errs = append(errs, FieldErrorf(at, "%q is not a valid header name", name))
		case containsFold(hopByHop, canon):
			errs = append(errs, FieldErrorf(at, "%s is a hop-by-hop header; it describes a connection, not a webhook", canon))
		case containsFold(relayOwned, canon) || strings.HasPrefix(canon, "X-Relay-"):
			errs = append(errs, FieldErrorf(at, "%s is set by the relay itself", canon))
		case slices.ContainsFunc(names[:i], func(s string) bool { return strings.EqualFold(s, name) }):
			errs = append(errs, FieldErrorf(at, "%s is named twice", canon))
		}
	}
	if rt.MaxBody <= 0 {
		errs = append(errs, FieldErrorf("max_body", "must be positive, got %d", rt.MaxBody))
	}
	if rt.DedupeTTL <= 0 {
		errs = append(errs, FieldErrorf("dedupe_ttl", "must be positive, got %v", rt.DedupeTTL))
	}
	if rt.AckStatus != http.StatusOK && rt.AckStatus != http.StatusAccepted {
		errs = append(errs, FieldErrorf("ack_status", "%d must be 200 or 202", rt.AckStatus))
	}
	return errors.Join(errs...)
}

// CheckTarget validates t as New and Reload do, reading its TLS files, and returns every problem
// as a FieldError (joined). relay check uses it.
func CheckTarget(t Target, lease time.Duration) error {
	if err := validateTarget(&t, lease); err != nil {
		return err
	}
	_, err := newTargetClient(&t, nil)
	return err
}

// endpoint is where a target's requests go: the URL to request and, for a unix socket target,
// the socket to dial instead of the URL's host.
type endpoint struct {
	url    string // escaped, as sent
	shown  string // url without a password, for errors and logs
	socket string
}

// unixScheme starts a unix socket target's URL: unix://<socket path>:<HTTP path>, e.g.
// unix:///run/app.sock:/hooks/relay. The socket path ends at the first ':', so it cannot hold one.
const unixScheme = "unix://"

// parseEndpoint reads a target URL: an absolute http(s) URL or the unix socket form.
func parseEndpoint(raw string) (endpoint, error) {
	if rest, ok := strings.CutPrefix(raw, unixScheme); ok {
		socket, path, _ := strings.Cut(rest, ":")
		if !strings.HasPrefix(socket, "/") || strings.HasSuffix(socket, "/") {
			return endpoint{}, fmt.Errorf("%q: a unix socket target is unix://<absolute socket path>[:<HTTP path>], e.g. unix:///run/app.sock:/hooks", raw)
		}
		if path == "" {
			path = "/"
		}
		// The host only fills the Host header; the connection goes to the socket.
		u, err := url.Parse("http://localhost" + path)
		if err != nil || !strings.HasPrefix(path, "/") || u.Host != "localhost" {
			return endpoint{}, fmt.Errorf("%q: the HTTP path after the socket must start with /, e.g. unix:///run/app.sock:/hooks", raw)
		}
		return endpoint{url: u.String(), shown: raw, socket: socket}, nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return endpoint{}, fmt.Errorf("%q is not an absolute http:// or https:// URL, nor unix:///path/to.sock:/path", raw)
	}
	return endpoint{url: u.String(), shown: u.Redacted()}, nil
}

// Headers the relay sets itself, or that describe the connection rather than the message: a
// target's static headers may not name them.
var (
	hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade"}
	relayOwned = []string{"Host", "Content-Length", "Content-Type", "User-Agent", "X-Forwarded-For"}
)

func validateHeaders(t *Target) []error {
	var errs []error
	seen := map[string]bool{}
	for i, h := range t.Headers {
		at := fmt.Sprintf("headers[%d]", i)
		name := http.CanonicalHeaderKey(h.Name)
		switch {
		case !validHeaderName(h.Name):
			errs = append(errs, FieldErrorf(at+".name", "%q is not a valid header name", h.Name))
			continue
		case containsFold(hopByHop, name):
			errs = append(errs, FieldErrorf(at+".name", "%s is a hop-by-hop header; it describes a connection, not a delivery", name))
		case containsFold(relayOwned, name) || strings.HasPrefix(name, "X-Relay-"):
			errs = append(errs, FieldErrorf(at+".name", "%s is set by the relay itself", name))
		case strings.HasPrefix(name, "Webhook-") && len(t.SigningKey) > 0:
			errs = append(errs, FieldErrorf(at+".name", "%s is set by the relay when it signs (the target has a signing secret)", name))
		case seen[name]:
			errs = append(errs, FieldErrorf(at+".name", "%s is set twice", name))
		}
		seen[name] = true
		if h.Value == "" || !validHeaderValue(h.Value) {
			// The value itself is never quoted: it may be a secret.
			errs = append(errs, FieldErrorf(at, "the value of %s is empty or holds a control character", name))
		}
	}
	return errs
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func validateTLS(c *TargetTLS, ep endpoint) []error {
	var errs []error
	if ep.socket != "" {
		errs = append(errs, FieldErrorf("tls", "set for a unix socket target; the relay speaks plain HTTP over the socket"))
	} else if !strings.HasPrefix(ep.url, "https://") {
		errs = append(errs, FieldErrorf("tls", "set, but the url is not https://"))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		if c.CertFile == "" {
			errs = append(errs, FieldErrorf("tls.cert_file", "key_file is set without cert_file; mutual TLS needs both"))
		} else {
			errs = append(errs, FieldErrorf("tls.key_file", "cert_file is set without key_file; mutual TLS needs both"))
		}
	}
	if c.CAOnly && c.CAFile == "" {
		errs = append(errs, FieldErrorf("tls.ca_only", "set without ca_file: nothing would be trusted"))
	}
	switch c.MinVersion {
	case 0, tls.VersionTLS12, tls.VersionTLS13:
	default:
		errs = append(errs, FieldErrorf("tls.min_version", "must be TLS 1.2 or 1.3"))
	}
	return errs
}

// loadClientTLS reads c's files into a client TLS configuration; errors name the file's field.
func loadClientTLS(c *TargetTLS) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: c.ServerName, MinVersion: max(c.MinVersion, tls.VersionTLS12)}
	if c.CAFile != "" {
		pool := x509.NewCertPool()
		if !c.CAOnly {
			sys, err := x509.SystemCertPool()
			if err != nil {
				return nil, FieldErrorf("tls.ca_file", "cannot load the system roots to add to (set ca_only: true to trust ca_file alone): %w", err)
			}
			pool = sys
		}
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, FieldErrorf("tls.ca_file", "cannot read: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, FieldErrorf("tls.ca_file", "%s holds no PEM certificate", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			field := "tls.cert_file"
			if _, kerr := os.Stat(c.KeyFile); kerr != nil || strings.Contains(err.Error(), "private key") {
				field = "tls.key_file"
			}
			return nil, FieldErrorf(field, "the client certificate and key do not load: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func (c *TargetTLS) files() []string {
	var out []string
	for _, f := range []string{c.CAFile, c.CertFile, c.KeyFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// tlsReloadInterval is how often a target's TLS files are looked at (stat only), as the
// listener's are.
const tlsReloadInterval = 2 * time.Second

// targetClient is how the relay reaches one target: a fasthttp client with the target's own pool
// of keep-alive connections, socket and TLS settings, built again when its TLS files change.
// net/http's client cost about 40 µs more CPU per delivery (docs/BENCHMARKS.md, "Hot path").
type targetClient struct {
	static *fasthttp.Client                   // a target without TLS files
	files  *filewatch.Value[*fasthttp.Client] // one with them
	log    *slog.Logger
	next   atomic.Int64 // unix nanoseconds of the next look at the files
	conns  connSet
}

func newTargetClient(t *Target, log *slog.Logger) (*targetClient, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &targetClient{log: log.With("target", t.Name)}
	var d net.Dialer
	network, sock := "tcp", t.endpoint.socket
	if sock != "" {
		network = "unix"
	}
	dial := func(addr string, timeout time.Duration) (net.Conn, error) {
		if sock != "" {
			addr = sock
		}
		ctx := context.Background()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return c.conns.add(conn)
	}
	var cfg TargetTLS
	if t.TLS != nil {
		cfg = *t.TLS
	}
	build := func() (*fasthttp.Client, error) {
		fc := &fasthttp.Client{
			DialTimeout: dial,
			// The dispatcher keeps at most Concurrency requests in flight; a connection being
			// closed may still count for a moment, so wait for it rather than fail.
			MaxConnsPerHost: t.Concurrency, MaxConnWaitTimeout: t.Timeout,
			MaxIdleConnDuration: 10 * time.Second,
			ReadBufferSize:      64 << 10, // also the largest response header accepted
			StreamResponseBody:  true,     // only the start of an answer is kept
			// A POST is sent again only when nothing of it was written: on a keep-alive
			// connection the target closed while it was idle (trackedConn.Write). A target
			// that restarted closed them all, so each pooled one may be tried, then a new one.
			RetryIfErr: func(_ *fasthttp.Request, _ int, err error) (bool, bool) {
				return false, errors.Is(err, errStaleIdle)
			},
			MaxIdemponentCallAttempts: t.Concurrency + 1,
			NoDefaultUserAgentHeader:  true, DisablePathNormalizing: true,
		}
		if t.TLS != nil {
			tc, err := loadClientTLS(&cfg)
			if err != nil {
				return nil, err
			}
			fc.TLSConfig = tc
		}
		return fc, nil
	}
	if len(cfg.files()) == 0 {
		fc, err := build()
		if err != nil {
			return nil, err
		}
		c.static = fc
		return c, nil
	}
	var err error
	if c.files, err = filewatch.New(build, cfg.files()...); err != nil {
		if _, ok := errors.AsType[*FieldError](err); ok { // build's, naming the file's field
			return nil, err
		}
		return nil, FieldErrorf("tls", "%w", err)
	}
	return c, nil
}

// client returns the client to send with, looking at the TLS files every tlsReloadInterval.
// Connections already open keep the old settings until they close.
func (c *targetClient) client() *fasthttp.Client {
	if c.files == nil {
		return c.static
	}
	if now := time.Now(); now.UnixNano() >= c.next.Load() {
		c.next.Store(now.Add(tlsReloadInterval).UnixNano())
		old := c.files.Get()
		switch reloaded, err := c.files.Reload(); {
		case err != nil:
			c.log.Error("target tls: the changed files do not load; keeping the current settings", "error", err)
		case reloaded:
			old.CloseIdleConnections()
			c.log.Info("target tls: CA or client certificate reloaded")
		}
	}
	return c.files.Get()
}

// closeIdle closes the connections no request is using.
func (c *targetClient) closeIdle() { c.client().CloseIdleConnections() }

// abort closes every connection, cutting short the requests in flight (the end of a shutdown's
// grace period): fasthttp takes no context.
func (c *targetClient) abort() { c.conns.closeAll() }

// connSet tracks a client's open connections, so that abort can close them. Once aborted it
// refuses new ones, so that a request cut short is not sent again on a fresh connection.
type connSet struct {
	mu      sync.Mutex
	m       map[*trackedConn]struct{}
	aborted bool
}

var errAborted = errors.New("the relay is shutting down")

type trackedConn struct {
	net.Conn
	set      *connSet
	answered bool // a response was read since the last request was written
}

// errStaleIdle is a keep-alive connection found closed by the target before anything was sent.
var errStaleIdle = errors.New("the target had closed the idle keep-alive connection")

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.answered = true
	}
	return n, err
}

// Write starts each request after the first on a connection by looking whether the target
// closed it meanwhile: fasthttp finds that out only by sending (net/http's reader sees it
// first). A closed one fails with errStaleIdle before a byte is written, so that the request
// can go again on a new connection.
func (c *trackedConn) Write(p []byte) (int, error) {
	if c.answered {
		c.answered = false
		if c.peerClosed() {
			return 0, errStaleIdle
		}
	}
	return c.Conn.Write(p)
}

// peerClosed peeks without waiting: an idle HTTP/1.1 connection has nothing to read unless the
// target closed it (end of stream, a reset, a TLS close alert); a pending TLS session ticket
// also counts, and costs only a new connection.
func (c *trackedConn) peerClosed() bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	open := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errors.Is(rerr, syscall.EAGAIN)
		return true
	})
	return err != nil || !open
}

func (s *connSet) add(conn net.Conn) (net.Conn, error) {
	tc := &trackedConn{Conn: conn, set: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted {
		conn.Close()
		return nil, errAborted
	}
	if s.m == nil {
		s.m = map[*trackedConn]struct{}{}
	}
	s.m[tc] = struct{}{}
	return tc, nil
}

func (c *trackedConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.m, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.aborted = true
	conns := make([]net.Conn, 0, len(s.m))
	for c := range s.m {
		conns = append(conns, c.Conn)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
