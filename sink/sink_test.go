package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
)

// fake is a kind whose senders count what they send and record when they
// are closed.
type fake struct {
	mu      sync.Mutex
	opened  []*fakeSender
	openErr error
	gate    chan struct{} // when set, Open waits for it
}

type fakeConfig struct {
	URL      string `json:"url"`
	Password string `json:"password,omitempty"`
	Note     string `json:"note,omitempty"`
	f        *fake
}

type fakeSender struct {
	cfg    fakeConfig
	sent   atomic.Int64
	closed atomic.Bool
}

func (s *fakeSender) Send(ctx context.Context, m *Message) error {
	if s.closed.Load() {
		return errors.New("send on a closed sender")
	}
	s.sent.Add(1)
	return nil
}

func (s *fakeSender) Close() error { s.closed.Store(true); return nil }

func (c *fakeConfig) Target() string         { return RedactURL(c.URL) }
func (c *fakeConfig) SecretValues() []string { return []string{c.Password, URLPassword(c.URL)} }
func (c *fakeConfig) Open(ctx context.Context, env Env) (Sender, error) {
	if c.f.gate != nil {
		<-c.f.gate
	}
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	if c.f.openErr != nil {
		return nil, c.f.openErr
	}
	s := &fakeSender{cfg: *c}
	c.f.opened = append(c.f.opened, s)
	return s, nil
}

func (f *fake) kind() *Kind {
	return &Kind{Name: "fake", Secrets: []string{"password"}, URLs: []string{"url"},
		Parse: func(raw json.RawMessage) (Config, error) {
			c := &fakeConfig{f: f}
			if err := DecodeStrict(raw, c); err != nil {
				return nil, err
			}
			if c.URL == "" {
				return nil, Errorf("url", "required")
			}
			return c, nil
		}}
}

func (f *fake) senders() []*fakeSender {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeSender(nil), f.opened...)
}

func target(id string, version int64, cfg string) Target {
	return Target{ID: id, Version: version, Type: "fake", Config: json.RawMessage(cfg)}
}

func TestPool_ReuseChangeForget(t *testing.T) {
	f := &fake{}
	p := NewPool(NewRegistry(f.kind()), Env{})
	defer p.Close()
	ctx := context.Background()
	m := &Message{DeliveryID: "d"}

	// Lazily opened once, and shared by concurrent deliveries.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Send(ctx, target("a", 1, `{"url":"nats://h"}`), m); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s := f.senders(); len(s) != 1 || s[0].sent.Load() != 20 {
		t.Fatalf("%d senders opened, want 1 that sent 20", len(s))
	}

	// A new version with the same config (a pause, a description) keeps
	// the connection, whitespace aside.
	if err := p.Send(ctx, target("a", 2, `{ "url": "nats://h" }`), m); err != nil {
		t.Fatal(err)
	}
	if s := f.senders(); len(s) != 1 {
		t.Fatalf("a version with the same config opened a new sender")
	}

	// A changed config closes the old sender and opens a new one.
	if err := p.Send(ctx, target("a", 3, `{"url":"nats://other"}`), m); err != nil {
		t.Fatal(err)
	}
	s := f.senders()
	if len(s) != 2 || !s[0].closed.Load() || s[1].closed.Load() || s[1].cfg.URL != "nats://other" {
		t.Fatalf("after a change: %d senders, first closed %v", len(s), s[0].closed.Load())
	}

	// A delivery still holding the older version is told to retry.
	err := p.Send(ctx, target("a", 2, `{"url":"nats://h"}`), m)
	if OutcomeOf(err) != Retryable {
		t.Fatalf("stale version: %v, want retryable", err)
	}

	// Forget (deleted) closes it; the next delivery opens anew.
	p.Forget("a")
	if !s[1].closed.Load() || p.Open() != 0 {
		t.Fatalf("Forget did not close the sender")
	}
	if err := p.Send(ctx, target("a", 4, `{"url":"nats://other"}`), m); err != nil {
		t.Fatal(err)
	}
	if len(f.senders()) != 3 {
		t.Fatal("no new sender after Forget")
	}
	_ = p.Close()
	if !f.senders()[2].closed.Load() {
		t.Fatal("Close left a sender open")
	}
	if err := p.Send(ctx, target("a", 4, `{"url":"nats://other"}`), m); err == nil {
		t.Fatal("Send after Close worked")
	}
}

