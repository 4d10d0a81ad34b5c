package app

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// orderReceiver records, per customer, the sequence numbers it accepted,
// refuses the first attempt of some events with a 503, refuses customer
// "stuck" its event 0 while stuck is set, and notes a delivery that
// arrives while another of its customer is in flight.
type orderReceiver struct {
	*httptest.Server
	mu         sync.Mutex
	got        map[string][]int
	inFlight   map[string]bool
	overlap    []string
	tries      map[string]int
	stuck      bool
	outOfOrder []string // webhook-ids that came marked out of order
}

func newOrderReceiver(t *testing.T) *orderReceiver {
	r := &orderReceiver{got: map[string][]int{}, inFlight: map[string]bool{}, tries: map[string]int{}, stuck: true}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var e struct {
			Customer struct {
				ID string `json:"id"`
			} `json:"customer"`
			N int `json:"n"`
		}
		if err := json.Unmarshal(body, &e); err != nil {
			w.WriteHeader(400)
			return
		}
		id := req.Header.Get("webhook-id")
		key := e.Customer.ID
		r.mu.Lock()
		if r.inFlight[key] {
			r.overlap = append(r.overlap, fmt.Sprintf("%s/%d", key, e.N))
		}
		r.inFlight[key] = true
		r.tries[id]++
		try, stuck := r.tries[id], r.stuck
		r.mu.Unlock()
		time.Sleep(2 * time.Millisecond) // long enough for a second one to overlap, were it sent
		r.mu.Lock()
		defer r.mu.Unlock()
		r.inFlight[key] = false
		if req.Header.Get(service.OutOfOrderHeader) == "true" {
			r.outOfOrder = append(r.outOfOrder, id)
		}
		if (key == "stuck" && e.N == 0 && stuck) || (e.N%3 == 1 && try == 1) {
			w.WriteHeader(503)
			return
		}
		r.got[key] = append(r.got[key], e.N)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *orderReceiver) sequence(key string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got[key])
}

