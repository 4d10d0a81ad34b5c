package redissink

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/sink"
)

// BenchmarkThroughput compares the sink with Redis driven directly by
// go-redis, in the same run and the same way: concurrent writers, each
// waiting for its answer, to a redis-server of the benchmark's own. The
// direct writer runs a plain XADD; the sink's script also checks and
// writes the delivery's dedup marker (dedup_window), which the ratio
// includes; "sink-nodedup" is the sink with dedup_window 0s.
func BenchmarkThroughput(b *testing.B) {
	srv := startRedis(b)
	body := []byte(`{"type":"order.paid","id":"evt_0123456789","data":{"order":"o-1","amount":4200,"currency":"EUR","customer":"c-42","note":"a payload of about two hundred bytes, as the load tool sends"}}`)
	var seq atomic.Int64
	b.Run("direct", func(b *testing.B) {
		c := redis.NewClient(&redis.Options{Addr: srv.addr}) // the pool size the sink has
		defer c.Close()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprint("d-", seq.Add(1))
				err := c.XAdd(context.Background(), &redis.XAddArgs{Stream: "direct", Values: []any{
					FieldID, id, FieldEventID, id, FieldType, "order.paid", FieldTenant, "acme", FieldContentType, "application/json", FieldBody, body}}).Err()
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	for _, v := range []struct{ name, extra string }{{"sink", ""}, {"sink-nodedup", `,"dedup_window":"0s"`}} {
		name, extra := v.name, v.extra
		b.Run(name, func(b *testing.B) {
			s := open(b, fmt.Sprintf(`{"url":"redis://%s","stream":%q%s}`, srv.addr, name, extra))
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
}
