package pubsubsink

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"fanout/sink"
	"fanout/webhook"
)

func loopback() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), 5*time.Second)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func server(t *testing.T, opts ...pstest.ServerReactorOption) *pstest.Server {
	t.Helper()
	srv := pstest.NewServerWithAddress("127.0.0.1:0", opts...)
	t.Cleanup(func() { _ = srv.Close() })
	if _, err := srv.GServer.CreateTopic(ctxT(t, 5*time.Second), &pubsubpb.Topic{Name: "projects/shop/topics/orders"}); err != nil {
		t.Fatal(err)
	}
	return srv
}

func open(t *testing.T, env sink.Env, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(ctxT(t, 10*time.Second), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func msg(id, key string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: key,
		Headers: map[string]string{"X-Team": "billing"}}
}

func TestSend(t *testing.T) {
	srv := server(t)
	s := open(t, loopback(), fmt.Sprintf(`{"project_id":"shop","topic":"orders","emulator_host":%q,"ordering":true}`, srv.Addr))
	ctx := ctxT(t, 10*time.Second)
	var wg sync.WaitGroup
	for i, key := range []string{"cust-9", "cust-9", ""} {
		wg.Go(func() {
			if err := s.Send(ctx, msg(fmt.Sprint("dlv_", i), key)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := srv.Messages()
	if len(got) != 3 {
		t.Fatalf("%d messages, want 3", len(got))
	}
	for _, m := range got {
		id := m.Attributes[sink.HeaderDeliveryID]
		want := map[string]string{
			sink.HeaderDeliveryID: id, sink.HeaderEventID: "evt_" + id, sink.HeaderEventType: "order.paid",
			sink.HeaderTenant: "acme", "content-type": "application/json", "X-Team": "billing",
		}
		key := "cust-9"
		if id == "dlv_2" {
			key = ""
		} else {
			want[sink.HeaderKey] = key
		}
		if fmt.Sprint(m.Attributes) != fmt.Sprint(want) || string(m.Data) != `{"type":"order.paid","n":1}` || m.OrderingKey != key || m.Topic != "projects/shop/topics/orders" {
			t.Errorf("message %s: %q attributes %v key %q, want %v key %q", m.Topic, m.Data, m.Attributes, m.OrderingKey, want, key)
		}
	}
	// Without ordering, no ordering key.
	srv.ClearMessages()
	plain := open(t, loopback(), fmt.Sprintf(`{"project_id":"shop","topic":"projects/shop/topics/orders","emulator_host":%q}`, srv.Addr))
	if err := plain.Send(ctx, msg("dlv_3", "cust-9")); err != nil {
		t.Fatal(err)
	}
	if got := srv.Messages(); len(got) != 1 || got[0].OrderingKey != "" {
		t.Fatalf("%+v, want one message without an ordering key", got)
	}
}

func TestSend_Outcomes(t *testing.T) {
	tests := []struct {
		name  string
		code  codes.Code // injected on Publish; OK: none
		topic string
		want  sink.Outcome
	}{
		{"no such topic", codes.OK, "missing", sink.Retryable},
		{"permission denied", codes.PermissionDenied, "orders", sink.Retryable},
		{"unauthenticated", codes.Unauthenticated, "orders", sink.Permanent},
		{"message refused", codes.InvalidArgument, "orders", sink.Permanent},
		{"quota", codes.ResourceExhausted, "orders", sink.Retryable},
		{"unavailable", codes.Unavailable, "orders", sink.Retryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []pstest.ServerReactorOption
			if tt.code != codes.OK {
				opts = append(opts, pstest.WithErrorInjection("Publish", tt.code, "injected"))
			}
			srv := server(t, opts...)
			s := open(t, loopback(), fmt.Sprintf(`{"project_id":"shop","topic":%q,"emulator_host":%q,"ordering":true}`, tt.topic, srv.Addr))
			// The client retries some codes itself until the delivery's
			// context ends: give it a second.
			err := s.Send(ctxT(t, time.Second), msg("d", "k"))
			t.Log(err)
			if got := sink.OutcomeOf(err); got != tt.want {
				t.Fatalf("outcome %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

// TestSend_OrderingResumes: a failure with an ordering key does not stop
// the key's next messages.
func TestSend_OrderingResumes(t *testing.T) {
	srv := server(t)
	s := open(t, loopback(), fmt.Sprintf(`{"project_id":"shop","topic":"orders","emulator_host":%q,"ordering":true}`, srv.Addr))
	srv.SetAutoPublishResponse(false)
	srv.AddPublishResponse(nil, status.Error(codes.InvalidArgument, "refused"))
	srv.AddPublishResponse(&pubsubpb.PublishResponse{MessageIds: []string{"m-2"}}, nil)
	if err := s.Send(ctxT(t, 5*time.Second), msg("first", "k")); sink.OutcomeOf(err) != sink.Permanent {
		t.Fatalf("first: %v, want permanent", err)
	}
	if err := s.Send(ctxT(t, 5*time.Second), msg("next", "k")); err != nil {
		t.Fatalf("the key's next message: %v", err)
	}
}

func TestGuard(t *testing.T) {
	srv := server(t)
	strict := sink.GuardedEnv(webhook.NewGuard(nil), 2*time.Second)
	key := serviceAccountKey(t, "sa@shop.iam.gserviceaccount.com")
	for _, cfg := range []string{
		`{"project_id":"shop","topic":"orders","emulator_host":"169.254.169.254:8085"}`,
		`{"project_id":"shop","topic":"orders","emulator_host":"` + srv.Addr + `"}`,
		`{"project_id":"shop","topic":"orders","endpoint":"169.254.169.254:443","credentials_json":` + key + `}`,
		`{"project_id":"shop","topic":"orders","endpoint":"10.0.0.8:443","credentials_json":` + key + `}`,
	} {
		c, err := Parse(json.RawMessage(cfg))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctxT(t, 5*time.Second), strict)
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", cfg, err)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}

// serviceAccountKey is a service account key file for email, as a JSON
// string (quoted, for a config).
func serviceAccountKey(t *testing.T, email string) string {
	t.Helper()
	return keyOfType(t, "service_account", email)
}

// keyOfType is a key file of type typ, with a service account's fields.
func keyOfType(t *testing.T, typ, email string) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	file, _ := json.Marshal(map[string]string{
		"type": typ, "project_id": "shop", "private_key_id": "0123456789abcdef0123456789abcdef01234567",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": email, "client_id": "1", "token_uri": "http://169.254.169.254/token",
	})
	quoted, _ := json.Marshal(string(file))
	return string(quoted)
}

// issuer is the service account a credential's token is signed as.
func issuer(t *testing.T, c *Config) string {
	t.Helper()
	creds, err := c.credentials(&http.Client{Transport: http.NewFileTransport(http.Dir(t.TempDir()))})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := creds.Token(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok.Value, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWT", tok.Value)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct{ Iss string }
	_ = json.Unmarshal(payload, &claims)
	return claims.Iss
}

// TestCredentials: the config's key signs its own tokens (no request to
// the token_uri of the file, here the metadata address); without a key of
// its own, a destination never gets fanout's application default
// credentials, unless the operator allowed them and the config asks.
func TestCredentials(t *testing.T) {
	c, err := Parse(json.RawMessage(`{"project_id":"shop","topic":"orders","credentials_json":` + serviceAccountKey(t, "tenant@shop.iam.gserviceaccount.com") + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if iss := issuer(t, c.(*Config)); iss != "tenant@shop.iam.gserviceaccount.com" {
		t.Errorf("signed as %q, want the config's service account", iss)
	}

	var own string
	if err := json.Unmarshal([]byte(serviceAccountKey(t, "fanout@ops.iam.gserviceaccount.com")), &own); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fanout.json")
	if err := os.WriteFile(path, []byte(own), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", path)

	for _, k := range []*sink.Kind{Kind, NewKind(sink.Ambient{Google: true})} {
		_, err := k.Parse(json.RawMessage(`{"project_id":"shop","topic":"orders"}`))
		var ce *sink.ConfigError
		if !errors.As(err, &ce) || ce.Field != "credentials_json" {
			t.Errorf("no credentials: %v, want a config error on credentials_json", err)
		}
	}
	_, err = Kind.Parse(json.RawMessage(`{"project_id":"shop","topic":"orders","ambient_credentials":true}`))
	if err == nil || !strings.Contains(err.Error(), sink.FlagAmbientGoogle) {
		t.Errorf("ambient not allowed: %v, want an error naming %s", err, sink.FlagAmbientGoogle)
	}
	amb, err := NewKind(sink.Ambient{Google: true}).Parse(json.RawMessage(`{"project_id":"shop","topic":"orders","ambient_credentials":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if f := sink.AmbientFlag(amb); f != sink.FlagAmbientGoogle {
		t.Errorf("AmbientFlag %q", f)
	}
	if sink.AmbientFlag(c) != "" {
		t.Errorf("AmbientFlag of a config with its own key: %q", sink.AmbientFlag(c))
	}
	// (The ambient search reads GOOGLE_APPLICATION_CREDENTIALS; a self
	// signed token needs no network.)
	ambCfg := amb.(*Config)
	creds, err := ambCfg.credentials(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(creds.JSON()), "fanout@ops.iam.gserviceaccount.com") {
		t.Errorf("ambient credentials are not the environment's")
	}
}

func TestParse(t *testing.T) {
	key := serviceAccountKey(t, "sa@shop.iam.gserviceaccount.com")
	ext, _ := json.Marshal(`{"type":"external_account","credential_source":{"executable":{"command":"/bin/sh -c id"}}}`)
	// A file of another type with every field of a service account key.
	impersonated := keyOfType(t, "impersonated_service_account", "sa@shop.iam.gserviceaccount.com")
	tests := []struct {
		cfg   string
		field string
	}{
		{`{"project_id":"shop","topic":"orders","credentials_json":` + key + `}`, ""},
		{`{"topic":"projects/shop/topics/orders","emulator_host":"127.0.0.1:8085","ordering":true}`, ""},
		{`{"project_id":"shop","topic":"orders","endpoint":"europe-west1-pubsub.googleapis.com:443","credentials_json":` + key + `}`, ""},
		{`{"topic":"orders","emulator_host":"h:1"}`, "project_id"},
		{`{"project_id":"shop","emulator_host":"h:1"}`, "topic"},
		{`{"project_id":"shop","topic":"projects/other/topics/orders","emulator_host":"h:1"}`, "topic"},
		{`{"project_id":"shop","topic":"goog-x","emulator_host":"h:1"}`, "topic"},
		{`{"project_id":"shop","topic":"orders"}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","credentials_json":` + string(ext) + `}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","credentials_json":` + impersonated + `}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","credentials_json":"{}"}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","credentials_json":"nope"}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","credentials_json":` + key + `,"emulator_host":"h:1"}`, "credentials_json"},
		{`{"project_id":"shop","topic":"orders","emulator_host":"h"}`, "emulator_host"},
		{`{"project_id":"shop","topic":"orders","emulator_host":"h:1","endpoint":"x:443"}`, "endpoint"},
		{`{"project_id":"shop","topic":"orders","ambient_credentials":true}`, "ambient_credentials"},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		var ce *sink.ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%.120s: %v, want a config error on %s", tt.cfg, err, tt.field)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}

// TestMask: the key is write-only.
func TestMask(t *testing.T) {
	key := serviceAccountKey(t, "sa@shop.iam.gserviceaccount.com")
	stored := json.RawMessage(`{"project_id":"shop","topic":"orders","credentials_json":` + key + `}`)
	masked, err := Kind.Mask(stored)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(masked), "PRIVATE KEY") || strings.Contains(string(masked), "client_email") {
		t.Errorf("masked: %s", masked)
	}
	back, err := Kind.Unmask(masked, stored)
	if err != nil || !strings.Contains(string(back), "PRIVATE KEY") {
		t.Errorf("unmask: %s %v", back, err)
	}
	moved := strings.Replace(string(masked), `"project_id"`, `"endpoint":"evil.example:443","project_id"`, 1)
	if _, err := Kind.Unmask(json.RawMessage(moved), stored); err == nil {
		t.Errorf("kept the key for another endpoint")
	}
}
