package redissink

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"fanout/sink"
)

// TestPool: the pooled sender of a destination is closed, connections and
// all, when its config changes or it is deleted.
func TestPool(t *testing.T) {
	srv := startRedis(t)
	admin := client(t, srv.addr)
	ctx := ctx10(t)
	named := func() int { // the connections fanout opened (CLIENT SETNAME fanout)
		list, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "name=fanout ")
	}
	p := sink.NewPool(sink.NewRegistry(Kind), loopback())
	defer p.Close()
	cfg := func(stream string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"url":"redis://%s","stream":%q}`, srv.addr, stream))
	}
	if err := p.Send(ctx, sink.Target{ID: "d1", Version: 1, Type: "redis", Config: cfg("a")}, msg("1")); err != nil {
		t.Fatal(err)
	}
	old, release, err := p.Acquire(ctx, sink.Target{ID: "d1", Version: 2, Type: "redis", Config: cfg("a")})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if named() == 0 {
		t.Fatal("no connection named fanout")
	}
	if err := p.Send(ctx, sink.Target{ID: "d1", Version: 3, Type: "redis", Config: cfg("b")}, msg("2")); err != nil {
		t.Fatal(err)
	}
	if err := old.Send(ctx, msg("3")); err == nil {
		t.Fatal("the sender of the old config still sends")
	}
	p.Forget("d1")
	deadline := time.Now().Add(5 * time.Second)
	for named() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections left after Forget", named())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
