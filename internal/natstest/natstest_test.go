package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestStart: the server listens on loopback, takes only its user's
// password, has JetStream on file storage with the deduplication window
// the tests rely on, counts its clients, and refuses connections once
// stopped.
func TestStart(t *testing.T) {
	s := Start(t, Options{User: "fan", Password: "pw-0123456789"})
	if _, err := nats.Connect(s.URL, nats.UserInfo("fan", "wrong-pw")); err == nil {
		t.Fatal("a wrong password connected")
	}
	if _, err := nats.Connect(s.URL); err == nil {
		t.Fatal("no password connected")
	}
	nc, err := nats.Connect(s.URL, nats.UserInfo("fan", "pw-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if n := s.NumClients(t); n != 1 {
		t.Fatalf("%d clients, want 1", n)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"},
		Storage: jetstream.FileStorage, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := js.Publish(ctx, "s.a", []byte("x"), jetstream.WithMsgID("m1")); err != nil {
			t.Fatal(err)
		}
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 || info.Config.Duplicates != time.Minute {
		t.Fatalf("%d messages, duplicate window %v; want 1 (the second dropped), 1m", info.State.Msgs, info.Config.Duplicates)
	}
	s.Stop(t)
	if _, err := nats.Connect(s.URL, nats.UserInfo("fan", "pw-0123456789"), nats.Timeout(time.Second)); err == nil {
		t.Fatal("connected to a stopped server")
	}
}

// TestStart_Twice: two servers at once get ports of their own.
func TestStart_Twice(t *testing.T) {
	a, b := Start(t, Options{}), Start(t, Options{})
	if a.Addr == b.Addr {
		t.Fatalf("both on %s", a.Addr)
	}
	for _, s := range []*Server{a, b} {
		nc, err := nats.Connect(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
}
