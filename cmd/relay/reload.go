package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/hookrelay/hookrelay/relay"
)

// reloader rereads the config file on SIGHUP or `relay reload` and swaps in what can change
// while running: routes with their checks and secrets, allowlists, rate limits, targets, and
// trusted_proxies. The rest needs a restart; a change there is logged, not applied.
type reloader struct {
	path  string
	logs  io.Writer
	log   *slog.Logger
	relay *relay.Relay
	count *prometheus.CounterVec // result: ok, refused

	mu      sync.Mutex
	current *fileConfig
}

func newReloader(path string, logs io.Writer, log *slog.Logger, r *relay.Relay, current *fileConfig,
	reg prometheus.Registerer) (*reloader, error) {
	rl := &reloader{path: path, logs: logs, log: log, relay: r, current: current,
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookrelay_config_reloads_total",
			Help: "Configuration reloads, by result (ok, refused: the old configuration was kept).",
		}, []string{"result"})}
	if err := reg.Register(rl.count); err != nil {
		return nil, err
	}
	rl.count.WithLabelValues("ok")
	rl.count.WithLabelValues("refused")
	return rl, nil
}

// reload applies the file as it is now. On any error the running configuration stays in force.
func (rl *reloader) reload(_ context.Context) (relay.ReloadResult, error) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	res, err := rl.apply()
	if err != nil {
		rl.count.WithLabelValues("refused").Inc()
		rl.log.Error("configuration reload refused; the running configuration is kept", "error", err)
		return res, err
	}
	rl.count.WithLabelValues("ok").Inc()
	rl.log.Info("configuration reloaded", "routes", res.Routes,
		"targets_restarted", res.Restarted, "targets_removed", res.Removed)
	for _, name := range res.Removed {
		rl.log.Warn("target removed; its queued deliveries stay in the store until a target of this name is configured again",
			"target", name)
	}
	return res, nil
}

func (rl *reloader) apply() (relay.ReloadResult, error) {
	raw, err := os.ReadFile(rl.path)
	if err != nil {
		return relay.ReloadResult{}, fmt.Errorf("read config: %w", err)
	}
	next, _, err := parse(raw, rl.path, rl.logs, rl.current, rl.log)
	if err != nil {
		return relay.ReloadResult{}, err
	}
	routes, targets, err := next.engineConfig()
	if err != nil {
		return relay.ReloadResult{}, err
	}
	res, err := rl.relay.Reload(relay.Routing{Routes: routes, Targets: targets, Clients: next.clients})
	if err != nil {
		return res, err
	}
	if keys := restartOnly(rl.current, next); len(keys) > 0 {
		rl.log.Warn("changed settings need a restart to take effect; the running values are kept",
			"keys", strings.Join(keys, ", "))
	}
	// What needs a restart keeps describing the running process.
	next.Listen, next.DataDir, next.TLS, next.Admin, next.Log = rl.current.Listen, rl.current.DataDir, rl.current.TLS, rl.current.Admin, rl.current.Log
	next.Store, next.Delivery, next.Timeouts = rl.current.Store, rl.current.Delivery, rl.current.Timeouts
	next.History = rl.current.History
	rl.current = next
	for _, r := range next.Routes {
		rl.log.Info("route", "route", r.Name, "path", r.Path, "checks", r.posture())
	}
	return res, nil
}

// restartOnly names the top-level settings that differ between a and b but only take effect at
// start.
func restartOnly(a, b *fileConfig) []string {
	var keys []string
	for _, s := range []struct {
		key  string
		a, b any
	}{
		{"listen", a.Listen, b.Listen}, {"data_dir", a.DataDir, b.DataDir}, {"tls", a.TLS, b.TLS}, {"timeouts", a.Timeouts, b.Timeouts},
		{"admin", a.Admin, b.Admin},
		{"log", a.Log, b.Log}, {"store", a.Store, b.Store}, {"delivery", a.Delivery, b.Delivery},
		{"history", a.History, b.History},
	} {
		// Compared as YAML: only what the file says, not what was built from it.
		ya, _ := yaml.Marshal(s.a)
		yb, _ := yaml.Marshal(s.b)
		if !bytes.Equal(ya, yb) {
			keys = append(keys, s.key)
		}
	}
	return keys
}

// cmdReload asks a running relay, through its admin API, to reload its config file.
func cmdReload(args []string, stdout io.Writer) error {
	api, err := adminCommand("reload", "Make the running relay reread its config file, as SIGHUP does, and print what changed.", args, stdout)
	if err != nil {
		return err
	}
	var res struct {
		Routes    int      `json:"routes"`
		Restarted []string `json:"targets_restarted"`
		Removed   []string `json:"targets_removed"`
	}
	if err := api.do(http.MethodPost, "/v1/reload", nil, &res); err != nil {
		return fmt.Errorf("reload refused, the running configuration is kept:\n%w", err)
	}
	fmt.Fprintf(stdout, "reloaded: %d routes", res.Routes)
	if len(res.Restarted) > 0 {
		fmt.Fprintf(stdout, "; targets restarted: %s", strings.Join(res.Restarted, ", "))
	}
	if len(res.Removed) > 0 {
		fmt.Fprintf(stdout, "; targets removed: %s", strings.Join(res.Removed, ", "))
	}
	_, err = fmt.Fprintln(stdout)
	return err
}
