package app

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/service"
)

// The figures of docs/BENCHMARKS.md, "Issue 10: history and replay". They
// need a million stored events, so they run only when asked:
//
//	FANOUT_BENCH_HISTORY=/tmp/history go test -run TestBenchHistory -v -timeout 30m ./internal/app
//
// The directory keeps the store between runs (building it takes a minute).
// FANOUT_BENCH_BIN names the fanout binary for the replay (default
// bin/fanout: make build first).

const benchEvents = 1_000_000

// benchTypes are the events' types and their shares, in thousandths.
var benchTypes = []struct {
	tag   string
	share int
}{{"order.paid", 400}, {"order.refunded", 50}, {"user.created", 300}, {"user.deleted", 1}, {"", 249}}

// buildHistory stores benchEvents events over the last 24 hours, as fanout
// leaves them: each delivered to destination A (order.*) and B (every
// event), 0.5% failed at A, 0.5% still delivering at B; ten carry the word
// "needle".
func buildHistory(t *testing.T, dir string) (store service.Store, destA, destB string) {
	t.Helper()
	path := filepath.Join(dir, "fanout.db")
	_, statErr := os.Stat(path)
	st := openTestStore(t, dir)
	ctx := context.Background()
	ts := newTestService(t, st)
	// Fixed ids: a store built by an earlier run has their deliveries.
	destA, destB = "dst_bench_a", "dst_bench_b"
	for id, u := range map[string]string{destA: "https://a.example.com/hook", destB: "https://b.example.com/hook"} {
		if err := ts.svc.Dests.Ensure(ctx, id, u, "benchmark"); err != nil {
			t.Fatal(err)
		}
	}
	if statErr == nil {
		return st, destA, destB
	}
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now().Add(-24 * time.Hour)
	step := 24 * time.Hour / benchEvents
	words := []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
	began := time.Now()
	var calls []*dispatch.Call
	for i := range benchEvents {
		at := start.Add(time.Duration(i) * step)
		r := rng.IntN(1000)
		tag := ""
		for _, bt := range benchTypes {
			if r < bt.share {
				tag = bt.tag
				break
			}
			r -= bt.share
		}
		word := words[rng.IntN(len(words))]
		if i%(benchEvents/10) == 7 {
			word = "needle"
		}
		body := fmt.Sprintf(`{"type":%q,"user_id":"u%d","word":%q,"amount":%d,"pad":"%s"}`, tag, rng.IntN(100000), word,
			rng.IntN(10000), strings.Repeat("x", 100))
		if tag == "" {
			body = fmt.Sprintf(`{"user_id":"u%d","word":%q,"pad":"%s"}`, rng.IntN(100000), word, strings.Repeat("x", 120))
		}
		id := uuidAt(t, at)
		// uuidAt's random bits are fixed: make them unique.
		id = id[:24] + fmt.Sprintf("%012x", i)
		root := &dispatch.Call{ID: id, Function: "handleEvent", Input: []byte(body), State: dispatch.StateDone, Tag: tag,
			RunAfter: at, CreatedAt: at, Gathers: 1, Output: []byte(`{"destinations":1}`)}
		var kids []*dispatch.Call
		if strings.HasPrefix(tag, "order.") {
			kids = append(kids, &dispatch.Call{Key: destA})
		}
		kids = append(kids, &dispatch.Call{Key: destB})
		failed, waiting := rng.IntN(200) == 0, rng.IntN(200) == 0
		for j, k := range kids {
			k.ID, k.Function, k.ParentID, k.Index, k.Input = dispatch.ChildID(id, 0, j), "publishEvent", id, j, []byte(`{}`)
			k.RunAfter, k.CreatedAt, k.State, k.Output = at, at, dispatch.StateDone, []byte(`{"status":204}`)
			if failed && k.Key == destA {
				k.State, k.Output, k.Error = dispatch.StateFailed, nil, "destination answered 422"
				root.State, root.Output = dispatch.StateFailed, nil
			}
			if waiting && k.Key == destB && !failed {
				k.State, k.Output = dispatch.StatePending, nil
				root.State, root.Output, root.Waiting = dispatch.StateWaiting, nil, 1
			}
		}
		calls = append(calls, root)
		calls = append(calls, kids...)
		if len(calls) >= 20000 || i == benchEvents-1 {
			if _, err := st.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: calls}); err != nil {
				t.Fatal(err)
			}
			calls = calls[:0]
		}
	}
	t.Logf("stored %d events in %v", benchEvents, time.Since(began).Round(time.Second))
	return st, destA, destB
}