// TestRun_OrderedDelivery: a destination with an ordering receives each
// key's events one at a time, in the order they were sent, through 503s;
// a key whose first event keeps failing is listed as blocked and holds back
// only its own events, until the operator skips it; a re-drive of the
// skipped event comes marked out of order. Bad orderings are refused with
// a 400 naming the problem.
func TestRun_OrderedDelivery(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--retry-initial", "50ms", "--retry-max", "200ms"}, nil)
	recv := newOrderReceiver(t)
	for _, bad := range []struct{ ordering, want string }{
		{`{"key":"customer..id"}`, "empty segment"},
		{`{"key":"$time"}`, `"$type" and "$tenant"`},
		{`{"key":"$"}`, `"$type" and "$tenant"`},
		{`{"key":"` + strings.Repeat("a", 300) + `"}`, "longer than 256"},
		{`{"keys":"customer.id"}`, "keys"},
		{`{"key":7}`, "ordering"},
	} {
		var e httpapi.ErrorBody
		if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+recv.URL+`","ordering":`+bad.ordering+`}`, &e); code != 400 || !strings.Contains(e.Error, bad.want) {
			t.Errorf("ordering %s: %d %q, want 400 naming %s", bad.ordering, code, e.Error, bad.want)
		}
	}
	var d struct {
		ID       string
		Ordering struct{ Key string }
	}
	if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+recv.URL+`","ordering":{"key":"customer.id"}}`, &d); code != 201 || d.Ordering.Key != "customer.id" {
		t.Fatalf("create an ordered destination: %d %+v", code, d)
	}
	const perKey = 12
	keys := []string{"a", "b", "c", "stuck"}
	stuckIDs := make([]string, 0, perKey)
	for n := range perKey {
		// One batch per round, one event per key: the batch's order is the
		// events' order. Sent one after the other, as a producer that needs
		// order does.
		var events []string
		for _, k := range keys {
			events = append(events, fmt.Sprintf(`{"type":"order.updated","customer":{"id":%q},"n":%d}`, k, n))
		}
		var out struct{ IDs []string }
		if code := call(t, "POST", base+"/v1/batch", "["+strings.Join(events, ",")+"]", &out); code != 202 {
			t.Fatalf("batch %d: %d", n, code)
		}
		stuckIDs = append(stuckIDs, out.IDs[3])
	}
	want := make([]int, perKey)
	for i := range want {
		want[i] = i
	}
	eventually(t, "keys a, b, c delivered in full", 30*time.Second, func() bool {
		for _, k := range keys[:3] {
			if len(recv.sequence(k)) < perKey {
				return false
			}
		}
		return true
	})
	for _, k := range keys[:3] {
		if got := recv.sequence(k); !slices.Equal(got, want) {
			t.Errorf("key %s received %v, want %v", k, got, want)
		}
	}
	if got := recv.sequence("stuck"); len(got) != 0 {
		t.Errorf("key stuck received %v while its first event fails, want nothing", got)
	}
	// The blocked key is listed, with its head and what waits behind it.
	type keysPage struct {
		Keys []struct {
			Key    json.RawMessage
			Head   service.DeliveryView
			Queued int
		}
	}
	var page keysPage
	eventually(t, "key stuck listed as blocked", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/destinations/"+d.ID+"/ordered-keys?blocked=true", nil, &page)
		return len(page.Keys) == 1 && page.Keys[0].Head.Attempts >= 2
	})
	head := page.Keys[0]
	if string(head.Key) != `"stuck"` || head.Head.EventID != stuckIDs[0] || head.Queued != perKey-1 ||
		!strings.Contains(head.Head.LastError, "503") {
		t.Fatalf("blocked key = %s head %+v queued %d; want \"stuck\" at event %s with %d queued and a 503",
			head.Key, head.Head, head.Queued, stuckIDs[0], perKey-1)
	}
	var queued service.DeliveryView
	call(t, "GET", base+"/v1/deliveries/"+strings.Replace(head.Head.ID, stuckIDs[0], stuckIDs[1], 1), nil, &queued)
	if !queued.Queued || queued.NextAttemptAt != nil || string(queued.OrderKey) != `"stuck"` {
		t.Errorf("the second event of stuck: %+v, want queued, with no time of its own", queued)
	}
	// A delivery in no sequence, or one being delivered, cannot be skipped.
	var e httpapi.ErrorBody
	if code := call(t, "POST", base+"/v1/deliveries/"+head.Head.ID+"x/skip", nil, &e); code != 404 {
		t.Errorf("skip an unknown delivery: %d, want 404", code)
	}
	// The operator skips the head: the key moves on, in order.
	// While an attempt of it is being sent, the skip is refused (409):
	// the operator asks again.
	var skipped service.DeliveryView
	eventually(t, "the head skipped", 10*time.Second, func() bool {
		code := call(t, "POST", base+"/v1/deliveries/"+head.Head.ID+"/skip", nil, &skipped)
		if code != 200 && code != 409 {
			t.Fatalf("skip the head: %d", code)
		}
		return code == 200
	})
	if skipped.State != "failed" || !strings.Contains(skipped.LastError, "skipped") {
		t.Fatalf("skipped head: %+v, want failed, skipped by the operator", skipped)
	}
	eventually(t, "key stuck delivered after its skipped head", 30*time.Second, func() bool {
		return len(recv.sequence("stuck")) == perKey-1
	})
	if got := recv.sequence("stuck"); !slices.Equal(got, want[1:]) {
		t.Errorf("key stuck received %v after the skip, want %v", got, want[1:])
	}
	// Re-driven, the skipped event goes out at once, marked out of order.
	recv.mu.Lock()
	recv.stuck = false
	recv.mu.Unlock()
	if code := call(t, "POST", base+"/v1/deliveries/"+head.Head.ID+"/retry", nil, nil); code != 202 {
		t.Fatalf("retry the skipped delivery: %d", code)
	}
	eventually(t, "the re-driven event delivered", 10*time.Second, func() bool { return len(recv.sequence("stuck")) == perKey })
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if !slices.Equal(recv.outOfOrder, []string{stuckIDs[0]}) {
		t.Errorf("deliveries marked out of order: %v, want the re-driven one alone (%s)", recv.outOfOrder, stuckIDs[0])
	}
	if len(recv.overlap) > 0 {
		t.Errorf("deliveries sent while another of their key was in flight: %v", recv.overlap)
	}
}
