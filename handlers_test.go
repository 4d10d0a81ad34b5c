package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRun_SeedRoutes runs the command as main does and sends what the
// seed's example sends: one event to POST /v1/event, two to POST
// /v1/batch. Each reaches the destination once, with its bytes. The
// routes' own tests are in internal/httpapi and internal/app.
func TestRun_SeedRoutes(t *testing.T) {
	var mu sync.Mutex
	got := map[string]string{}
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.Header.Get("webhook-id")] = string(b)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer dest.Close()

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--allow-network", "127.0.0.0/8",
			"--destination", dest.URL + "/hook"}, func(string) string { return "" }, io.Discard, pw)
		pw.Close()
	}()
	base := ""
	sc := bufio.NewScanner(pr)
	re := regexp.MustCompile(`msg="fanout listening" addr=(\S+)`)
	for base == "" && sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			base = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if base == "" {
		t.Fatal("fanout did not say where it listens")
	}
	post := func(path, body string) string {
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	events := []string{`{"type":"user.created","name":"ada"}`, `{"type":"a","n":1}`, `{"type":"b","n":2}`}
	post("/v1/event", events[0])
	post("/v1/batch", "["+events[1]+","+events[2]+"]")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == len(events) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered", n, len(events))
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	for _, e := range events {
		found := false
		for _, b := range got {
			found = found || b == e
		}
		if !found {
			t.Errorf("event %s was not delivered as sent (got %v)", e, got)
		}
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
