// Package kinds lists the broker destination kinds fanout offers, for the
// one place that wires them (the app); nothing else imports a kind, so
// that the HTTP layer stays free of broker clients.
package kinds

import (
	"fanout/sink"
	"fanout/sink/amqpsink"
	"fanout/sink/kafkasink"
	"fanout/sink/natssink"
	"fanout/sink/redissink"
)

// All are the kinds, in the order the console shows them.
func All() []*sink.Kind {
	return []*sink.Kind{natssink.Kind, kafkasink.Kind, amqpsink.Kind, redissink.Kind}
}

// Registry is a registry of every kind.
func Registry() *sink.Registry { return sink.NewRegistry(All()...) }
