package crashtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// opEvents collects the operational events a sink was sent, by their
// "id" (a delivery repeated around a crash has the same one).
type opEvents struct {
	mu    sync.Mutex
	byID  map[string]opEvent
	order []string
}

type opEvent struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data struct {
		DestinationID string `json:"destination_id"`
		Count         int    `json:"count"`
		Trigger       string `json:"trigger"`
	} `json:"data"`
}

func (o *opEvents) behaviour(a attempt) answer {
	var e opEvent
	if json.Unmarshal(a.Body, &e) == nil && strings.HasPrefix(e.Type, "fanout.") {
		o.mu.Lock()
		if _, ok := o.byID[e.ID]; !ok {
			o.byID[e.ID] = e
			o.order = append(o.order, e.ID)
		}
		o.mu.Unlock()
	}
	return answer{Status: http.StatusNoContent}
}

func (o *opEvents) list() []opEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []opEvent
	for _, id := range o.order {
		out = append(out, o.byID[id])
	}
	return out
}

// count returns the operational events of a type about a destination, and
// for fanout.deliveries.failed the sum of their counts.
func (o *opEvents) count(typ, about string) (events, sum int) {
	for _, e := range o.list() {
		if e.Type == typ && e.Data.DestinationID == about {
			events++
			sum += e.Data.Count
		}
	}
	return events, sum
}

func createDest(t *testing.T, base, body string) string {
	t.Helper()
	resp, err := apiClient.Post(base+"/v1/destinations", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d struct{ ID string }
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&d) != nil {
		t.Fatalf("POST /v1/destinations %s: %d", body, resp.StatusCode)
	}
	return d.ID
}

// TestNotices_KillRestart: a destination goes down and comes back while
// another refuses everything, and fanout is SIGKILLed and restarted in the
// middle. The destination that asks for operational events gets exactly:
// one fanout.destination.paused about the one that went down (its breaker
// trips again after the restart, which announces nothing new: the pause
// was announced, and that is in the store), one fanout.destination.recovered
// once it is back, and fanout.deliveries.failed summaries about the other
// whose counts add up to its dead letters (the events it refused, the
// operational events about the first among them), before and after the
// kill. The destinations they are about get none, although they ask for
// fanout.*.
func TestNotices_KillRestart(t *testing.T) {
	t.Parallel()
	alerts := &opEvents{byID: map[string]opEvent{}}
	var down atomic.Bool
	down.Store(true)
	var selfNotices atomic.Int64 // operational events sent to the destination they are about
	flakyID, badID := new(atomic.Value), new(atomic.Value)
	about := func(a attempt, self *atomic.Value) {
		var e opEvent
		if json.Unmarshal(a.Body, &e) == nil && strings.HasPrefix(e.Type, "fanout.") {
			if id, _ := self.Load().(string); e.Data.DestinationID == id {
				selfNotices.Add(1)
			}
		}
	}
	alertSink := newSink(t, alerts.behaviour)
	flakySink := newSink(t, func(a attempt) answer {
		about(a, flakyID)
		if down.Load() {
			return answer{Status: http.StatusServiceUnavailable}
		}
		return answer{Status: http.StatusNoContent}
	})
	badSink := newSink(t, func(a attempt) answer {
		about(a, badID)
		return answer{Status: http.StatusUnprocessableEntity} // permanent: a dead letter at once
	})

	data := t.TempDir()
	args := fanoutArgs(data, nil, "--breaker-failures", "3", "--breaker-window", "0", "--breaker-cooldown", "1s",
		"--retry-initial", "20ms", "--retry-max", "200ms", "--notice-window", "1s")
	p := startFanout(t, args)
	createDest(t, p.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.*"]}`, alertSink.URL))
	flakyID.Store(createDest(t, p.URL, fmt.Sprintf(`{"url":%q,"filter":["order.*","fanout.*"]}`, flakySink.URL)))
	badID.Store(createDest(t, p.URL, fmt.Sprintf(`{"url":%q,"filter":["order.*","fanout.*"]}`, badSink.URL)))
	flaky, bad := flakyID.Load().(string), badID.Load().(string)

	sent := 0
	send := func(n int) {
		for range n {
			postEvent(t, p.URL, fmt.Sprintf(`{"type":"order.created","n":%d}`, sent))
			sent++
		}
	}
	waitFor := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v; operational events: %+v", what, timeout, alerts.list())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	send(20)
	refused := func() int { return len(badSink.snapshot()) } // each a dead letter: 422 is not retried
	waitFor("the pause and the first dead letters announced", 20*time.Second, func() bool {
		paused, _ := alerts.count("fanout.destination.paused", flaky)
		_, failed := alerts.count("fanout.deliveries.failed", bad)
		return paused == 1 && refused() >= sent && failed == refused()
	})

	p.Kill(t)
	p = startFanout(t, args)
	send(20)
	// After the cooldown the destination is tried again, fails, and the
	// breaker trips again: still paused, nothing new to announce.
	waitFor("the dead letters after the restart announced", 20*time.Second, func() bool {
		_, failed := alerts.count("fanout.deliveries.failed", bad)
		return refused() >= sent && failed == refused()
	})
	time.Sleep(1500 * time.Millisecond) // past a cooldown: the breaker trips again meanwhile
	down.Store(false)
	waitFor("the recovery announced", 20*time.Second, func() bool {
		recovered, _ := alerts.count("fanout.destination.recovered", flaky)
		return recovered == 1
	})
	// The recovery went to the refusing destination too: one more dead
	// letter, announced within a window.
	waitFor("every dead letter announced", 20*time.Second, func() bool {
		_, failed := alerts.count("fanout.deliveries.failed", bad)
		return failed == refused()
	})
	waitQuiet(t, []*sink{alertSink, badSink}, 1500*time.Millisecond, 20*time.Second)
	terminate(t, p, 30*time.Second)

	paused, _ := alerts.count("fanout.destination.paused", flaky)
	recovered, _ := alerts.count("fanout.destination.recovered", flaky)
	summaries, failed := alerts.count("fanout.deliveries.failed", bad)
	if paused != 1 || recovered != 1 || failed != refused() {
		t.Errorf("got %d paused, %d recovered, %d dead letters in %d summaries; want 1, 1, %d", paused, recovered, failed,
			summaries, refused())
	}
	if others := len(alerts.list()) - paused - recovered - summaries; others != 0 {
		t.Errorf("%d other operational events: %+v", others, alerts.list())
	}
	if n := selfNotices.Load(); n != 0 {
		t.Errorf("%d operational events went to the destination they are about", n)
	}
	for _, e := range alerts.list() {
		if e.Type == "fanout.destination.paused" && (e.ID != "fanout:"+flaky+":1:paused" || e.Data.Trigger != "automatic") {
			t.Errorf("paused event %+v", e)
		}
	}
	t.Logf("%d events; operational events: %d paused, %d recovered, %d summaries of %d dead letters (%d refused)",
		sent, paused, recovered, summaries, failed, refused())
}
