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
	rl.log.Info("configuration reloaded", "changes", res.Lines())
	for _, name := range res.Targets.Removed {
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
	rc := next.relayConfig()
	res, err := rl.relay.Reload(relay.Routing{Routes: rc.Routes, Targets: rc.Targets, Clients: rc.Clients})
	if err != nil {
		return res, err
	}
	res.Routes = routeChanges(rl.current, next)
	res.Restart = restartOnly(rl.current, next)
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

// routeChanges compares the routes of two files by name, as the file writes them.
func routeChanges(a, b *fileConfig) relay.Changes {
	var c relay.Changes
	for _, r := range b.Routes {
		if old := a.route(r.Name); old == nil {
			c.Added = append(c.Added, r.Name)
		} else if !sameYAML(*old, r) {
			c.Changed = append(c.Changed, r.Name)
		}
	}
	for _, r := range a.Routes {
		if b.route(r.Name) == nil {
			c.Removed = append(c.Removed, r.Name)
		}
	}
	return c
}

// sameYAML compares two values as the file writes them, not what was built from them.
func sameYAML(a, b any) bool {
	ya, _ := yaml.Marshal(a)
	yb, _ := yaml.Marshal(b)
	return bytes.Equal(ya, yb)
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
		if !sameYAML(s.a, s.b) {
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
		Result relay.ReloadResult `json:"result"`
		Lines  []string           `json:"lines"`
	}
	if err := api.do(http.MethodPost, "/v1/reload", nil, &res); err != nil {
		return fmt.Errorf("reload refused, the running configuration is kept:\n%w", err)
	}
	fmt.Fprintln(stdout, "reloaded:")
	for _, l := range res.Lines {
		fmt.Fprintln(stdout, "  "+l)
	}
	if len(res.Result.Restart) > 0 {
		return fmt.Errorf("changes to %s were not applied: restart the relay to apply them", strings.Join(res.Result.Restart, ", "))
	}
	return nil
}
