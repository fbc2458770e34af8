package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hookrelay/hookrelay/cmd/internal/buildlock"
	"github.com/hookrelay/hookrelay/relay/portpick"
)

// relayBuildFlags are the Dockerfile's go build flags but for the version (a test keeps them in
// step): built the same way as cmd/relay's tests build it, the second build is served from the
// Go build cache.
var relayBuildFlags = []string{"-trimpath", "-ldflags", "-s -w -X main.version=bench"}

// buildRelay compiles the relay binary into dir, as the Dockerfile does (CGO_ENABLED=0, static).
func buildRelay(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "relay")
	args := append(append([]string{"build"}, relayBuildFlags...), "-o", bin, "github.com/hookrelay/hookrelay/cmd/relay")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	release, err := buildlock.Hold() // another build of the relay (cmd/relay's tests) finishes first
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	release()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/relay (run relay-bench inside the repository, or give -relay-bin): %v\n%s", err, out)
	}
	return bin, nil
}

// relayProc is a relay started by the bench; its logs go to a file.
type relayProc struct {
	cmd   *exec.Cmd
	addr  string // listener host:port, from the ready file
	admin string // admin host:port, from the ready file
	done  chan error
	log   string
	once  sync.Once
}

// readyAddrs is what relay serve -ready-file writes.
type readyAddrs struct {
	Listen string `json:"listen"`
	Admin  string `json:"admin"`
}

// startRelay runs bin serve -config cfg (whose listeners may bind port 0), learns the bound
// addresses from its ready file, and waits until /readyz answers 200. Its logs go to logPath,
// whatever their level; the ready file goes beside it.
func startRelay(ctx context.Context, bin, cfg, logPath string) (*relayProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	readyFile := logPath + ".ready.json"
	p := &relayProc{cmd: exec.Command(bin, "serve", "-config", cfg, "-ready-file", readyFile), done: make(chan error, 1), log: logPath}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		p.done <- p.cmd.Wait()
		logf.Close()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.admin == "" {
			if b, err := os.ReadFile(readyFile); err == nil {
				var a readyAddrs
				if err := json.Unmarshal(b, &a); err != nil || a.Admin == "" {
					p.stop()
					return nil, fmt.Errorf("relay ready file %s: %q (%v); the bench needs the admin listener", readyFile, b, err)
				}
				p.addr, p.admin = a.Listen, a.Admin
			}
		}
		if p.admin != "" {
			resp, err := http.Get("http://" + p.admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return p, nil
				}
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("relay exited: %v; log: %s\n%s", err, logPath, tail(logPath))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("relay not ready within 30s; log: %s\n%s", logPath, tail(logPath))
		}
	}
}

func (p *relayProc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and waits for the drain, killing the process after 20 s.
func (p *relayProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}

// memory is a process's resident set from /proc/<pid>/status, in KiB. File-backed pages are
// mostly the embedded store's memory-mapped file, which the kernel can drop under pressure;
// anonymous ones are the heap and stacks.
type memory struct{ rss, hwm, anon, file int64 }

func readMemory(pid int) (memory, error) {
	if pid <= 0 {
		return memory{}, errors.New("no process ID")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		switch name {
		case "VmRSS":
			m.rss = kb
		case "VmHWM":
			m.hwm = kb
		case "RssAnon":
			m.anon = kb
		case "RssFile":
			m.file = kb
		}
	}
	return m, nil
}

// treeMemory sums VmRSS over pid and its children (nginx's master and workers).
func treeMemory(pid int) int64 {
	m, err := readMemory(pid)
	if err != nil {
		return 0
	}
	total := m.rss
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, c := range strings.Fields(string(b)) {
			if cpid, err := strconv.Atoi(c); err == nil {
				total += treeMemory(cpid)
			}
		}
	}
	return total
}

// cpuTime is the user and system CPU time of pid, and with children of its child processes
// (nginx's workers), from /proc/<pid>/stat.
func cpuTime(pid int, children bool) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name in parentheses, which may hold spaces: state is field 3,
	// utime 14 and stime 15, in clock ticks (100 per second on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	total := time.Duration(ut+st) * (time.Second / 100)
	if children {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, t := range tasks {
			cb, _ := os.ReadFile(t)
			for _, c := range strings.Fields(string(cb)) {
				if cpid, err := strconv.Atoi(c); err == nil {
					total += cpuTime(cpid, true)
				}
			}
		}
	}
	return total
}

// nginxProc is the baseline: nginx from the distribution as a plain reverse proxy to the sink,
// with upstream keep-alive, on a free loopback port.
type nginxProc struct {
	cmd  *exec.Cmd
	done chan error
	url  string
}

func startNginx(ctx context.Context, dir string, k *kit, sinkAddr string, withTLS bool) (*nginxProc, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
		if err != nil {
			return nil, errors.New("-baseline nginx: nginx not found (Debian: apt-get install -y nginx)")
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	// nginx cannot tell which port 0 gave it: pick a port and, when nginx reports it taken, pick
	// another (see portpick).
	for attempt := 1; ; attempt++ {
		addr := "127.0.0.1:" + strconv.Itoa(portpick.Pick())
		p, err := startNginxOn(ctx, bin, dir, k, sinkAddr, addr, withTLS)
		if errors.Is(err, errPortTaken) && attempt < portpick.Attempts {
			continue
		}
		return p, err
	}
}

// errPortTaken is nginx failing to bind its port: another process holds it.
var errPortTaken = errors.New("port taken")

func startNginxOn(ctx context.Context, bin, dir string, k *kit, sinkAddr, addr string, withTLS bool) (*nginxProc, error) {
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the workers read files in the bench's private temp dir
	}
	listen, tlsConf, scheme := addr, "", "http"
	if withTLS {
		listen += " ssl"
		tlsConf = fmt.Sprintf("ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3;", k.path(fileCert), k.path(fileKey))
		scheme = "https"
	}
	conf := fmt.Sprintf(`%[1]s
worker_processes auto;
pid %[2]s/nginx.pid;
error_log %[2]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log %[2]s/nginx-access.log;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  upstream sink {
    server %[3]s;
    keepalive 128;
  }
  server {
    listen %[4]s;
    %[5]s
    keepalive_requests 1000000;
    client_max_body_size 1m;
    location / {
      proxy_pass http://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, user, dir, sinkAddr, listen, tlsConf)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	errLog, pidFile := filepath.Join(dir, "nginx-error.log"), filepath.Join(dir, "nginx.pid")
	_ = os.Remove(errLog) // only this start's errors count
	_ = os.Remove(pidFile)
	p := &nginxProc{cmd: exec.Command(bin, "-e", errLog, "-p", dir, "-c", confPath, "-g", "daemon off;"),
		done: make(chan error, 1), url: scheme + "://" + addr}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.done <- p.cmd.Wait() }()
	// nginx writes its pid file after binding its listeners: the file with our pid means nginx
	// holds the port (dialling could reach whoever else holds it).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(p.cmd.Process.Pid) {
			return p, nil
		}
		select {
		case err := <-p.done:
			log, _ := os.ReadFile(errLog)
			if strings.Contains(string(log), "Address already in use") {
				return nil, fmt.Errorf("nginx on %s: %w", addr, errPortTaken)
			}
			return nil, fmt.Errorf("nginx exited: %v\n%s", err, tail(errLog))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("nginx did not listen within 10s\n%s", tail(errLog))
		}
	}
}

func (p *nginxProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGQUIT) // graceful
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
