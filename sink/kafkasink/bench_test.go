package kafkasink

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"fanout/sink"
)

// BenchmarkThroughput compares the sink with Kafka driven directly by
// franz-go, in the same run and the same way: concurrent producers, each
// waiting for its record's acknowledgement (idempotent, acks=all, the same
// headers), to kfake, an in-process cluster: the figure bounds the cost of
// the sink, not of a real cluster's disks.
func BenchmarkThroughput(b *testing.B) {
	c := cluster(b)
	body := []byte(`{"type":"order.paid","id":"evt_0123456789","data":{"order":"o-1","amount":4200,"currency":"EUR","customer":"c-42","note":"a payload of about two hundred bytes, as the load tool sends"}}`)
	var seq atomic.Int64
	b.Run("direct", func(b *testing.B) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("events"),
			kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(0))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprint("d-", seq.Add(1))
				r := &kgo.Record{Key: []byte("c-42"), Value: body, Headers: []kgo.RecordHeader{
					{Key: sink.HeaderDeliveryID, Value: []byte(id)}, {Key: sink.HeaderEventID, Value: []byte(id)},
					{Key: sink.HeaderEventType, Value: []byte("order.paid")}, {Key: sink.HeaderTenant, Value: []byte("acme")},
					{Key: "content-type", Value: []byte("application/json")}}}
				if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("sink", func(b *testing.B) {
		s := open(b, env("127.0.0.0/8"), `{"brokers":`+brokers(c)+`,"topic":"events","partition_key":"data.customer"}`)
		b.SetParallelism(16)
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
