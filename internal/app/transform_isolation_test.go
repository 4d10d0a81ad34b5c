package app

import (
	"strings"
	"testing"
	"time"

	"fanout/internal/service"
)

// TestRun_TransformOutOfMemory: the security review's finding. A program
// that asks for more memory than exists (a sort of an array of four
// billion holes, a 2 GiB buffer) took fanout down when transformations ran
// in its process, and took it down again on every restart while the
// delivery was pending; a single preview sufficed. They run in workers
// now: the preview answers the failure, the delivery's attempts fail with
// it recorded, fanout goes on serving, and the destination delivers again
// once its program is fixed.
func TestRun_TransformOutOfMemory(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--transform-memory", "64MiB", "--transform-workers", "1"}, nil)
	hungry := map[string]string{
		"sparse sort": "function handler(w) { if (w.payload.hungry) { var a = []; a.length = 4294967295; a.sort() } }",
		"buffer":      "function handler(w) { if (w.payload.hungry) { new ArrayBuffer(2 ** 31) } }",
	}
	for name, src := range hungry {
		var p service.TransformPreview
		if code := call(t, "POST", base+"/v1/transform", map[string]any{"transform": src, "event": map[string]any{"hungry": true}}, &p); code != 200 ||
			p.OK || !strings.Contains(p.Error, "out of memory") {
			t.Errorf("preview of %s: %d %+v, want a failed run that names the memory", name, code, p)
		}
		if code := call(t, "GET", base+"/healthz", nil, nil); code != 200 {
			t.Fatalf("after the preview of %s: /healthz %d", name, code)
		}
	}

	recv := newRequestReceiver(t)
	var d struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL, "transform": hungry["sparse sort"],
		"retry": map[string]any{"max_attempts": 2, "initial": "10ms", "max": "10ms"}}, &d); code != 201 {
		t.Fatalf("create: %d", code)
	}
	id := postEvent(t, base, `{"type":"t","hungry":true}`)
	var ev service.EventView
	var dv service.DeliveryView
	eventually(t, "the hungry delivery failed", 30*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+id, nil, &ev)
		if len(ev.Deliveries) == 1 && ev.Deliveries[0].State == "failed" {
			call(t, "GET", base+"/v1/deliveries/"+ev.Deliveries[0].ID, nil, &dv)
			return true
		}
		return false
	})
	if len(dv.History) != 2 {
		t.Fatalf("the delivery: %+v, want 2 failed attempts", dv)
	}
	for _, a := range dv.History {
		if !strings.Contains(a.Error, "out of memory") || !strings.Contains(a.Error, "64 MiB") {
			t.Errorf("attempt %d: %q, want the memory limit named", a.Attempt, a.Error)
		}
	}
	// The same destination goes on: an event the program leaves alone.
	calm := postEvent(t, base, `{"type":"t"}`)
	eventually(t, "the next event delivered", 20*time.Second, func() bool { return len(recv.got(calm)) == 1 })
}

// TestRun_TransformPreviewsBusy: previews may hold half the workers (one
// of one here); a preview past that is told to come back (429 with
// Retry-After), while the one running answers as usual.
func TestRun_TransformPreviewsBusy(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--transform-workers", "1"}, nil)
	// A built-in that goja cannot interrupt: it holds its worker until
	// the worker is killed, a second past the time limit.
	spin := map[string]any{"transform": "function handler(w) { var a = []; a.length = 4294967295; a.indexOf(1) }", "event": map[string]any{}}
	first := make(chan service.TransformPreview, 1)
	go func() {
		var p service.TransformPreview
		call(t, "POST", base+"/v1/transform", spin, &p)
		first <- p
	}()
	time.Sleep(300 * time.Millisecond)
	status, body, header := rawCall(t, "POST", base+"/v1/transform", spin)
	if status != 429 || header.Get("Retry-After") != "1" || !strings.Contains(string(body), "busy") {
		t.Errorf("a preview while the only worker runs one: %d %s (Retry-After %q), want 429 saying the workers are busy", status, body, header.Get("Retry-After"))
	}
	if p := <-first; p.OK || !p.Timeout || !strings.Contains(p.Error, "killed") {
		t.Errorf("the preview that ran: %+v, want stopped by killing its worker", p)
	}
}
