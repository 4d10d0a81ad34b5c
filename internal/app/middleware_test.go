package app

import (
	"encoding/json"
	"fanout/internal/httpapi"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAPIToken(t *testing.T) {
	t.Parallel()
	ts := newTestAPI(t)
	const one, two = "tok_0123456789abcdef", "tok_fedcba9876543210"
	h := httpapi.NewHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), ts.svc, testLimits, []string{one, two}, nil)
	tests := []struct {
		name, method, path, auth string
		want                     int
		wantError                string
	}{
		{"NoHeader", "POST", "/v1/event", "", 401, "needs a token"},
		{"WrongToken", "POST", "/v1/event", "Bearer tok_0123456789abcdeX", 401, "not one of"},
		{"PrefixOfToken", "POST", "/v1/event", "Bearer tok_0123", 401, "not one of"},
		{"OtherScheme", "POST", "/v1/event", "Basic " + one, 401, "needs a token"},
		{"NoToken", "POST", "/v1/event", "Bearer", 401, "needs a token"},
		{"UnknownPathNeedsToken", "GET", "/v1/nothing-here", "", 401, "needs a token"},
		{"FirstToken", "POST", "/v1/event", "Bearer " + one, 202, ""},
		{"SecondToken", "POST", "/v1/event", "Bearer " + two, 202, ""},
		{"SchemeAnyCase", "POST", "/v1/event", "bearer " + one, 202, ""},
		{"ReadWithToken", "GET", "/v1/destinations", "Bearer " + two, 200, ""},
		{"HealthzOpen", "GET", "/healthz", "", 200, ""},
		{"MetricsOpen", "GET", "/metrics", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(`{"type":"t"}`))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Fatalf("%s %s with %q: %d %s, want %d", tc.method, tc.path, tc.auth, w.Code, w.Body, tc.want)
			}
			if tc.want == 401 {
				var e httpapi.ErrorBody
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, tc.wantError) {
					t.Fatalf("401 body %s, want an error containing %q", w.Body, tc.wantError)
				}
				if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("401 without a WWW-Authenticate: Bearer header: %v", w.Header())
				}
			}
		})
	}
	// Only the three accepted events were stored.
	if n := len(stored(t, ts.store)); n != 3 {
		t.Fatalf("%d events stored, want the 3 sent with a token", n)
	}
}
