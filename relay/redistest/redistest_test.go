package redistest

import "testing"

func TestStartKillRestart(t *testing.T) {
	s := Start(t, Options{AOF: true})
	if err := ping(s.port); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if err := ping(s.port); err == nil {
		t.Fatal("still answering after Kill")
	}
	s.Restart()
	if err := ping(s.port); err != nil {
		t.Fatalf("not answering after Restart: %v", err)
	}
}