func TestBenchHistory(t *testing.T) {
	dir := os.Getenv("FANOUT_BENCH_HISTORY")
	if dir == "" {
		t.Skip("set FANOUT_BENCH_HISTORY=DIR to measure the history and replay at a million events (docs/BENCHMARKS.md)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	st, destA, destB := buildHistory(t, dir)
	ts := newTestService(t, st)
	srv := httptest.NewServer(ts.handler)
	defer srv.Close()
	mid := time.Now().Add(-12 * time.Hour).UTC().Truncate(time.Second)
	window := "since=" + url.QueryEscape(mid.Format(time.RFC3339)) + "&until=" + url.QueryEscape(mid.Add(time.Hour).Format(time.RFC3339))
	queries := []struct{ name, query string }{
		{"no filter", ""},
		{"type=order.paid (40%, index)", "type=order.paid"},
		{"type=user.deleted (0.1%, index)", "type=user.deleted"},
		{"type=user.deleted,x.none (0.1%, no index: two types)", "type=user.deleted,x.none"},
		{"type=order.* (45%, prefix)", "type=order.*"},
		{"state=failed (0.5%, index)", "state=failed"},
		{"state=delivering (0.5%)", "state=delivering"},
		{"state=delivered (99%)", "state=delivered"},
		{"destination=A (45%)", "destination=" + destA},
		{"since/until: one hour, 12 h ago", window},
		{"q=golf (1 in 8)", "q=golf"},
		{"q=needle (10 events)", "q=needle"},
		{"q=needle, until the 10 are found (pages)", "q=needle&all=1"},
	}
	_ = destB
	if only := os.Getenv("FANOUT_BENCH_ONLY"); only != "" {
		queries = slices.DeleteFunc(queries, func(q struct{ name, query string }) bool { return !strings.Contains(q.name, only) })
	}
	fmt.Printf("\n| GET /v1/events?limit=50 at %d events | p50 | p99 | events | walked |\n|---|---|---|---|---|\n", benchEvents)
	for _, q := range queries {
		var times []time.Duration
		var got, walked int
		reps := 100
		switch {
		case strings.HasSuffix(q.query, "&all=1"):
			reps = 5
		case strings.HasPrefix(q.query, "q="):
			reps = 20
		}
		for r := range reps {
			began := time.Now()
			got, walked = 0, 0
			cursor := ""
			for {
				query := strings.TrimSuffix(q.query, "&all=1") + "&limit=50"
				if cursor != "" {
					query += "&cursor=" + cursor
				}
				resp, err := http.Get(srv.URL + "/v1/events?" + query)
				if err != nil {
					t.Fatal(err)
				}
				var page service.EventPage
				err = json.NewDecoder(resp.Body).Decode(&page)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("%s: %d %v", q.query, resp.StatusCode, err)
				}
				got += len(page.Events)
				walked += page.Scanned
				if !strings.HasSuffix(q.query, "&all=1") || page.NextCursor == "" || got >= 10 {
					break
				}
				cursor = page.NextCursor
			}
			if r > 0 || reps == 1 {
				times = append(times, time.Since(began))
			}
		}
		slices.Sort(times)
		p := func(f float64) time.Duration { return times[min(len(times)-1, int(f*float64(len(times))))] }
		fmt.Printf("| %s | %v | %v | %d | %d |\n", q.name, p(0.5).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond), got, walked)
	}
	if os.Getenv("FANOUT_BENCH_REPLAY") != "" {
		benchReplay(t, dir)
	}
}

// benchReplay replays the million events to a new destination with the
// real binary on a copy of the store, and reports how fast the job created
// deliveries, how long they took to drain, and the peak RSS.
func benchReplay(t *testing.T, dir string) {
	bin := os.Getenv("FANOUT_BENCH_BIN")
	if bin == "" {
		bin = "bin/fanout"
	}
	data := t.TempDir()
	if out, err := exec.Command("cp", filepath.Join(dir, "fanout.db"), filepath.Join(data, "fanout.db")).CombinedOutput(); err != nil {
		t.Fatalf("copy the store: %v %s", err, out)
	}
	var delivered atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer sink.Close()
	cmd := exec.Command(bin, "--addr", "127.0.0.1:0", "--data", data, "--allow-network", "127.0.0.0/8", "--log-level", "warn")
	logs, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logs
	cmd.Stdout = logs
	// --log-level warn hides the listening line: find the port by trying.
	ln, err := (&net0{}).free()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Args[2] = ln
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	base := "http://" + ln
	eventually(t, "fanout up", 60*time.Second, func() bool {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	var dst struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": sink.URL + "/replayed"}, &dst); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	began := time.Now()
	var job service.ReplayView
	if code := call(t, "POST", base+"/v1/destinations/"+dst.ID+"/replay", map[string]any{"since": time.Now().Add(-25 * time.Hour).UTC().Format(time.RFC3339)}, &job); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	var peak int64
	for job.State != "done" && job.State != "failed" {
		time.Sleep(200 * time.Millisecond)
		call(t, "GET", base+"/v1/replays/"+job.ID, nil, &job)
		peak = max(peak, vmHWM(cmd.Process.Pid))
		if time.Since(began) > 30*time.Minute {
			t.Fatalf("replay not done after 30 minutes: %+v", job)
		}
	}
	created := time.Since(began)
	for delivered.Load() < job.Created && time.Since(began) < 60*time.Minute {
		time.Sleep(200 * time.Millisecond)
		peak = max(peak, vmHWM(cmd.Process.Pid))
	}
	drained := time.Since(began)
	fmt.Printf("\nreplay of %d events to a new destination: job %s in %v (%.0f deliveries created/s), %d delivered after %v (%.0f/s), peak RSS %d MiB\n",
		job.Created+job.Skipped, job.State, created.Round(time.Second), float64(job.Created)/created.Seconds(), delivered.Load(),
		drained.Round(time.Second), float64(delivered.Load())/drained.Seconds(), peak>>10)
}

// vmHWM is a process's peak resident set, in KiB.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

type net0 struct{}

// free returns a loopback address with a free port.
func (net0) free() (string, error) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr, nil
}
