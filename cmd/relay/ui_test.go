package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The web inspector in a real browser (Debian's chromium, headless) against the binary: the token
// prompt, the list with new webhooks appearing by themselves, a job-ID search, a message page with
// its body and attempts, a redeliver click, an error shown rather than a blank page, and sender
// values shown as text, never as HTML. With HOOKRELAY_UI_SCREENSHOTS=DIR it saves the list and
// the message page there (the README's screenshots: HOOKRELAY_UI_SCREENSHOTS=docs).
func TestBinaryInspectorInBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: install it (apt-get install -y chromium), as the README's test command does")
	}
	var fixed atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "job-b") && !fixed.Load() {
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = io.WriteString(w, `{"error":"unknown job"}`)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer target.Close()
	const token = "inspector-admin-token-0123456789"
	dir := t.TempDir()
	cfg := writeConfig(t, dir, target.URL, "")
	writeFile(t, cfg, strings.Replace(mustRead(t, cfg), "admin: {listen: 127.0.0.1:0}",
		"admin: {listen: 127.0.0.1:0, token_env: HOOKRELAY_T_ADMIN}", 1))
	p := startProc(t, []string{"HOOKRELAY_T_ADMIN=" + token}, "serve", "-config", cfg)
	admin := p.adminURL(t)

	post := func(job string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"id": job, "status": "completed",
			"output": []string{"https://cdn.example/" + job + ".png"}})
		if status, _ := postJSON(t, p.url()+"/hooks/fashn", string(body)); status/100 != 2 {
			t.Fatalf("post %s: %d", job, status)
		}
	}
	const xss = `<img src=x onerror="window.pwned=1">`
	for _, job := range []string{"job-a", "job-b", xss} {
		post(job)
	}

	// The page itself: no token needed, a strict policy.
	resp, err := http.Get(admin + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != 200 ||
		!strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("GET /ui/: %d, CSP %q", resp.StatusCode, csp)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 860), chromedp.Flag("headless", "new"))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	// No timeout on the browser's context: it would stop the browser (chromedp.Run). Each wait
	// has its own, and go test's bounds the whole.
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// until waits for a JavaScript condition to hold. An element not there yet (the page renders
	// as its API calls answer) counts as false, not as an error.
	until := func(what, js string) {
		t.Helper()
		js = "(() => { try { return !!(" + js + "); } catch (e) { return false; } })()"
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
			t.Fatalf("%s: %v; the page shows:\n%s", what, err, page)
		}
	}
	shots := os.Getenv("HOOKRELAY_UI_SCREENSHOTS")
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		d := shots
		if d == "" {
			d = t.TempDir()
		} else if !filepath.IsAbs(d) {
			d = filepath.Join("..", "..", d) // from cmd/relay to the repository root
		}
		if err := os.WriteFile(filepath.Join(d, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rows := `[...document.querySelectorAll('#rows tr')]`

	run("open the inspector", chromedp.Navigate(admin+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS(`#token-form button`)))
	until("the list", rows+`.length === 3 && `+rows+`.some(r => r.querySelector('td.job').textContent === 'job-b' && r.textContent.includes('app: dead'))`)
	until("sender values as text", `window.pwned === undefined && !document.querySelector('#rows img') && `+
		rows+`.some(r => r.querySelector('td.job').textContent === `+jsString(xss)+`)`)

	post("job-c")
	until("a new webhook without a reload", rows+`.length === 4 && `+rows+`[0].textContent.includes('job-c')`)
	until("job-c delivered", rows+`[0].textContent.includes('app: delivered')`)
	shot("inspector-list.png")

	run("search by job ID", chromedp.SetValue(chromedp.CSS("#f-job"), "job-b"), chromedp.Click(chromedp.CSS("#search")))
	until("one result", rows+`.length === 1 && `+rows+`[0].querySelector('td.job').textContent === 'job-b'`)

	run("open the message", chromedp.Click(chromedp.CSS(`#rows a`)))
	app := `document.querySelector('section[data-target="app"]')`
	until("the message page", `document.getElementById('m-body').textContent.includes('"id": "job-b"') && `+
		app+` && `+app+`.querySelector('.badge').textContent === 'dead' && `+
		app+`.querySelector('.timeline').textContent.includes('HTTP 422') && `+
		app+`.querySelector('.answer').textContent === '{"error":"unknown job"}'`)
	shot("inspector-message.png")

	fixed.Store(true)
	run("redeliver", chromedp.Click(chromedp.CSS(`section[data-target="app"] button[data-action="Redeliver"]`)))
	until("delivered after the redeliver click", app+`.querySelector('.badge').textContent === 'delivered' && `+
		app+`.querySelectorAll('.timeline li').length === 2 && `+app+`.querySelector('.timeline li:last-child').textContent.includes('HTTP 200')`)

	run("an unknown message", chromedp.Navigate(admin+"/ui/#/m/nope"))
	until("its error shown", `!document.getElementById('error').hidden && document.getElementById('error').textContent.includes('404') && `+
		`document.getElementById('error').textContent.includes('no message nope')`)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return fmt.Sprint(string(b))
}
