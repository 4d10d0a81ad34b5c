package service

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"time"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/sink"
)

// Broker destinations (NATS, Kafka, SQS...) take the path webhooks take up
// to the send: routing, filters, ordering, throttles, the breaker, retries,
// dead letters, re-drive and replay are the runtime's and know no kind.
// Only the send differs: a sink.Sender from the pool, kept open per
// destination version, instead of an HTTP request. A transformation is for
// webhooks only (the registry refuses one on a broker destination).

// UseBrokers lets publishEvent deliver to broker destinations through pool;
// without it, a delivery to one fails for good.
func (f *functions) UseBrokers(pool *sink.Pool) { f.brokers = pool }

// sendBroker delivers one event to broker destination d. id is the
// event's id, stored its bytes as stored, body and contentType what the
// broker gets (a raw event's own bytes and type).
func (f *functions) sendBroker(ctx context.Context, d *destination.Destination, info dispatch.CallInfo, m Message,
	id string, stored, body []byte, contentType string) (Delivery, error) {
	if f.brokers == nil {
		return Delivery{}, fmt.Errorf("%w: destination %s is a %s destination, and this process delivers to webhooks only", dispatch.ErrPermanent, d.ID, d.Type)
	}
	if contentType == "" {
		contentType = "application/json" // a JSON event's, as webhooks send it
	}
	tenant := m.Tenant // an all_tenants destination's: the event's (see handleEvent)
	if tenant == "" {
		tenant = d.Owner()
	}
	msg := &sink.Message{DeliveryID: info.ID, EventID: id, Type: EventFields(stored).Type, Tenant: tenant,
		Body: body, ContentType: contentType, Key: info.OrderKey, Headers: maps.Clone(d.Headers), Time: info.CreatedAt}
	if d.Ordering == nil {
		msg.Key = "" // the kind's own key (Kafka's partition_key) then applies
	}
	header, traced := http.Header(nil), func(error) {}
	if info.OutOfOrder {
		header = http.Header{OutOfOrderHeader: {"true"}}
	}
	if f.tracing != nil {
		header, traced = f.tracing.startPublish(ctx, d, info.ID, header) // the span of the send, and its traceparent
	}
	if len(header) > 0 && msg.Headers == nil {
		msg.Headers = make(map[string]string, len(header))
	}
	for k := range header {
		msg.Headers[http.CanonicalHeaderKey(k)] = header.Get(k)
	}
	start := time.Now()
	err := f.brokers.Send(ctx, sink.Target{ID: d.ID, Version: d.Version, Type: d.Type, Config: d.Config}, msg)
	traced(err)
	if err != nil {
		return Delivery{}, err
	}
	return Delivery{Duration: time.Since(start)}, nil
}
