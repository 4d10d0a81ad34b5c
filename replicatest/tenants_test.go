package replicatest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/internal/pgtest"
)

// TestReplicas_TenantsAndTokens: two replicas on one PostgreSQL share the
// tenants and the tokens at once, with no refresh to wait for: a tenant
// created on one takes events on the other, a token minted on one acts on
// the other, and a token revoked on one is refused by the other on its
// next request; an event taken by either goes to its tenant's destination
// only.
func TestReplicas_TenantsAndTokens(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	got := map[string][]string{} // path -> webhook-ids
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		got[r.URL.Path] = append(got[r.URL.Path], r.Header.Get("webhook-id"))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(dest.Close)
	db := pgtest.NewURL(t)
	const operator = "replica-operator-token-0123456789"
	start := func(name string) *replica {
		return startReplica(t, name, fanoutArgs(t, db, nil, "--api-token", operator))
	}
	a, b := start("replica-a"), start("replica-b")
	do := func(base, token, method, path, body string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			_ = json.Unmarshal(b, out)
		}
		return resp.StatusCode
	}
	if code := do(a.URL, operator, "PUT", "/v1/tenants/acme", `{}`, nil); code != 201 {
		t.Fatalf("create acme on a: %d", code)
	}
	if code := do(a.URL, operator, "PUT", "/v1/tenants/globex", `{}`, nil); code != 201 {
		t.Fatalf("create globex on a: %d", code)
	}
	// Created on a, known to b at once.
	if code := do(b.URL, operator, "POST", "/v1/tenants/acme/destinations", `{"url":"`+dest.URL+`/acme"}`, nil); code != 201 {
		t.Fatalf("acme's destination on b: %d", code)
	}
	if code := do(b.URL, operator, "POST", "/v1/tenants/globex/destinations", `{"url":"`+dest.URL+`/globex"}`, nil); code != 201 {
		t.Fatalf("globex's destination on b: %d", code)
	}
	// Destinations are cached and reloaded every second: a's cache must
	// have them before a routes to them (tenants and tokens need no wait).
	if !waitFor(10*time.Second, func() bool {
		var l struct{ Destinations []struct{ ID string } }
		do(a.URL, operator, "GET", "/v1/destinations", "", &l)
		return len(l.Destinations) == 2
	}) {
		t.Fatal("replica a never saw b's destinations")
	}
	var tok struct{ ID, Token string }
	if code := do(a.URL, operator, "POST", "/v1/tokens", `{"name":"acme","rights":["ingest","read"],"tenant":"acme"}`, &tok); code != 201 {
		t.Fatalf("mint on a: %d", code)
	}
	var ev struct{ ID string }
	if code := do(b.URL, tok.Token, "POST", "/v1/event", `{"type":"t"}`, &ev); code != 202 {
		t.Fatalf("a's token on b: %d", code)
	}
	var evG struct{ ID string }
	if code := do(a.URL, operator, "POST", "/v1/tenants/globex/event", `{"type":"t"}`, &evG); code != 202 {
		t.Fatalf("globex's event on a: %d", code)
	}
	if !waitFor(15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["/acme"]) >= 1 && len(got["/globex"]) >= 1
	}) {
		t.Fatalf("deliveries: %v", got)
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	for path, ids := range got {
		for _, id := range ids {
			if (path == "/acme" && id == evG.ID) || (path == "/globex" && id == ev.ID) {
				t.Errorf("%s got the other tenant's event %s", path, id)
			}
		}
	}
	mu.Unlock()
	// acme's token reads its event on a; globex's event is not found.
	if code := do(a.URL, tok.Token, "GET", "/v1/events/"+ev.ID, "", nil); code != 200 {
		t.Fatalf("acme's event with acme's token on a: %d", code)
	}
	if code := do(a.URL, tok.Token, "GET", "/v1/events/"+evG.ID, "", nil); code != 404 {
		t.Fatalf("globex's event with acme's token: %d, want 404", code)
	}
	// Revoked on b, refused by a on its next request.
	if code := do(b.URL, operator, "DELETE", "/v1/tokens/"+tok.ID, "", nil); code != 204 {
		t.Fatalf("revoke on b: %d", code)
	}
	if code := do(a.URL, tok.Token, "GET", "/v1/events", "", nil); code != 401 {
		t.Fatalf("a revoked token on the other replica: %d, want 401 at once", code)
	}
}