// TestPool_InFlightKeepsSender: a sender replaced while a delivery uses it
// is closed when that delivery is done, not under it.
func TestPool_InFlightKeepsSender(t *testing.T) {
	f := &fake{}
	p := NewPool(NewRegistry(f.kind()), Env{})
	defer p.Close()
	ctx := context.Background()
	s, release, err := p.Acquire(ctx, target("a", 1, `{"url":"nats://h"}`))
	if err != nil {
		t.Fatal(err)
	}
	p.Forget("a")
	if err := s.Send(ctx, &Message{}); err != nil {
		t.Fatalf("the sender was closed under a delivery: %v", err)
	}
	release()
	if !f.senders()[0].closed.Load() {
		t.Fatal("the replaced sender was not closed after its last delivery")
	}
}

func TestPool_OpenFailures(t *testing.T) {
	f := &fake{openErr: Retry(errors.New("dial nats://u:topsecret@h: connection refused"), "topsecret")}
	p := NewPool(NewRegistry(f.kind()), Env{})
	defer p.Close()
	ctx := context.Background()
	tg := target("a", 1, `{"url":"nats://u:topsecret@h"}`)
	err := p.Send(ctx, tg, &Message{})
	if OutcomeOf(err) != Retryable || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("open failure: %v, want retryable and redacted", err)
	}
	// Not kept: once the broker is back, the next delivery opens.
	f.mu.Lock()
	f.openErr = nil
	f.mu.Unlock()
	if err := p.Send(ctx, tg, &Message{}); err != nil {
		t.Fatal(err)
	}

	// A stored config that does not parse is permanent.
	err = p.Send(ctx, target("b", 1, `{"url":"nats://h","bogus":1}`), &Message{})
	if OutcomeOf(err) != Permanent || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("bad config: %v, want permanent naming the field", err)
	}
	err = p.Send(ctx, Target{ID: "c", Type: "nope", Config: json.RawMessage(`{}`)}, &Message{})
	if OutcomeOf(err) != Permanent {
		t.Fatalf("unknown type: %v, want permanent", err)
	}

	// A delivery that stops waiting for a slow open times out; the open
	// goes on for the next one.
	f.gate = make(chan struct{})
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err = p.Send(short, target("d", 1, `{"url":"nats://slow"}`), &Message{})
	if OutcomeOf(err) != Retryable {
		t.Fatalf("slow open: %v, want retryable", err)
	}
	close(f.gate)
	if err := p.Send(ctx, target("d", 1, `{"url":"nats://slow"}`), &Message{}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.senders()); n != 2 {
		t.Fatalf("%d senders, want 2 (the slow one opened once)", n)
	}
}

