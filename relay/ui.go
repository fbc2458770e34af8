package relay

import (
	"embed"
	"io/fs"
	"net/http"
)

// The web inspector at /ui/ on the admin listener: static files embedded in the binary (no CDN, no
// build step). The page holds no data: it asks the API for everything with the admin token as a
// bearer header (relay/ui/app.js), so serving it needs no token and leaks nothing.

//go:embed ui/index.html ui/app.js ui/app.css
var uiFiles embed.FS

// uiCSP allows the page's own script, style and API calls and nothing else: no inline script, no
// other origin, no framing, no form posting anywhere.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, req)
	})
}
