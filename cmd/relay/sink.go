package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// sink is a small target for trying the relay out: it prints each request and answers 200, or
// 401 when it was asked to verify signatures and one does not verify.
type sink struct {
	out    io.Writer
	mu     sync.Mutex     // one request printed at a time
	verify relay.Verifier // nil: no verification; else as a standard_webhooks route checks
	limit  int64
}

func cmdSink(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("sink", "sink [-listen ADDR] [-secret-env NAME | -secret-file PATH]",
		"Run a small target that prints each request and answers 200; with a secret it verifies the\n"+
			"relay's signature, as a standard_webhooks route would, and answers 401 to what does not verify.")
	listen := c.String("listen", "127.0.0.1:9000", "address to listen on")
	secretEnv := c.String("secret-env", "", "verify Standard Webhooks signatures with the secret in this env var")
	secretFile := c.String("secret-file", "", "verify Standard Webhooks signatures with the secret in this file")
	if err := c.noArgs(args, stdout); err != nil {
		return err
	}
	if *secretEnv != "" && *secretFile != "" {
		return usageError{errors.New("sink: use -secret-env or -secret-file, not both")}
	}
	s := &sink{out: stdout, limit: 16 << 20}
	secret, err := readSecret(*secretEnv, *secretFile)
	if err == nil && secret != "" {
		s.verify, err = filters.NewStandardWebhooks([]string{secret}, 0, nil)
	}
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	verifying := "off"
	if s.verify != nil {
		verifying = "on"
	}
	fmt.Fprintf(stderr, "sink listening on http://%s (signature verification %s)\n", ln.Addr(), verifying)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, s.limit))
	if err != nil {
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	verdict := ""
	status := http.StatusOK
	if s.verify != nil {
		if err := s.verify.Verify(r, body); err != nil {
			verdict, status = "signature INVALID: "+err.Error(), http.StatusUnauthorized
		} else {
			verdict = "signature ok"
		}
	}
	s.mu.Lock()
	fmt.Fprintf(s.out, "--- %s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), r.Method, r.URL.RequestURI())
	for _, h := range []string{"Content-Type", "X-Relay-Delivery-Id", "X-Relay-Route", "X-Relay-Provider",
		"X-Relay-Job-Id", "X-Relay-Job-Status", "X-Relay-Attempt", "X-Forwarded-For", "Webhook-Id"} {
		if v := r.Header.Get(h); v != "" {
			fmt.Fprintf(s.out, "%s: %s\n", h, v)
		}
	}
	if verdict != "" {
		fmt.Fprintln(s.out, verdict)
	}
	fmt.Fprintf(s.out, "%s\n", body)
	s.mu.Unlock()
	w.WriteHeader(status)
}
