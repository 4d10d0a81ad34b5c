package kafkasink

import (
	"encoding/json"
	"testing"
	"time"

	"fanout/sink"
)

// TestPool: the pooled sender of a destination is closed when its config
// changes or it is deleted.
func TestPool(t *testing.T) {
	c := cluster(t)
	p := sink.NewPool(sink.NewRegistry(Kind), env("127.0.0.0/8"))
	defer p.Close()
	ctx := ctxN(t, 10*time.Second)
	cfg := func(key string) json.RawMessage {
		return json.RawMessage(`{"brokers":` + brokers(c) + `,"topic":"events","partition_key":"` + key + `"}`)
	}
	old, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 1, Type: "kafka", Config: cfg("a")})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if err := p.Send(ctx, sink.Target{ID: "d1", Version: 2, Type: "kafka", Config: cfg("b")}, msg("x", "c")); err != nil {
		t.Fatal(err)
	}
	if err := old.Send(ctxN(t, 2*time.Second), msg("y", "c")); err == nil {
		t.Fatal("the sender of the old config still sends")
	}
	cur, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 2, Type: "kafka", Config: cfg("b")})
	if err != nil {
		t.Fatal(err)
	}
	release()
	p.Forget("d1")
	if err := cur.Send(ctxN(t, 2*time.Second), msg("z", "c")); err == nil {
		t.Fatal("Forget left the sender open")
	}
}
