package tlsedge

// FileLooks counts the looks at the certificate files so far (files mode).
func (e *Edge) FileLooks() int64 { return e.files.looks.Load() }
