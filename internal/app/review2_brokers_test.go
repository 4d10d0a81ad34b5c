package app

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestRun_BrokerCredentialInURLNotShown: every way a NATS credential can
// be written in a config is masked for a token without view_secret, or
// refused. nats.go reads the userinfo of a URL without a password
// (nats://token@host) as a token, which the masking of "user:password@"
// URLs did not see: a token with read alone saw it in GET
// /v1/destinations/{id} and the listing.
func TestRun_BrokerCredentialInURLNotShown(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	const secret = "s3cret-nats-credential-4242"
	for _, tc := range []struct {
		name   string
		config map[string]any
		status int // of the operator's POST
	}{
		{"user and password in the url", map[string]any{"url": "nats://alice:" + secret + "@127.0.0.1:4222", "subject": "a.b"}, 201},
		{"token in the url", map[string]any{"url": "nats://" + secret + "@127.0.0.1:4222", "subject": "a.b"}, 400},
		{"token in the url of a list", map[string]any{"url": "nats://127.0.0.1:4222,tls://" + secret + "@127.0.0.2:4222", "subject": "a.b"}, 400},
		{"token field", map[string]any{"url": "nats://127.0.0.1:4222", "subject": "a.b", "token": secret}, 201},
		{"password field", map[string]any{"url": "nats://127.0.0.1:4222", "subject": "a.b", "user": "alice", "password": secret}, 201},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d brokerDest
			st, b := f.as(t, f.operator, "POST", "/v1/tenants/acme/destinations", map[string]any{"type": "nats", "config": tc.config})
			if st != tc.status {
				t.Fatalf("POST: %d %s, want %d", st, b, tc.status)
			}
			if st != 201 {
				if !strings.Contains(b, "url") || strings.Contains(b, secret) {
					t.Fatalf("the refusal %s names no url, or shows the credential", b)
				}
				return
			}
			if err := json.Unmarshal([]byte(b), &d); err != nil {
				t.Fatal(err)
			}
			for _, path := range []string{"/v1/destinations/" + d.ID, "/v1/destinations", "/v1/tenants/acme/destinations/" + d.ID} {
				st, b := f.as(t, f.tokens["acmeRead"], "GET", path, nil)
				if st != 200 || strings.Contains(b, secret) {
					t.Errorf("GET %s with read alone: %d, shows the credential: %v\n%s", path, st, strings.Contains(b, secret), b)
				}
			}
			f.must(t, 204, f.operator, "DELETE", "/v1/destinations/"+d.ID, nil, nil)
		})
	}
}

// TestRun_BrokerConfigFieldCase: a config's field names are exact. Go's
// JSON decoding matches them without regard to case, while the masking and
// the check that a kept secret stays at its address read the exact names:
// "Password" was stored and shown in full to a token without view_secret,
// and a PATCH with "Endpoint_URL" moved an SQS destination that had none to
// another host, keeping its masked keys (fanout then signed its requests
// there with them).
func TestRun_BrokerConfigFieldCase(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	const secret = "s3cret-broker-credential-4242"
	var tok struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "acme brokers", "rights": []string{"read", "manage"},
		"tenant": "acme", "kinds": []string{"nats", "sqs"}, "expires_in": "1h"}, &tok)
	sqs := map[string]any{"queue_url": "http://127.0.0.1:1/123456789012/q", "region": "us-east-1",
		"access_key_id": "AKIAEXAMPLE0000", "secret_access_key": secret}
	var own brokerDest
	f.must(t, 201, f.operator, "POST", "/v1/tenants/acme/destinations", map[string]any{"type": "sqs", "config": sqs}, &own)
	var masked map[string]any
	if err := json.Unmarshal(own.Config, &masked); err != nil {
		t.Fatal(err)
	}
	moved := map[string]any{"Endpoint_URL": "http://127.0.0.2:9/"}
	for k, v := range masked {
		moved[k] = v
	}
	for _, tc := range []struct {
		name   string
		token  string
		method string
		path   string
		body   map[string]any
	}{
		{"a secret field in capitals", f.operator, "POST", "/v1/tenants/acme/destinations",
			map[string]any{"type": "nats", "config": map[string]any{"url": "nats://127.0.0.1:4222", "subject": "a.b", "user": "alice", "Password": secret}}},
		{"an address field in capitals", f.operator, "POST", "/v1/tenants/acme/destinations",
			map[string]any{"type": "nats", "config": map[string]any{"URL": "nats://alice:" + secret + "@127.0.0.1:4222", "subject": "a.b"}}},
		{"a PATCH moving the endpoint, secrets masked", tok.Token, "PATCH", "/v1/destinations/" + own.ID,
			map[string]any{"config": moved}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, b := f.as(t, tc.token, tc.method, tc.path, tc.body)
			if st != 400 {
				t.Errorf("%s %s: %d %s, want 400", tc.method, tc.path, st, b)
			}
			if _, b := f.as(t, f.tokens["acmeRead"], "GET", "/v1/destinations", nil); strings.Contains(b, secret) || strings.Contains(b, "127.0.0.2:9") {
				t.Errorf("a token without view_secret reads:\n%s", b)
			}
		})
	}
}