func TestRedactString(t *testing.T) {
	tests := []struct {
		in      string
		secrets []string
		want    string
	}{
		{`dial nats://alice:pw@h:4222: refused`, nil, `dial nats://…@h:4222: refused`},
		{`connect "amqp://guest:guest@127.0.0.1:5672/vh" failed`, nil, `connect "amqp://…@127.0.0.1:5672/vh" failed`},
		{`redis://:only-password@h and rediss://u:p@h2`, nil, `redis://…@h and rediss://…@h2`},
		{`auth failed for token tok-123456`, []string{"tok-123456"}, `auth failed for token …`},
		{`bad pass abc and abcdef`, []string{"abc", "abcdef"}, `bad pass … and …`},
		{`nothing here`, []string{""}, `nothing here`},
	}
	for _, tt := range tests {
		if got := RedactString(tt.in, tt.secrets...); got != tt.want {
			t.Errorf("RedactString(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// Redact keeps the classification, and does not unwrap to the secret.
	inner := fmt.Errorf("%w: nats://a:sekrit@h", dispatch.ErrTemporary)
	err := Redact(inner, "sekrit")
	if strings.Contains(err.Error(), "sekrit") || OutcomeOf(err) != Retryable {
		t.Fatalf("Redact = %v (%v)", err, OutcomeOf(err))
	}
	for e := error(err); e != nil; e = errors.Unwrap(e) {
		if strings.Contains(e.Error(), "sekrit") {
			t.Fatalf("the chain still holds the secret: %v", e)
		}
	}
	if err := Fail(inner, "sekrit"); OutcomeOf(err) != Permanent || strings.Contains(err.Error(), "sekrit") {
		t.Fatalf("Fail = %v", err)
	}
	plain := errors.New("auth failed for token sekrit-token")
	if err := Retry(plain, "sekrit-token"); OutcomeOf(err) != Retryable || strings.Contains(err.Error(), "sekrit") {
		t.Fatalf("Retry = %v", err)
	}
	if err := Fail(plain, "sekrit-token"); OutcomeOf(err) != Permanent || strings.Contains(err.Error(), "sekrit") {
		t.Fatalf("Fail = %v", err)
	}
}

func TestMaskUnmask(t *testing.T) {
	k := (&fake{}).kind()
	stored := `{"url":"nats://alice:long-password-1234@h:4222,nats://bob:x@h2","password":"another-secret-5678","note":"n"}`
	masked, err := k.Mask(json.RawMessage(stored))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(masked), "long-password") || strings.Contains(string(masked), "another-secret") ||
		!strings.Contains(string(masked), `nats://alice:…1234@h:4222,nats://bob:…@h2`) || !strings.Contains(string(masked), `"password":"…5678"`) {
		t.Fatalf("masked = %s", masked)
	}

	// Posted back as shown: the stored secrets are kept.
	back, err := k.Unmask(masked, json.RawMessage(stored))
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	_ = json.Unmarshal(back, &got)
	_ = json.Unmarshal([]byte(stored), &want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("unmasked = %s, want %s", back, stored)
	}

	// A new password replaces the stored one.
	changed := strings.Replace(string(masked), `"password":"…5678"`, `"password":"brand-new"`, 1)
	back, err = k.Unmask(json.RawMessage(changed), json.RawMessage(stored))
	if err != nil || !strings.Contains(string(back), `"password":"brand-new"`) || !strings.Contains(string(back), "long-password-1234") {
		t.Fatalf("new password: %s %v", back, err)
	}

	// The address changed, a masked secret kept: refused, or the stored
	// credential would go to a server of the editor's choosing.
	for _, moved := range []string{
		strings.Replace(string(masked), "@h:4222", "@evil:4222", 1),
		strings.Replace(string(masked), "@h2", "@evil", 1),
	} {
		_, err = k.Unmask(json.RawMessage(moved), json.RawMessage(stored))
		var ce *ConfigError
		if !errors.As(err, &ce) || (ce.Field != "url" && ce.Field != "password") {
			t.Fatalf("moved with masked secrets: %v, want a config error", err)
		}
	}
	// The same with the password in its own field and a URL without
	// one: the host changed, the masked password is refused.
	plainStored := `{"url":"nats://h:4222","password":"another-secret-5678"}`
	_, err = k.Unmask(json.RawMessage(`{"url":"nats://evil:4222","password":"…5678"}`), json.RawMessage(plainStored))
	var pe *ConfigError
	if !errors.As(err, &pe) || pe.Field != "password" {
		t.Fatalf("new host, masked password: %v, want a config error on password", err)
	}
	if back, err := k.Unmask(json.RawMessage(`{"url":"nats://h:4222","password":"…5678"}`), json.RawMessage(plainStored)); err != nil ||
		!strings.Contains(string(back), "another-secret-5678") {
		t.Fatalf("same host, masked password: %s %v", back, err)
	}
	// A mask with nothing stored is refused too.
	_, err = k.Unmask(json.RawMessage(`{"url":"nats://h","password":"…5678"}`), nil)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "password" {
		t.Fatalf("mask without a stored value: %v", err)
	}
}

func TestDecodeStrict(t *testing.T) {
	type cfg struct {
		URL string `json:"url"`
		N   int    `json:"n"`
	}
	tests := []struct{ in, field string }{
		{`{"url":"x","n":1}`, "-"},
		{`{"url":"x","m":1}`, "m"},
		{`{"url":1}`, "url"},
		{`{"n":"1"}`, "n"},
		{`{"url":"x"} {}`, ""},
		{`[1]`, ""},
		{`nul`, ""},
		{`{"url":`, ""},
	}
	for _, tt := range tests {
		err := DecodeStrict(json.RawMessage(tt.in), &cfg{})
		if tt.field == "-" {
			if err != nil {
				t.Errorf("%s: %v", tt.in, err)
			}
			continue
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: %v, want a config error on %q", tt.in, err, tt.field)
		}
	}
}
