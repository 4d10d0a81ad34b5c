package amqpsink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"fanout/sink"
	"fanout/webhook"
)

func loopback() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), 5*time.Second)
}

func ctx10(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func open(t testing.TB, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(ctx10(t), loopback())
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

// admin is a channel of the test's own, to declare and read.
func admin(t testing.TB) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(broker.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// queue declares a durable queue named after the test.
func queue(t testing.TB, ch *amqp.Channel, args amqp.Table) string {
	t.Helper()
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	return name
}

func get(t testing.TB, ch *amqp.Channel, q string) amqp.Delivery {
	t.Helper()
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get %s: ok %v, %v", q, ok, err)
	}
	return d
}

func TestSend_MessageOut(t *testing.T) {
	needBroker(t)
	ch := admin(t)
	q := queue(t, ch, nil)
	s := open(t, fmt.Sprintf(`{"url":%q,"routing_key":%q}`, broker.url, q))
	if err := s.Send(ctx10(t), msg("dlv_1")); err != nil {
		t.Fatal(err)
	}
	d := get(t, ch, q)
	if d.MessageId != "dlv_1" || d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" ||
		d.Type != "order.paid" || d.AppId != "fanout" || string(d.Body) != `{"type":"order.paid","n":1}` {
		t.Fatalf("delivery = %+v", d)
	}
	want := map[string]string{sink.HeaderDeliveryID: "dlv_1", sink.HeaderEventID: "evt_dlv_1", sink.HeaderEventType: "order.paid",
		sink.HeaderTenant: "acme", sink.HeaderKey: "cust-9", "X-Team": "billing"}
	for k, v := range want {
		if d.Headers[k] != v {
			t.Errorf("header %s = %v, want %s", k, d.Headers[k], v)
		}
	}
}

// TestSend_Concurrent: publishes in flight on several channels are each
// confirmed, and none is lost or doubled.
func TestSend_Concurrent(t *testing.T) {
	needBroker(t)
	ch := admin(t)
	q := queue(t, ch, nil)
	s := open(t, fmt.Sprintf(`{"url":%q,"routing_key":%q,"channels":4}`, broker.url, q))
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Send(ctx10(t), msg(fmt.Sprint("d", i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Messages != 200 {
		t.Fatalf("queue has %d messages, want 200", info.Messages)
	}
}

func TestSend_RoutingByType(t *testing.T) {
	needBroker(t)
	ch := admin(t)
	if err := ch.ExchangeDeclare("fanout-test-topic", "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q := queue(t, ch, nil)
	if err := ch.QueueBind(q, "events.order.*", "fanout-test-topic", false, nil); err != nil {
		t.Fatal(err)
	}
	s := open(t, `{"url":"`+broker.url+`","exchange":"fanout-test-topic","routing_key":"events.{type}"}`)
	if err := s.Send(ctx10(t), msg("a")); err != nil {
		t.Fatal(err)
	}
	if d := get(t, ch, q); d.RoutingKey != "events.order.paid" {
		t.Fatalf("routing key %q", d.RoutingKey)
	}
	// No queue takes user.created: returned, retried.
	m := msg("b")
	m.Type = "user.created"
	if err := s.Send(ctx10(t), m); sink.OutcomeOf(err) != sink.Retryable || !strings.Contains(err.Error(), "returned") {
		t.Fatalf("unroutable: %v, want retryable", err)
	}
	// The channel is still good for the next one.
	if err := s.Send(ctx10(t), msg("c")); err != nil {
		t.Fatal(err)
	}
	// Not mandatory: the broker drops it, and it counts as delivered.
	loose := open(t, `{"url":"`+broker.url+`","exchange":"fanout-test-topic","routing_key":"events.{type}","mandatory":false}`)
	if err := loose.Send(ctx10(t), m); err != nil {
		t.Fatalf("not mandatory: %v", err)
	}
}

func TestSend_Retryable(t *testing.T) {
	needBroker(t)
	t.Run("queue full, reject-publish", func(t *testing.T) {
		ch := admin(t)
		q := queue(t, ch, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
		s := open(t, fmt.Sprintf(`{"url":%q,"routing_key":%q}`, broker.url, q))
		if err := s.Send(ctx10(t), msg("a")); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(ctx10(t), msg("b")); sink.OutcomeOf(err) != sink.Retryable || !strings.Contains(err.Error(), "nack") {
			t.Fatalf("full queue: %v, want a retryable nack", err)
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		_ = l.Close()
		c, _ := Parse(json.RawMessage(`{"url":"amqp://u:pw-pw-pw-pw@` + addr + `/","routing_key":"q"}`))
		_, err := c.Open(ctx10(t), loopback())
		if sink.OutcomeOf(err) != sink.Retryable || strings.Contains(err.Error(), "pw-pw-pw-pw") {
			t.Fatalf("%v, want retryable and redacted", err)
		}
	})
	t.Run("connection cut, then back", func(t *testing.T) {
		ch := admin(t)
		q := queue(t, ch, nil)
		p := newProxy(t, broker.addr)
		s := open(t, fmt.Sprintf(`{"url":"amqp://%s:%s@%s/","routing_key":%q}`, brokerUser, brokerPassword, p.addr, q))
		if err := s.Send(ctx10(t), msg("a")); err != nil {
			t.Fatal(err)
		}
		p.cut()
		err := s.Send(ctx10(t), msg("b"))
		if sink.OutcomeOf(err) != sink.Retryable || strings.Contains(err.Error(), brokerPassword) {
			t.Fatalf("cut: %v, want retryable and redacted", err)
		}
		p.resume()
		// The sender dials again by itself.
		var last error
		for range 50 {
			if last = s.Send(ctx10(t), msg("c")); last == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if last != nil {
			t.Fatalf("after the broker came back: %v", last)
		}
	})
}

func TestSend_Permanent(t *testing.T) {
	needBroker(t)
	for name, cfg := range map[string]string{
		"wrong password in url": `{"url":"amqp://fanout:wrong-password-1@` + broker.addr + `/","routing_key":"q"}`,
		"wrong password":        `{"url":"amqp://fanout@` + broker.addr + `/","password":"wrong-password-1","routing_key":"q"}`,
		"no such vhost":         `{"url":"` + broker.url + `nope","routing_key":"q"}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // RabbitMQ takes seconds to refuse credentials
			c, err := Parse(json.RawMessage(cfg))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Open(ctx10(t), loopback())
			if sink.OutcomeOf(err) != sink.Permanent || strings.Contains(fmt.Sprint(err), "wrong-password") {
				t.Errorf("%v, want permanent and redacted", err)
			}
		})
	}
	// The password alone, in its own field, works.
	s := open(t, `{"url":"amqp://fanout@`+broker.addr+`/","password":"`+brokerPassword+`","exchange":"no-such-exchange","routing_key":"q"}`)
	err := s.Send(ctx10(t), msg("a"))
	if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "no-such-exchange") {
		t.Fatalf("missing exchange: %v, want permanent", err)
	}
}

func TestGuard(t *testing.T) {
	needBroker(t)
	strict := sink.GuardedEnv(webhook.NewGuard(nil), 2*time.Second)
	for _, u := range []string{"amqp://169.254.169.254:5672/", "amqps://u:pw-pw-pw-pw@10.0.0.8/", broker.url} {
		c, err := Parse(json.RawMessage(`{"url":"` + u + `","routing_key":"q"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctx10(t), strict)
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(fmt.Sprint(err), "refused to connect") ||
			strings.Contains(fmt.Sprint(err), "pw-pw-pw-pw") || strings.Contains(fmt.Sprint(err), brokerPassword) {
			t.Errorf("%s: %v, want a permanent, redacted refusal", sink.RedactURL(u), err)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct{ cfg, field string }{
		{`{"url":"amqp://h","routing_key":"q"}`, ""},
		{`{"url":"amqps://u:p@h:5671/vh","exchange":"x","routing_key":"a.{type}","mandatory":false,"channels":4}`, ""},
		{`{"url":"amqp://h","exchange":"x"}`, ""},
		{`{"routing_key":"q"}`, "url"},
		{`{"url":"http://h","routing_key":"q"}`, "url"},
		{`{"url":"amqp://","routing_key":"q"}`, "url"},
		{`{"url":"amqp://h:notaport","routing_key":"q"}`, "url"},
		{`{"url":"amqp://h"}`, "routing_key"},
		{`{"url":"amqp://h","routing_key":"q","channels":-1}`, "channels"},
		{`{"url":"amqp://h","routing_key":"q","channels":5000}`, "channels"},
		{`{"url":"amqp://h","routing_key":"q","mandatory":"yes"}`, "mandatory"},
		{`{"url":"amqp://h","routing_key":"q","durable":true}`, "durable"},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		ce, ok := err.(*sink.ConfigError)
		if !ok || ce.Field != tt.field {
			t.Errorf("%s: %v, want an error on %q", tt.cfg, err, tt.field)
		}
	}
}

// proxy forwards TCP connections to the broker, and can cut them all and
// refuse new ones, as a broker that went away would.
type proxy struct {
	t      testing.TB
	addr   string
	target string
	mu     sync.Mutex
	l      net.Listener
	conns  []net.Conn
}

func newProxy(t testing.TB, target string) *proxy {
	p := &proxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) listen(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.l, p.addr = l, l.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(b, c); _ = b.Close() }()
			go func() { _, _ = io.Copy(c, b); _ = c.Close() }()
		}
	}()
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.l.Close()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) resume() { p.listen(p.addr) }
