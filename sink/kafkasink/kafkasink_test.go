package kafkasink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"fanout/sink"
	"fanout/webhook"
)

func env(allow string) sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix(allow)}), 3*time.Second)
}

func cluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, "events")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctxN(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func open(t testing.TB, e sink.Env, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(ctxN(t, 10*time.Second), e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func brokers(c *kfake.Cluster) string {
	b, _ := json.Marshal(c.ListenAddrs())
	return string(b)
}

func msg(id, customer string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body:        []byte(`{"type":"order.paid","data":{"customer":"` + customer + `"}}`),
		ContentType: "application/json", Key: "ordering-key", Headers: map[string]string{"X-Team": "billing"}}
}

// consume reads n records of the topic.
func consume(t testing.TB, c *kfake.Cluster, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	ctx := ctxN(t, 10*time.Second)
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("got %d records, want %d", len(out), n)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func TestSend_RecordOut(t *testing.T) {
	c := cluster(t)
	s := open(t, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"events","partition_key":"data.customer"}`)
	ctx := ctxN(t, 10*time.Second)
	for _, m := range []*sink.Message{msg("d1", "c-1"), msg("d2", "c-1"), msg("d3", "c-2")} {
		if err := s.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	recs := consume(t, c, 3)
	byID := map[string]*kgo.Record{}
	for _, r := range recs {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		byID[h[sink.HeaderDeliveryID]] = r
		id := h[sink.HeaderDeliveryID]
		want := map[string]string{sink.HeaderEventID: "evt_" + id, sink.HeaderEventType: "order.paid",
			sink.HeaderTenant: "acme", "content-type": "application/json", "X-Team": "billing"}
		for k, v := range want {
			if h[k] != v {
				t.Errorf("%s: header %s = %q, want %q", id, k, h[k], v)
			}
		}
	}
	if r := byID["d1"]; r == nil || string(r.Key) != "c-1" || !strings.Contains(string(r.Value), `"customer":"c-1"`) {
		t.Fatalf("d1 = %+v", r)
	}
	if byID["d1"].Partition != byID["d2"].Partition {
		t.Fatalf("one customer's events in partitions %d and %d", byID["d1"].Partition, byID["d2"].Partition)
	}
	if string(byID["d3"].Key) != "c-2" {
		t.Fatalf("d3 key %q", byID["d3"].Key)
	}

	// No partition_key: the delivery's ordering key.
	s2 := open(t, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"events"}`)
	if err := s2.Send(ctx, msg("d4", "c-3")); err != nil {
		t.Fatal(err)
	}
	recs = consume(t, c, 4)
	for _, r := range recs {
		if strings.Contains(string(r.Value), "c-3") && string(r.Key) != "ordering-key" {
			t.Fatalf("key %q, want the ordering key", r.Key)
		}
	}
}

func TestSend_Retryable(t *testing.T) {
	t.Run("cluster gone", func(t *testing.T) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
		if err != nil {
			t.Fatal(err)
		}
		s := open(t, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"events"}`)
		if err := s.Send(ctxN(t, 10*time.Second), msg("a", "c")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		err = s.Send(ctxN(t, time.Second), msg("b", "c"))
		if sink.OutcomeOf(err) != sink.Retryable {
			t.Fatalf("%v, want retryable", err)
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		_ = l.Close()
		c, _ := Parse(json.RawMessage(`{"brokers":["` + addr + `"],"topic":"events"}`))
		_, err := c.Open(ctxN(t, 2*time.Second), env("127.0.0.0/8"))
		if sink.OutcomeOf(err) != sink.Retryable {
			t.Fatalf("%v, want retryable", err)
		}
	})
	t.Run("unknown topic", func(t *testing.T) {
		c := cluster(t)
		s := open(t, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"nope"}`)
		err := s.Send(ctxN(t, 5*time.Second), msg("a", "c"))
		if sink.OutcomeOf(err) != sink.Retryable {
			t.Fatalf("unknown topic: %v, want retryable", err)
		}
	})
}

