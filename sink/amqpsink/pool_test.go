package amqpsink

import (
	"encoding/json"
	"fmt"
	"testing"

	"fanout/sink"
)

// TestPool: the pooled sender of a destination is closed when its config
// changes, and the new one sends.
func TestPool(t *testing.T) {
	needBroker(t)
	ch := admin(t)
	q := queue(t, ch, nil)
	p := sink.NewPool(sink.NewRegistry(Kind), loopback())
	defer p.Close()
	ctx := ctx10(t)
	cfg := func(channels int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"url":%q,"routing_key":%q,"channels":%d}`, broker.url, q, channels))
	}
	old, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 1, Type: "rabbitmq", Config: cfg(2)})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if err := p.Send(ctx, sink.Target{ID: "d1", Version: 2, Type: "rabbitmq", Config: cfg(4)}, msg("a")); err != nil {
		t.Fatal(err)
	}
	if !old.(*Sender).conn.IsClosed() {
		t.Fatal("the old config's connection is open")
	}
	if err := old.Send(ctx, msg("b")); err == nil {
		t.Fatal("the sender of the old config still sends")
	}
	cur, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 2, Type: "rabbitmq", Config: cfg(4)})
	if err != nil {
		t.Fatal(err)
	}
	release()
	p.Forget("d1")
	if !cur.(*Sender).conn.IsClosed() {
		t.Fatal("Forget left the connection open")
	}
}
