package natssink

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"fanout/internal/natstest"
	"fanout/sink"
)

// TestPool: one connection per destination, kept across versions that
// leave the config alone, closed on the server's side too when the
// destination changes or is deleted.
func TestPool(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	stream(t, srv.URL, jetstream.StreamConfig{}) // one client of the test's own
	base := srv.NumClients(t)
	p := sink.NewPool(sink.NewRegistry(Kind), loopback())
	defer p.Close()
	cfg := func(subject string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"url":%q,"subject":%q}`, srv.URL, subject))
	}
	ctx := ctx10(t)
	for v := int64(1); v <= 3; v++ {
		if err := p.Send(ctx, sink.Target{ID: "d1", Version: v, Type: "nats", Config: cfg("events.a")}, msg(fmt.Sprint("a", v))); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.NumClients(t) - base; n != 1 {
		t.Fatalf("%d connections for one destination, want 1", n)
	}
	old, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 3, Type: "nats", Config: cfg("events.a")})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if err := p.Send(ctx, sink.Target{ID: "d1", Version: 4, Type: "nats", Config: cfg("events.b")}, msg("b")); err != nil {
		t.Fatal(err)
	}
	if err := old.Send(ctx, msg("c")); err == nil {
		t.Fatal("the sender of the old config still sends")
	}
	waitClients(t, srv, base+1)
	p.Forget("d1")
	waitClients(t, srv, base)
}

func waitClients(t *testing.T, srv *natstest.Server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.NumClients(t) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients, want %d", srv.NumClients(t), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
