// Package kinds lists the broker destination kinds fanout offers, for the
// one place that wires them (the app); nothing else imports a kind, so
// that the HTTP layer stays free of broker clients.
package kinds

import (
	"fanout/sink"
	"fanout/sink/amqpsink"
	"fanout/sink/ebsink"
	"fanout/sink/kafkasink"
	"fanout/sink/natssink"
	"fanout/sink/pubsubsink"
	"fanout/sink/redissink"
	"fanout/sink/s3sink"
	"fanout/sink/snssink"
	"fanout/sink/sqssink"
)

// All are the kinds, in the order the console shows them; the cloud kinds
// take the ambient credentials the operator allowed (amb).
func All(amb sink.Ambient) []*sink.Kind {
	return []*sink.Kind{natssink.Kind, kafkasink.Kind, amqpsink.Kind, redissink.Kind,
		sqssink.NewKind(amb), snssink.NewKind(amb), ebsink.NewKind(amb), s3sink.NewKind(amb), pubsubsink.NewKind(amb)}
}

// Registry is a registry of every kind, with the ambient credentials amb
// allows.
func Registry(amb sink.Ambient) *sink.Registry { return sink.NewRegistry(All(amb)...) }
