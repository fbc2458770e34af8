// Command relay is the hookrelay daemon: it receives webhooks from job APIs, stores them durably,
// answers fast, and delivers them to private HTTP services.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"gopkg.in/yaml.v3"

	"github.com/hookrelay/hookrelay/cmd/internal/gcdefault"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/tlsedge"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: relay <command> [flags]

commands:
  serve   -config FILE [-ready-file PATH]
                                   run the relay; -ready-file writes the bound addresses as JSON once it serves
  check   -config FILE             validate the config and print it with defaults filled (no secrets)
  sink    -listen ADDR [flags]     a small target that prints each request and answers 200
  dlq     list|show|replay|drop    inspect and replay dead letters through the admin API
  messages list|show|redeliver     message history: did the relay get job X, what did each target answer
  reload  [-config FILE]           reload the running relay's config file (as SIGHUP does) and say what changed
  health  [-config FILE]           exit 0 when the relay answers ready (a container health check)
  version                          print the version and the commit built from

Admin commands (dlq, messages, reload, health) find the admin API and its token in -config FILE,
or take -admin URL and -token-env NAME or -token-file PATH. relay <command> -h says more.
`

func main() {
	gcdefault.Apply()
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = cmdServe(ctx, rest, stdout, stderr)
	case "check":
		err = cmdCheck(rest, stdout, stderr)
	case "sink":
		err = cmdSink(ctx, rest, stdout, stderr)
	case "dlq":
		err = cmdDLQ(rest, stdout, stderr)
	case "messages":
		err = cmdMessages(rest, stdout, stderr)
	case "health":
		err = cmdHealth(rest, stdout)
	case "reload":
		err = cmdReload(rest, stdout)
	case "version", "-version", "--version":
		err = cmdVersion(rest, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "relay: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp): // -h printed the usage, as asked
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "relay: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "relay: %v\n", err)
	return 1
}

// configFlag parses -config and the command's own flags, which more adds to the set.
func configFlag(c *command, args []string, stdout io.Writer, more ...func(*flag.FlagSet)) (string, error) {
	path := c.String("config", "config.yaml", "path to the YAML configuration")
	for _, m := range more {
		m(c.FlagSet)
	}
	err := c.noArgs(args, stdout) // before *path is read
	return *path, err
}

func newLogger(c logConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	// Durations in seconds, as the config writes them, rather than integer nanoseconds.
	opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			a.Value = slog.Float64Value(a.Value.Duration().Seconds())
		}
		return a
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var readyFile string
	c := newCommand("serve", "serve [-config FILE] [-ready-file PATH]",
		"Run the relay: receive webhooks, store them, answer, and deliver them to the targets.")
	path, err := configFlag(c, args, stdout, func(fs *flag.FlagSet) {
		fs.StringVar(&readyFile, "ready-file", "", "once every listener is bound and the store answers, write the bound addresses "+
			`as JSON ({"listen":..., "admin":..., "http_listen":...}) to this file, atomically; removed at start and at a clean stop. `+
			"With port 0 in the config, this is how a supervisor or a test learns the ports")
	})
	if err != nil {
		return err
	}
	if readyFile != "" {
		// A file left by an earlier run must not pass for this one's.
		if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("-ready-file: %w", err)
		}
	}
	cfg, log, err := loadConfig(path, stderr)
	if err != nil {
		return err
	}
	store, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	// Bind before the TLS edge is built: with port 0 the edge must know the ports really bound.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	hln, err := listenHTTP01(cfg)
	if err != nil {
		return err
	}
	if hln != nil {
		defer hln.Close()
	}
	edge, err := newEdge(cfg, log, ln.Addr().String(), addrOf(hln))
	if err != nil {
		return err
	}
	reg := newRegistry(edge)
	rc := cfg.relayConfig()
	rc.Store, rc.Logger, rc.Metrics = store, log, reg
	if edge != nil { // ready once a certificate is loaded
		rc.ReadyChecks = []func(context.Context) error{edge.Ready}
	}
	r, err := relay.New(rc)
	if err != nil {
		return err
	}
	reloads, err := newReloader(path, stderr, log, r, cfg, reg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bound := boundAddrs{Listen: ln.Addr().String(), HTTPListen: addrOf(hln)}
	if ln, err = serveEdge(ctx, edge, cfg, ln, hln, log); err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading the configuration", "path", path)
				_, _ = reloads.reload(ctx) // the outcome is logged
			}
		}
	}()
	for _, r := range cfg.Routes {
		level := slog.LevelInfo
		if r.Insecure {
			level = slog.LevelWarn
		}
		log.Log(ctx, level, "route", "route", r.Name, "path", r.Path, "checks", r.posture())
	}
	log.Info("relay listening", "addr", bound.Listen, "store", cfg.Store.Type,
		"routes", len(rc.Routes), "targets", len(rc.Targets), "version", version)
	if cfg.Admin.Listen != "off" {
		adminAddr, stopAdmin, err := serveAdmin(ctx, cfg.Admin.Listen, r.AdminHandler(relay.AdminOptions{Token: cfg.Admin.token,
			Reload: reloads.reload, Hosts: cfg.Admin.Hosts, Pprof: cfg.Admin.Pprof, HistoryRetention: *cfg.History.Retention}), log)
		if err != nil {
			return err
		}
		defer stopAdmin()
		bound.Admin = adminAddr
	}
	if readyFile != "" {
		actx, cancelAnnounce := context.WithCancel(ctx)
		announced := make(chan struct{})
		go func() { defer close(announced); announceReady(actx, readyFile, bound, store, log) }()
		// Removed only once nothing can write it any more.
		defer func() { cancelAnnounce(); <-announced; _ = os.Remove(readyFile) }()
	}
	err = r.Run(ctx, ln)
	log.Info("relay stopped")
	return err
}

// boundAddrs are the addresses the listeners really bound (port 0 in the config is resolved).
type boundAddrs struct {
	Listen     string `json:"listen"`
	Admin      string `json:"admin,omitempty"`       // absent with admin.listen off
	HTTPListen string `json:"http_listen,omitempty"` // the ACME HTTP-01 listener; absent when off
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// announceReady writes the ready file once the store answers a ping (the listeners are bound
// already), so that whoever waits for the file can send at once.
func announceReady(ctx context.Context, path string, bound boundAddrs, store relay.Store, log *slog.Logger) {
	for warned := false; ; {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := store.Ping(pctx)
		cancel()
		if err == nil {
			break
		}
		if !warned {
			log.Warn("ready file: waiting for the store to answer", "path", path, "error", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	if ctx.Err() != nil {
		return // stopping: the file would outlive the relay
	}
	if err := writeReadyFile(path, bound); err != nil {
		log.Error("ready file: cannot write it", "path", path, "error", err)
		return
	}
	log.Info("ready file written", "path", path)
}

// writeReadyFile writes bound as JSON to path through a temporary file in the same directory and
// a rename, so a reader sees no file or the whole file.
func writeReadyFile(path string, bound boundAddrs) error {
	b, err := json.Marshal(bound)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename there is nothing left to remove
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// newRegistry holds the relay's metrics beside the Go runtime's, the process's, the build's and,
// with TLS, the certificates'.
func newRegistry(edge *tlsedge.Edge) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hookrelay_build_info",
		Help: "Always 1; the labels say which build runs."}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build)
	if edge != nil {
		reg.MustRegister(certExpiry{edge: edge, desc: prometheus.NewDesc("hookrelay_certificate_expiry_timestamp_seconds",
			"When the certificate served for a name expires (unix seconds).", []string{"name"}, nil)})
	}
	return reg
}

// certExpiry reports the served certificates' expiry when scraped, so renewals show at once.
type certExpiry struct {
	edge *tlsedge.Edge
	desc *prometheus.Desc
}

func (c certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	for name, at := range c.edge.NotAfter() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(at.Unix()), name)
	}
}

// serveAdmin runs the admin API on addr until ctx is done and returns the address it bound; stop
// waits for it to close.
func serveAdmin(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("admin listener: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "error", err)
		}
	}()
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	go func() {
		select {
		case <-ctx.Done():
			shutdown()
		case <-done:
		}
	}()
	log.Info("admin listening", "addr", ln.Addr().String())
	return ln.Addr().String(), func() { shutdown(); <-done }, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	c := newCommand("check", "check [-config FILE]",
		"Validate the configuration exactly as serve does (less binding ports and connecting to Redis), report every problem as FILE:LINE: key.path, or print it with the main defaults filled in; secrets are never printed.")
	path, err := configFlag(c, args, stdout)
	if err != nil {
		return err
	}
	cfg, _, err := loadConfig(path, stderr)
	if err != nil {
		return err
	}
	if err := relay.Validate(cfg.relayConfig()); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// The file config holds only the names of env vars and files, never a secret's value, so it
	// can be printed as is; say which secrets were found.
	fmt.Fprintf(stdout, "# %s is valid. Effective configuration, defaults filled in:\n", path)
	for _, r := range cfg.Routes {
		fmt.Fprintf(stdout, "# route %s: %s\n", r.Name, r.posture())
	}
	fmt.Fprintf(stdout, "# tls %s\n", cfg.TLS.summary(cfg.Listen))
	for _, t := range cfg.Targets {
		if t.SigningSecretEnv != "" || t.SigningSecretFile != "" {
			fmt.Fprintf(stdout, "# target %s: signing secret found (value not shown)\n", t.Name)
		}
		for _, h := range t.Headers {
			fmt.Fprintf(stdout, "# target %s: header %s set (value not shown)\n", t.Name, h.Name)
		}
	}
	// Target URLs may hold user:password: print them redacted.
	out := *cfg
	out.Targets = slices.Clone(cfg.Targets)
	for i := range out.Targets {
		out.Targets[i].URL = redactURL(out.Targets[i].URL)
	}
	enc := yaml.NewEncoder(stdout)
	enc.SetIndent(2)
	if err := enc.Encode(&out); err != nil {
		return err
	}
	return enc.Close()
}
