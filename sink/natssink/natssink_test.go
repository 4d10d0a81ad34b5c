package natssink

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"fanout/internal/natstest"
	"fanout/sink"
	"fanout/webhook"
)

// loopback is an Env whose guard lets the test's loopback servers through,
// as --allow-network 127.0.0.0/8 would.
func loopback() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), 5*time.Second)
}

// stream creates a stream that captures "events.>" and returns a
// JetStream handle on it, over a plain connection.
func stream(t testing.TB, url string, cfg jetstream.StreamConfig, connOpts ...nats.Option) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	nc, err := nats.Connect(url, connOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name == "" {
		cfg.Name = "EVENTS"
	}
	if len(cfg.Subjects) == 0 {
		cfg.Subjects = []string{"events.>"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, st
}

func open(t testing.TB, env sink.Env, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Open(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func msg(id string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: "cust-9",
		Headers: map[string]string{"X-Team": "billing"}}
}

func ctx10(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSend_MessageOutAndDuplicateDropped(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	_, st := stream(t, srv.URL, jetstream.StreamConfig{Duplicates: time.Minute})
	s := open(t, loopback(), fmt.Sprintf(`{"url":%q,"subject":"events.orders","stream":"EVENTS"}`, srv.URL))
	ctx := ctx10(t)

	if err := s.Send(ctx, msg("dlv_1")); err != nil {
		t.Fatal(err)
	}
	// The same delivery again, as after a crash before the runtime
	// recorded the first attempt: JetStream drops it, and Send says done.
	if err := s.Send(ctx, msg("dlv_1")); err != nil {
		t.Fatalf("resend: %v", err)
	}
	if err := s.Send(ctx, msg("dlv_2")); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2 (the resend dropped)", info.State.Msgs)
	}
	got, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject != "events.orders" || string(got.Data) != `{"type":"order.paid","n":1}` {
		t.Fatalf("message = %s %q", got.Subject, got.Data)
	}
	want := map[string]string{
		"Nats-Msg-Id": "dlv_1", sink.HeaderDeliveryID: "dlv_1", sink.HeaderEventID: "evt_dlv_1",
		sink.HeaderEventType: "order.paid", sink.HeaderTenant: "acme", sink.HeaderKey: "cust-9",
		"Content-Type": "application/json", "X-Team": "billing",
	}
	for k, v := range want {
		if g := got.Header.Get(k); g != v {
			t.Errorf("header %s = %q, want %q", k, g, v)
		}
	}
}

func TestSend_Retryable(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T) error
	}{
		{"server stopped", func(t *testing.T) error {
			srv := natstest.Start(t, natstest.Options{})
			stream(t, srv.URL, jetstream.StreamConfig{})
			s := open(t, loopback(), fmt.Sprintf(`{"url":%q,"subject":"events.x"}`, srv.URL))
			if err := s.Send(ctx10(t), msg("a")); err != nil {
				t.Fatal(err)
			}
			srv.Stop(t)
			return s.Send(ctx10(t), msg("b"))
		}},
		{"nothing listening", func(t *testing.T) error {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			_ = l.Close()
			c, err := Parse(json.RawMessage(`{"url":"nats://` + addr + `","subject":"events.x"}`))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Open(ctx10(t), loopback())
			return err
		}},
		{"stream full", func(t *testing.T) error {
			srv := natstest.Start(t, natstest.Options{})
			stream(t, srv.URL, jetstream.StreamConfig{MaxMsgs: 1, Discard: jetstream.DiscardNew})
			s := open(t, loopback(), fmt.Sprintf(`{"url":%q,"subject":"events.x"}`, srv.URL))
			if err := s.Send(ctx10(t), msg("a")); err != nil {
				t.Fatal(err)
			}
			return s.Send(ctx10(t), msg("b"))
		}},
		{"no stream captures the subject", func(t *testing.T) error {
			srv := natstest.Start(t, natstest.Options{})
			s := open(t, loopback(), fmt.Sprintf(`{"url":%q,"subject":"events.x"}`, srv.URL))
			return s.Send(ctx10(t), msg("a"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run(t)
			t.Log(err)
			if got := sink.OutcomeOf(err); got != sink.Retryable {
				t.Fatalf("outcome = %v (%v), want retryable", got, err)
			}
		})
	}
}

func TestSend_Permanent(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{User: "fanout", Password: "s3cret-passw0rd"})
	stream(t, srv.URL, jetstream.StreamConfig{}, nats.UserInfo("fanout", "s3cret-passw0rd"))
	addr := srv.Addr

	c, err := Parse(json.RawMessage(`{"url":"nats://fanout:wr0ng-passw0rd@` + addr + `","subject":"events.x"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Open(ctx10(t), loopback())
	if sink.OutcomeOf(err) != sink.Permanent {
		t.Fatalf("wrong password: %v, want permanent", err)
	}
	if strings.Contains(err.Error(), "wr0ng-passw0rd") {
		t.Fatalf("the error shows the password: %v", err)
	}

	// The right one in the URL works, and a stream that must be another
	// refuses for good.
	s := open(t, loopback(), `{"url":"nats://fanout:s3cret-passw0rd@`+addr+`","subject":"events.x","stream":"OTHER"}`)
	err = s.Send(ctx10(t), msg("a"))
	if sink.OutcomeOf(err) != sink.Permanent {
		t.Fatalf("expected stream OTHER: %v, want permanent", err)
	}
	if strings.Contains(err.Error(), "s3cret-passw0rd") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

// TestRedact: the credentials of the URL and of the config never appear in
// an error, whatever the client wrote in it.
func TestRedact(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	for _, cfg := range []string{
		`{"url":"nats://alice:hunter2-hunter2@` + addr + `","subject":"a"}`,
		`{"url":"nats://` + addr + `","subject":"a","user":"alice","password":"hunter2-hunter2"}`,
		`{"url":"nats://` + addr + `","subject":"a","token":"hunter2-hunter2"}`,
		`{"url":"tls://alice:hunter2-hunter2@` + addr + `,nats://bob:hunter2-hunter2@` + addr + `","subject":"a"}`,
	} {
		c, err := Parse(json.RawMessage(cfg))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctx10(t), loopback())
		if err == nil {
			t.Fatal("opened a closed port")
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(c.Target(), "hunter2") {
			t.Errorf("%s: error %q / target %q shows the password", cfg, err, c.Target())
		}
		if !strings.Contains(err.Error(), addr) {
			t.Errorf("error %q does not say which server", err)
		}
	}
}

// TestGuard: the SSRF guard refuses a broker on an internal address, for
// good, unless the operator allowed its network; it sits in the dialer, so
// a loopback server is refused too when loopback is not allowed.
func TestGuard(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	stream(t, srv.URL, jetstream.StreamConfig{})
	strict := sink.GuardedEnv(webhook.NewGuard(nil), 2*time.Second)
	for _, url := range []string{"nats://169.254.169.254:4222", "nats://10.1.2.3:4222", "nats://u:pw-pw-pw-pw@[fd00:ec2::254]:4222", srv.URL} {
		c, err := Parse(json.RawMessage(`{"url":"` + url + `","subject":"events.x"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctx10(t), strict)
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", url, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw-pw-pw-pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	// Allowed, the same server takes the message.
	s := open(t, loopback(), `{"url":"`+srv.URL+`","subject":"events.x"}`)
	if err := s.Send(ctx10(t), msg("a")); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		cfg   string
		field string // "" : valid
	}{
		{`{"url":"nats://h:4222","subject":"a.b"}`, ""},
		{`{"url":"nats://u:p@h:4222, tls://h2:4222","subject":"a","stream":"S"}`, ""},
		{`{"url":"nats://h","subject":"a","user":"u","password":"p"}`, ""},
		{`{"subject":"a"}`, "url"},
		{`{"url":"http://h","subject":"a"}`, "url"},
		{`{"url":"ws://h","subject":"a"}`, "url"},
		{`{"url":"nats://","subject":"a"}`, "url"},
		{`{"url":"nats://h/x","subject":"a"}`, "url"},
		{`{"url":"nats://h"}`, "subject"},
		{`{"url":"nats://h","subject":"a.*"}`, "subject"},
		{`{"url":"nats://h","subject":"a..b"}`, "subject"},
		{`{"url":"nats://h","subject":"a b"}`, "subject"},
		{`{"url":"nats://h","subject":"a","token":"t","user":"u"}`, "token"},
		{`{"url":"nats://h","subject":"a","password":"p"}`, "user"},
		{`{"url":"nats://h","subject":"a","stream":"a.b"}`, "stream"},
		{`{"url":"nats://h","subject":"a","extra":1}`, "extra"},
		{`{"url":5,"subject":"a"}`, "url"},
		{`[]`, ""},
		{`{"url":"nats://h","subject":"a"} x`, ""},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		valid := tt.field == "" && !strings.HasPrefix(tt.cfg, "[") && !strings.HasSuffix(tt.cfg, "x")
		if valid {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		ce, ok := err.(*sink.ConfigError)
		if !ok {
			t.Errorf("%s: %v, want a *sink.ConfigError", tt.cfg, err)
			continue
		}
		if ce.Field != tt.field {
			t.Errorf("%s: field %q (%v), want %q", tt.cfg, ce.Field, err, tt.field)
		}
	}
}