func TestSASL(t *testing.T) {
	c := cluster(t, kfake.EnableSASL(), kfake.Superuser("PLAIN", "fanout", "right-password-1"))
	cfg, _ := Parse(json.RawMessage(`{"brokers":` + brokers(c) + `,"topic":"events","sasl":"plain","username":"fanout","password":"wrong-password-1"}`))
	_, err := cfg.Open(ctxN(t, 5*time.Second), env("127.0.0.0/8"))
	// kfake closes the connection on a failed authentication where Kafka
	// answers SASL_AUTHENTICATION_FAILED (permanent: TestClassify).
	if err == nil || strings.Contains(fmt.Sprint(err), "wrong-password") {
		t.Fatalf("wrong password: %v, want an error without the password", err)
	}
	s := open(t, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"events","sasl":"plain","username":"fanout","password":"right-password-1"}`)
	if err := s.Send(ctxN(t, 5*time.Second), msg("a", "c")); err != nil {
		t.Fatal(err)
	}
}

// TestGuard: the guard refuses a seed broker on an internal address, and
// also a broker that the cluster names at run time: the partition's
// leader, on an address the operator did not allow, is refused at dial.
func TestGuard(t *testing.T) {
	for _, b := range []string{"169.254.169.254:9092", "10.0.0.9:9092", "[fd00:ec2::254]:9092"} {
		c, _ := Parse(json.RawMessage(`{"brokers":["` + b + `"],"topic":"events"}`))
		_, err := c.Open(ctxN(t, 5*time.Second), sink.GuardedEnv(webhook.NewGuard(nil), time.Second))
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(fmt.Sprint(err), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", b, err)
		}
	}

	// Three brokers on 127.0.0.1, .2 and .3; only 127.0.0.1 is allowed.
	var n atomic.Int32
	c := cluster(t, kfake.NumBrokers(3), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, fmt.Sprintf("127.0.0.%d:0", n.Add(1)))
	}))
	seed := c.ListenAddrs()[0]
	if !strings.HasPrefix(seed, "127.0.0.1:") {
		t.Fatalf("first broker on %s", seed)
	}
	for p := int32(0); p < 3; p++ {
		if err := c.MoveTopicPartition("events", p, 1); err != nil { // the broker on 127.0.0.2
			t.Fatal(err)
		}
	}
	cfg, _ := Parse(json.RawMessage(`{"brokers":["` + seed + `"],"topic":"events"}`))
	s, err := cfg.Open(ctxN(t, 5*time.Second), env("127.0.0.1/32"))
	if err != nil {
		t.Fatalf("the seed is allowed: %v", err)
	}
	defer s.Close()
	err = s.Send(ctxN(t, 3*time.Second), msg("a", "c"))
	if sink.OutcomeOf(err) != sink.Permanent || !(strings.Contains(fmt.Sprint(err), "refused to connect to 127.0.0.2,") ||
		strings.Contains(fmt.Sprint(err), "refused to connect to 127.0.0.3,")) {
		t.Fatalf("leader on 127.0.0.2: %v, want a permanent refusal of a broker the cluster named", err)
	}
}

func TestClassify(t *testing.T) {
	s := &Sender{cfg: &Config{Password: "pw-pw-pw-pw"}}
	tests := []struct {
		err  error
		want sink.Outcome
	}{
		{kerr.SaslAuthenticationFailed, sink.Permanent},
		{kerr.TopicAuthorizationFailed, sink.Permanent},
		{kerr.MessageTooLarge, sink.Permanent},
		{kerr.NotLeaderForPartition, sink.Retryable},
		{kerr.UnknownTopicOrPartition, sink.Retryable},
		{kerr.ThrottlingQuotaExceeded, sink.Retryable},
		{kerr.NotEnoughReplicas, sink.Retryable},
		{kgo.ErrRecordTimeout, sink.Retryable},
		{errors.New("dial: user pw-pw-pw-pw: connection reset"), sink.Retryable},
	}
	for _, tt := range tests {
		err := s.classify(fmt.Errorf("producing: %w", tt.err))
		if got := sink.OutcomeOf(err); got != tt.want {
			t.Errorf("%v: %v, want %v", tt.err, got, tt.want)
		}
		if strings.Contains(err.Error(), "pw-pw-pw-pw") {
			t.Errorf("%v shows the password", err)
		}
	}
}

// TestUnmask: a masked password posted back is the stored one, unless
// the change would send it elsewhere or otherwise (other brokers, no TLS,
// a weaker mechanism, another user).
func TestUnmask(t *testing.T) {
	stored := `{"brokers":["k1:9092"],"topic":"t","tls":true,"sasl":"scram-sha-512","username":"u","password":"long-password-1234"}`
	masked, err := Kind.Mask(json.RawMessage(stored))
	if err != nil || strings.Contains(string(masked), "long-password") {
		t.Fatalf("Mask = %s, %v", masked, err)
	}
	back, err := Kind.Unmask(json.RawMessage(strings.Replace(string(masked), `"topic":"t"`, `"topic":"t2"`, 1)), json.RawMessage(stored))
	if err != nil || !strings.Contains(string(back), "long-password-1234") {
		t.Fatalf("another topic: %s, %v", back, err)
	}
	for _, change := range [][2]string{
		{`["k1:9092"]`, `["evil:9092"]`}, {`"tls":true`, `"tls":false`}, {`"scram-sha-512"`, `"plain"`}, {`"username":"u"`, `"username":"v"`},
	} {
		_, err := Kind.Unmask(json.RawMessage(strings.Replace(string(masked), change[0], change[1], 1)), json.RawMessage(stored))
		var ce *sink.ConfigError
		if !errors.As(err, &ce) || ce.Field != "password" {
			t.Errorf("%s -> %s with the masked password: %v, want refused", change[0], change[1], err)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct{ cfg, field string }{
		{`{"brokers":["h:9092"],"topic":"t"}`, ""},
		{`{"brokers":["h:9092","[::1]:9093"],"topic":"a.b-c_d","partition_key":"data.customer","tls":true,"sasl":"scram-sha-512","username":"u","password":"p"}`, ""},
		{`{"topic":"t"}`, "brokers"},
		{`{"brokers":["h"],"topic":"t"}`, "brokers[0]"},
		{`{"brokers":["h:9092","kafka://h:9092"],"topic":"t"}`, "brokers[1]"},
		{`{"brokers":["u:p@h:9092"],"topic":"t"}`, "brokers[0]"},
		{`{"brokers":["h:0"],"topic":"t"}`, "brokers[0]"},
		{`{"brokers":["h:9092"]}`, "topic"},
		{`{"brokers":["h:9092"],"topic":"a b"}`, "topic"},
		{`{"brokers":["h:9092"],"topic":".."}`, "topic"},
		{`{"brokers":["h:9092"],"topic":"t","partition_key":"a..b"}`, "partition_key"},
		{`{"brokers":["h:9092"],"topic":"t","sasl":"gssapi","username":"u","password":"p"}`, "sasl"},
		{`{"brokers":["h:9092"],"topic":"t","username":"u"}`, "sasl"},
		{`{"brokers":["h:9092"],"topic":"t","sasl":"plain","password":"p"}`, "username"},
		{`{"brokers":["h:9092"],"topic":"t","sasl":"plain","username":"u"}`, "password"},
		{`{"brokers":"h:9092","topic":"t"}`, "brokers"},
		{`{"brokers":["h:9092"],"topic":"t","acks":1}`, "acks"},
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
