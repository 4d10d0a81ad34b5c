package amqpsink

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"fanout/sink"
)

// BenchmarkThroughput compares the sink with RabbitMQ driven directly by
// amqp091-go, in the same run and the same way: concurrent publishers,
// each with a channel in confirm mode, persistent mandatory messages to a
// durable queue, each waiting for its confirm. The queue is purged as it
// goes so that it stays small.
func BenchmarkThroughput(b *testing.B) {
	needBroker(b)
	ch := admin(b)
	q := queue(b, ch, amqp.Table{"x-max-length": int32(10000)})
	body := []byte(`{"type":"order.paid","id":"evt_0123456789","data":{"order":"o-1","amount":4200,"currency":"EUR","customer":"c-42","note":"a payload of about two hundred bytes, as the load tool sends"}}`)
	var seq atomic.Int64
	b.Run("direct", func(b *testing.B) {
		conn, err := amqp.Dial(broker.url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		b.SetParallelism(8) // 16 publishers on 2 cores, as the sink's 16 channels
		b.RunParallel(func(pb *testing.PB) {
			c, err := conn.Channel()
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			if err := c.Confirm(false); err != nil {
				b.Error(err)
				return
			}
			for pb.Next() {
				id := fmt.Sprint("d-", seq.Add(1))
				dc, err := c.PublishWithDeferredConfirmWithContext(context.Background(), "", q, true, false, amqp.Publishing{
					Headers: amqp.Table{sink.HeaderDeliveryID: id, sink.HeaderEventID: id,
						sink.HeaderEventType: "order.paid", sink.HeaderTenant: "acme"},
					ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: id, Type: "order.paid", AppId: "fanout", Body: body})
				if err != nil {
					b.Error(err)
					return
				}
				if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
					b.Error("not confirmed", err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("sink", func(b *testing.B) {
		s := open(b, fmt.Sprintf(`{"url":%q,"routing_key":%q}`, broker.url, q))
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprint("s-", seq.Add(1))
				m := &sink.Message{DeliveryID: id, EventID: id, Type: "order.paid", Tenant: "acme", Body: body, ContentType: "application/json"}
				if err := s.Send(context.Background(), m); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
