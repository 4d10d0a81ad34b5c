package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"fanout/destination"
	"fanout/webhook"
)

// demoDestination is the demonstration destination: a receiver on loopback
// that logs every event it gets and checks its signature, so that a newcomer
// sees a delivery happen.
type demoDestination struct {
	srv   *http.Server
	url   string
	log   *slog.Logger
	dests *destination.Registry
}

// demoID is the demonstration destination's id: the same at every start,
// though its port changes.
const demoID = "dst_demo"

func startDemo(log *slog.Logger) (*demoDestination, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the demo destination: %w", err)
	}
	d := &demoDestination{url: "http://" + ln.Addr().String() + "/demo", log: log}
	d.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(d.serve)}
	go func() { _ = d.srv.Serve(ln) }()
	log.Info("demo destination started", "url", d.url)
	return d, nil
}

func (d *demoDestination) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
	signature := "unchecked"
	if dst, ok := d.dests.Get(demoID); ok {
		ts, _ := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		signature = "invalid"
		for _, key := range dst.Keys(time.Now()) {
			if webhook.Verify(key, r.Header.Get("webhook-id"), ts, body, r.Header.Get("webhook-signature")) {
				signature = "valid"
			}
		}
	}
	d.log.Info("demo destination received an event", "webhook-id", r.Header.Get("webhook-id"),
		"signature", signature, "body", string(body))
	w.WriteHeader(http.StatusNoContent)
}

// register points the demonstration destination at this run's port.
func (d *demoDestination) register(ctx context.Context, dests *destination.Registry) error {
	d.dests = dests
	if _, ok := dests.Get(demoID); ok {
		_, err := dests.Update(ctx, demoID, func(dst *destination.Destination) error {
			dst.URL, dst.Enabled, dst.Paused, dst.CircuitOpenUntil = d.url, true, false, nil
			return nil
		})
		return err
	}
	return dests.Create(ctx, &destination.Destination{ID: demoID, URL: d.url, Enabled: true,
		Description: "the demonstration destination of --demo"})
}

func (d *demoDestination) close() { _ = d.srv.Close() }
