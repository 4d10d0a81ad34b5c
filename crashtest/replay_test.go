package crashtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// apiJSON makes a JSON request to fanout and decodes the answer.
func apiJSON(t testing.TB, method, url string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := apiClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && json.Unmarshal(b, out) != nil {
		t.Fatalf("%s %s: %d %s is not JSON", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// TestCrash_KillDuringReplay SIGKILLs fanout in the middle of a replay of
// stored events to a destination added after them, restarts it, and checks
// that the replay carries on from its recorded cursor to the end: every
// event gets exactly one delivery to the destination in the store (a page
// done twice creates nothing twice), and the destination receives each.
func TestCrash_KillDuringReplay(t *testing.T) {
	t.Parallel()
	const events = 30000
	data := t.TempDir()
	p := startFanout(t, fanoutArgs(data, nil, fastRetries...))
	var ids []string
	for b := 0; b < events/1000; b++ {
		var batch []string
		for i := range 1000 {
			batch = append(batch, string(eventBody(fmt.Sprintf("r%d-%d", b, i), i)))
		}
		var out struct{ IDs []string }
		if code := apiJSON(t, "POST", p.URL+"/v1/batch", json.RawMessage("["+strings.Join(batch, ",")+"]"), &out); code != 202 {
			t.Fatalf("batch %d: %d", b, code)
		}
		ids = append(ids, out.IDs...)
	}
	// Every event fanned out (to no destination) before the destination
	// exists: otherwise a late fan-out would route some to it.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var page struct{ Events []any }
		apiJSON(t, "GET", p.URL+"/v1/events?state=pending&limit=1", nil, &page)
		if len(page.Events) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("events still pending a minute after they were posted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	s := newSink(t, healthy)
	var dst struct{ ID string }
	if code := apiJSON(t, "POST", p.URL+"/v1/destinations", map[string]any{"url": s.URL + "/late"}, &dst); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	var job struct {
		ID               string
		State            string
		Progress         float64
		Created, Skipped int64
	}
	if code := apiJSON(t, "POST", p.URL+"/v1/destinations/"+dst.ID+"/replay", map[string]any{"since": since}, &job); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	// Kill it once the job has recorded some pages, and not all.
	deadline = time.Now().Add(60 * time.Second)
	for {
		apiJSON(t, "GET", p.URL+"/v1/replays/"+job.ID, nil, &job)
		if job.Progress > 0 && job.State != "done" {
			break
		}
		if job.State == "done" || time.Now().After(deadline) {
			t.Fatalf("the replay was %s at %.2f before it could be killed mid-way", job.State, job.Progress)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.Kill(t)
	p.WaitExit(t, 10*time.Second)
	killedAt := job.Progress

	p = startFanout(t, fanoutArgs(data, nil, fastRetries...))
	deadline = time.Now().Add(2 * time.Minute)
	for job.State != "done" {
		if time.Now().After(deadline) {
			t.Fatalf("the replay is %+v two minutes after the restart", job)
		}
		time.Sleep(20 * time.Millisecond)
		apiJSON(t, "GET", p.URL+"/v1/replays/"+job.ID, nil, &job)
	}
	if job.Created+job.Skipped != events || job.Skipped > 1000 {
		t.Fatalf("replay counted %d created and %d skipped, want %d events in all", job.Created, job.Skipped, events)
	}
	s.waitDelivered(t, ids, 2*time.Minute)
	terminate(t, p, 30*time.Second)

	st := openStore(t, data)
	ctx := context.Background()
	for _, id := range ids {
		kids, err := st.CallListChildren(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, k := range kids {
			if k.Key == dst.ID {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("event %s has %d deliveries to the destination, want exactly 1", id, n)
		}
	}
	t.Logf("killed at %.0f%% of the replay; after the restart it finished: %d created, %d skipped (of a page done twice)",
		killedAt*100, job.Created, job.Skipped)
}
