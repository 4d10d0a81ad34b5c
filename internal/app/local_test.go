package app

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRun_InFlightDeliveriesShown checks what the API shows of deliveries
// that run as local calls (dispatch.Call.Local): while they run they have
// no row of their own, and the event page, the list of deliveries, a
// delivery's own page and the counts must still show them, derived from
// their event's plan, with their destination; once they end, they are
// stored as usual.
func TestRun_InFlightDeliveriesShown(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan string, 10)
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		arrived <- r.Header.Get("webhook-id")
		<-release
	}))
	defer dest.Close()
	defer close(release) // before dest.Close: the handlers return
	a := startApp(t, []string{"--data", t.TempDir(), "--destination", dest.URL + "/a", "--destination", dest.URL + "/b"}, nil, nil)

	var accepted struct {
		ID string `json:"id"`
	}
	if code := call(t, "POST", a.URL+"/v1/event", `{"type":"user.created","data":{"n":1}}`, &accepted); code != http.StatusAccepted {
		t.Fatalf("POST /v1/event = %d", code)
	}
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the deliveries did not start")
		}
	}
	var metrics string
	{
		resp, err := http.Get(a.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics = string(b)
	}
	if !strings.Contains(metrics, "fanout_local_calls_total 2") {
		t.Fatalf("fanout_local_calls_total is not 2: the deliveries did not take the fast path this test is about\n%s", grepLines(metrics, "fanout_local"))
	}

	type delivery struct {
		ID            string `json:"id"`
		EventID       string `json:"event_id"`
		DestinationID string `json:"destination_id"`
		State         string `json:"state"`
	}
	var event struct {
		State      string     `json:"state"`
		Deliveries []delivery `json:"deliveries"`
	}
	if code := call(t, "GET", a.URL+"/v1/events/"+accepted.ID, nil, &event); code != http.StatusOK {
		t.Fatalf("GET the event = %d", code)
	}
	if event.State != "delivering" || len(event.Deliveries) != 2 {
		t.Fatalf("event while its deliveries run: %+v, want delivering with 2 deliveries", event)
	}
	dests := map[string]bool{}
	for _, d := range event.Deliveries {
		if d.State != "delivering" || d.DestinationID == "" || d.EventID != accepted.ID {
			t.Errorf("delivery shown as %+v, want delivering, with its destination and event", d)
		}
		dests[d.DestinationID] = true
		var one delivery
		if code := call(t, "GET", a.URL+"/v1/deliveries/"+d.ID, nil, &one); code != http.StatusOK || one.State != "delivering" ||
			one.DestinationID != d.DestinationID {
			t.Errorf("GET /v1/deliveries/%s = %d %+v, want it delivering to %s", d.ID, code, one, d.DestinationID)
		}
	}
	if len(dests) != 2 {
		t.Errorf("deliveries to %d destinations, want 2", len(dests))
	}
	var list struct {
		Deliveries []delivery `json:"deliveries"`
	}
	if code := call(t, "GET", a.URL+"/v1/deliveries?state=delivering", nil, &list); code != http.StatusOK || len(list.Deliveries) != 2 {
		t.Fatalf("GET /v1/deliveries?state=delivering = %d, %+v; want both", code, list)
	}
	for _, d := range event.Deliveries {
		if code := call(t, "GET", a.URL+"/v1/deliveries?state=delivering&destination="+d.DestinationID, nil, &list); code != http.StatusOK ||
			len(list.Deliveries) != 1 || list.Deliveries[0].ID != d.ID {
			t.Errorf("deliveries delivering to %s: %d %+v, want %s alone", d.DestinationID, code, list, d.ID)
		}
	}

	release <- struct{}{}
	release <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		call(t, "GET", a.URL+"/v1/events/"+accepted.ID, nil, &event)
		if event.State == "delivered" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("event %+v after its deliveries were answered, want delivered", event)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range event.Deliveries {
		if d.State != "delivered" {
			t.Errorf("delivery %+v, want delivered", d)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(out)
}
