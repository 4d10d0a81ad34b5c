package service

import (
	"context"
	"errors"
	"testing"
	"time"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/webhook"
)

// TestTransform_BusyWorkersSnooze: a delivery that finds every
// transformation worker busy (another destination's program spinning
// there) waits its turn: a snooze, which spends no attempt and counts
// nothing toward its breaker, not a failure of its destination.
func TestTransform_BusyWorkersSnooze(t *testing.T) {
	t.Parallel()
	engine := transform.NewEngine(transform.Limits{Timeout: 30 * time.Second, Isolation: &transform.Isolation{Workers: 1}})
	t.Cleanup(engine.Close)
	fns := &functions{transforms: engine}
	spin, err := engine.Program("dst_spin", "function handler(w) { for (;;) {} }")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{})
	go func() {
		defer close(held)
		_, _ = engine.Run(ctx, spin, transform.Event{ID: "e"}, transform.Request{URL: "https://h/", Body: []byte(`{}`)})
	}()
	t.Cleanup(func() { cancel(); <-held })
	time.Sleep(300 * time.Millisecond) // the spinning run has the worker
	d := &destination.Destination{ID: "dst_victim", URL: "https://receiver.example/hook", Transform: "function handler(w) {}"}
	req := &webhook.Request{URL: d.URL, ID: "evt_1", Body: []byte(`{"type":"t"}`)}
	_, err = fns.transform(context.Background(), d, req, "t")
	if err == nil || err.Error() != dispatch.Snooze(time.Second).Error() || errors.Is(err, dispatch.ErrTemporary) {
		t.Errorf("a delivery with every worker busy: %v; want a snooze of a second", err)
	}
}
