package replicatest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/internal/pgtest"
)

// TestDatabaseOutage cuts a replica off its database, as a server that is
// gone (connections refused) and as a network that drops everything: ingest
// answers 503 (nothing stored, so the client retries), the replica keeps
// running, and the events it had acknowledged before are all delivered once
// the database is back. Deliveries that were running when the database went
// away could not record their outcome: they run again once their lease
// expires (30s), which is most of what the test waits for.
func TestDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for timeouts; skipped with -short")
	}
	t.Parallel() // mostly waiting: beside the load of TestReplicas_KillOne
	tests := []struct {
		name string
		mode string
	}{
		{"Refused", pgtest.Refuse},
		{"Blackhole", pgtest.Blackhole},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits for leases to expire: 30s
			proxy := pgtest.StartProxy(t, pgtest.NewURL(t))
			var failing atomic.Bool
			var mu sync.Mutex
			got := map[string]int{}
			refusedDelivered := 0 // deliveries of the event refused during the outage
			dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if failing.Load() {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				got[r.Header.Get("webhook-id")]++
				if strings.Contains(string(body), `"during"`) {
					refusedDelivered++
				}
				mu.Unlock()
				w.WriteHeader(http.StatusNoContent)
			}))
			t.Cleanup(dest.Close)
			r := startReplica(t, "replica", fanoutArgs(t, proxy.URL, []string{dest.URL}, "--ingest-timeout", "3s"))
			client := &http.Client{Timeout: 60 * time.Second}

			// Events acknowledged while the destination fails: their
			// deliveries wait for a retry in the store.
			failing.Store(true)
			var ids []string
			for i := range 20 {
				got, err := post(client, r.URL+"/v1/event", fmt.Appendf(nil, `{"n": %d}`, i), 1)
				if err != nil {
					t.Fatalf("event %d before the outage: %v", i, err)
				}
				ids = append(ids, got...)
			}

			proxy.Set(tc.mode)
			failing.Store(false)
			start := time.Now()
			resp, err := client.Post(r.URL+"/v1/event", "application/json", bytesReader(`{"during": "outage"}`))
			if err != nil {
				t.Fatalf("POST during the outage: %v", err)
			}
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("POST during the outage answered %s (Retry-After %q), want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
			}
			if took > 30*time.Second {
				t.Fatalf("the 503 took %v", took)
			}
			t.Logf("ingest answered 503 after %v with the database %s", took.Round(time.Millisecond), tc.mode)
			time.Sleep(2 * time.Second) // deliveries fail to record their outcome meanwhile
			select {
			case <-r.Exited():
				t.Fatalf("the replica exited during the outage:\n%s", r.Logs.Tail(30))
			default:
			}

			proxy.Set(pgtest.Forward)
			back := time.Now()
			deadline := back.Add(90 * time.Second)
			for {
				missing := 0
				mu.Lock()
				for _, id := range ids {
					if got[id] == 0 {
						missing++
					}
				}
				mu.Unlock()
				if missing == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d events acknowledged before the outage not delivered 90s after it ended", missing, len(ids))
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Logf("all %d events acknowledged before the outage delivered %v after it ended", len(ids), time.Since(back).Round(time.Millisecond))
			after, err := post(client, r.URL+"/v1/event", []byte(`{"after": "outage"}`), 1)
			if err != nil {
				t.Fatalf("POST after the outage: %v", err)
			}
			// The event refused with 503 during the outage was not stored:
			// the pipeline delivers what came after it, never it.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				mu.Lock()
				n := got[after[0]]
				mu.Unlock()
				if n > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the event sent after the outage was not delivered within 30s")
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if refusedDelivered != 0 {
				t.Fatalf("the event refused with 503 during the outage was delivered %d times", refusedDelivered)
			}
		})
	}
}

func bytesReader(s string) *strings.Reader { return strings.NewReader(s) }
