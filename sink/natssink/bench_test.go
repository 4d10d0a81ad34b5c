package natssink

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"fanout/internal/natstest"
	"fanout/sink"
)

// BenchmarkThroughput compares the sink with JetStream driven directly by
// nats.go, in the same run and the same way: concurrent publishers, each
// waiting for its PubAck (as the runtime's deliveries do), Nats-Msg-Id set,
// to a file-storage stream of Debian's nats-server. msgs/s is the figure;
// the ratio of sink to direct goes to docs/BENCHMARKS.md.
func BenchmarkThroughput(b *testing.B) {
	srv := natstest.Start(b, natstest.Options{})
	js, _ := stream(b, srv.URL, jetstream.StreamConfig{})
	body := []byte(`{"type":"order.paid","id":"evt_0123456789","data":{"order":"o-1","amount":4200,"currency":"EUR","customer":"c-42","note":"a payload of about two hundred bytes, as the load tool sends"}}`)
	var seq atomic.Int64
	b.Run("direct", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprint("d-", seq.Add(1))
				m := nats.NewMsg("events.bench")
				m.Data = body
				// The headers the sink sets, so that the ratio is the
				// cost of the sink, not of a smaller message.
				m.Header.Set(sink.HeaderDeliveryID, id)
				m.Header.Set(sink.HeaderEventID, id)
				m.Header.Set(sink.HeaderEventType, "order.paid")
				m.Header.Set(sink.HeaderTenant, "acme")
				m.Header.Set("Content-Type", "application/json")
				if _, err := js.PublishMsg(context.Background(), m, jetstream.WithMsgID(id)); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("sink", func(b *testing.B) {
		s := open(b, loopback(), fmt.Sprintf(`{"url":%q,"subject":"events.bench"}`, srv.URL))
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
