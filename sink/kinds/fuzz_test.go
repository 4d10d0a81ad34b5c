package kinds

import (
	"encoding/json"
	"slices"
	"testing"

	"fanout/sink"
)

// FuzzConfig feeds every kind's config decoder: none panics, and a config
// that parses survives being masked and posted back (Unmask of its mask
// against itself is the same config: the same target and secrets).
func FuzzConfig(f *testing.F) {
	seeds := map[string][]string{
		"nats":     {`{"url":"nats://u:long-password-1@h:4222,tls://h2:4222","subject":"a.b","stream":"S"}`, `{"url":"nats://h","subject":"a","token":"tok-0123456789"}`},
		"redis":    {`{"url":"rediss://u:long-password-1@h:6380/2","stream":"s","maxlen":10,"exact":true,"dedup_window":"5m"}`, `{"url":"redis://h","stream":"s","password":"p"}`},
		"rabbitmq": {`{"url":"amqp://u:long-password-1@h:5672/vh","exchange":"x","routing_key":"e.{type}","mandatory":false,"channels":4}`},
		"kafka":    {`{"brokers":["h:9092"],"topic":"t","partition_key":"data.customer","sasl":"scram-sha-256","username":"u","password":"long-password-1"}`},
	}
	for kind, cfgs := range seeds {
		for _, c := range cfgs {
			f.Add(kind, c)
		}
	}
	reg := Registry(sink.Ambient{})
	f.Fuzz(func(t *testing.T, kind, raw string) {
		k, err := reg.Kind(kind)
		if err != nil {
			return
		}
		cfg, err := k.Parse(json.RawMessage(raw))
		if err != nil {
			if _, ok := err.(*sink.ConfigError); !ok {
				t.Fatalf("Parse error %T %v is not a *sink.ConfigError", err, err)
			}
			return
		}
		masked, err := k.Mask(json.RawMessage(raw))
		if err != nil {
			t.Fatalf("Mask of a valid config: %v", err)
		}
		back, err := k.Unmask(masked, json.RawMessage(raw))
		if err != nil {
			t.Fatalf("Unmask(Mask(%s)) = %v", raw, err)
		}
		again, err := k.Parse(back)
		if err != nil {
			t.Fatalf("the config posted back no longer parses: %s: %v", back, err)
		}
		if again.Target() != cfg.Target() || !slices.Equal(again.SecretValues(), cfg.SecretValues()) {
			t.Fatalf("posted back: %s, want %s", back, raw)
		}
	})
}

func TestAll(t *testing.T) {
	names := Registry(sink.Ambient{}).Names()
	if !slices.Equal(names, []string{"eventbridge", "kafka", "nats", "pubsub", "rabbitmq", "redis", "s3", "sns", "sqs"}) {
		t.Fatalf("kinds %v", names)
	}
	for _, k := range All(sink.Ambient{}) {
		if k.Delivered == "" || k.Parse == nil {
			t.Errorf("%s: says nothing of what delivered means, or cannot parse", k.Name)
		}
	}
}
