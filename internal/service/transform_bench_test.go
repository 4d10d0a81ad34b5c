package service

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/webhook"
)

// smallTransform is the transformation measured: a header from the event,
// a field added to the payload.
const smallTransform = `function handler(webhook) {
  webhook.headers["X-Event-Type"] = webhook.event.type;
  webhook.payload.source = "fanout";
  return webhook;
}`

// BenchmarkPublish is one delivery's request as publishEvent makes it
// (the transformation, if any, then signing and sending over loopback to a
// receiver that answers 204), without and with a small transformation, in
// the same run: docs/BENCHMARKS.md.
func BenchmarkPublish(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer srv.Close()
	client := webhook.NewClient(webhook.Config{})
	defer client.Close()
	// A time limit no run reaches on a busy machine: this measures cost,
	// of a run in this process and in a worker (what fanout does).
	local := &functions{transforms: transform.NewEngine(transform.Limits{Timeout: time.Second})}
	isolated := &functions{transforms: transform.NewEngine(transform.Limits{Timeout: time.Second,
		Isolation: &transform.Isolation{Workers: 1}})}
	defer isolated.transforms.Close()
	body := []byte(`{"type":"order.paid","id":"o_1","data":{"id":"o_1","amount":1250,"currency":"EUR","customer":{"id":"c_1","email":"a@example.com"},"items":[{"sku":"A1","qty":2},{"sku":"B2","qty":1}]}}`)
	for _, tc := range []struct {
		name, src string
		fns       *functions
	}{{"plain", "", nil}, {"transform-in-process", smallTransform, local}, {"transform", smallTransform, isolated}} {
		d := &destination.Destination{ID: "dst_bench", URL: srv.URL + "/hook", Secret: webhook.GenerateSecret(), Enabled: true,
			Transform: tc.src}
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				req := &webhook.Request{URL: d.URL, ID: "evt_1", Body: body, Header: d.Header(), Keys: d.Keys(time.Now())}
				if d.Transform != "" {
					if _, err := tc.fns.transform(ctx, d, req, EventFields(body).Type); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := client.Send(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
