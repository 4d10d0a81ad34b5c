package replicatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/internal/pgtest"
	"fanout/internal/proctest"
)

// workers is each replica's --workers: it bounds the deliveries a replica
// has in flight, and so the duplicates its death can cause.
const workers = 32

// fanoutArgs is the one place that says how the tests start a replica: on a
// free loopback port, on the database, delivering to destinations. The
// destinations are on loopback, which fanout's SSRF guard refuses unless
// --allow-network allows it.
func fanoutArgs(t testing.TB, databaseURL string, destinations []string, extra ...string) []string {
	args := []string{"--addr", "127.0.0.1:0", "--database-url", databaseURL, "--workers", strconv.Itoa(workers),
		"--retry-initial", "200ms", "--retry-max", "2s", "--log-level", "info", "--allow-network", "127.0.0.0/8"}
	for _, d := range destinations {
		args = append(args, "--destination", d)
	}
	return append(args, extra...)
}

// replica is one running fanout process.
type replica struct {
	*proctest.Proc
	dead atomic.Bool // killed: clients stop sending to it
}

// startReplica starts fanout and returns once it listens. A cleanup kills
// it if it still runs: nothing outlives the test.
func startReplica(t testing.TB, name string, args []string) *replica {
	t.Helper()
	r := &replica{Proc: proctest.Start(t, name, exec.Command(fanoutBin, args...))}
	r.WaitListening(t, 30*time.Second)
	return r
}

// kill SIGKILLs the replica, after telling the clients to stop sending to
// it.
func (r *replica) kill(t testing.TB) {
	t.Helper()
	r.dead.Store(true)
	r.Kill(t)
}

// stop sends SIGTERM and waits for a clean exit; it returns the "totals"
// line of the log.
func (r *replica) stop(t testing.TB) string {
	t.Helper()
	if st := r.Terminate(t, 40*time.Second); !st.Success() {
		t.Errorf("%s exited with %v after SIGTERM:\n%s", r.Name, st, r.Logs.Tail(30))
	}
	line, _ := r.Logs.Contains(`msg=totals`)
	return line
}

// destination records deliveries by webhook-id and the events it got by
// their "n", and checks their bytes.
type destination struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  map[string]int
	ns   map[int64]bool // the "n" of every event delivered
	bad  []string
	sent *sentEvents
}

func newDestination(t testing.TB, sent *sentEvents) *destination {
	d := &destination{got: map[string]int{}, ns: map[int64]bool{}, sent: sent}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		// Some deliveries take a while, so that the replica that dies has
		// some in flight.
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		id := r.Header.Get("webhook-id")
		var e struct{ N *int64 }
		if err := json.Unmarshal(body, &e); err != nil || e.N == nil {
			d.mu.Lock()
			d.bad = append(d.bad, fmt.Sprintf("%s: an event no client sent: %q", id, body))
			d.mu.Unlock()
		}
		d.mu.Lock()
		d.got[id]++
		if e.N != nil {
			d.ns[*e.N] = true
		}
		if want, ok := d.sent.body(id); ok && !bytes.Equal(want, body) {
			d.bad = append(d.bad, fmt.Sprintf("%s: got %q, sent %q", id, body, want))
		}
		d.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(d.srv.Close)
	return d
}

// delivered returns how many of the events ns the destination got.
func (d *destination) delivered(ns []int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := 0
	for _, n := range ns {
		if d.ns[n] {
			k++
		}
	}
	return k
}

func (d *destination) count(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[id]
}

// sentEvents are the events a replica acknowledged, by id.
type sentEvents struct {
	mu     sync.Mutex
	bodies map[string][]byte
	order  []string
}

func (s *sentEvents) add(id string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bodies[id] = body
	s.order = append(s.order, id)
}

func (s *sentEvents) body(id string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bodies[id]
	return b, ok
}

func (s *sentEvents) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

// TestReplicas_KillOne loads three replicas on one database through all of
// them, SIGKILLs one in the middle, and checks what every client of fanout
// is promised: each acknowledged event reaches every destination, with its
// bytes; duplicates come only from the deliveries the dead replica had in
// flight; and nothing is stuck: every call of the database ends done.
func TestReplicas_KillOne(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of load and recovery; skipped with -short")
	}
	dbURL := pgtest.NewURL(t)
	sent := &sentEvents{bodies: map[string][]byte{}}
	dests := []*destination{newDestination(t, sent), newDestination(t, sent)}
	urls := []string{dests[0].srv.URL + "/a", dests[1].srv.URL + "/b"}

	// The first replica migrates the database; the others find it ready.
	replicas := make([]*replica, 3)
	for i := range replicas {
		replicas[i] = startReplica(t, fmt.Sprintf("replica-%d", i), fanoutArgs(t, dbURL, urls))
	}

	const (
		clients  = 12
		loadFor  = 20 * time.Second
		killAt   = 8 * time.Second
		pause    = 15 * time.Millisecond // between a client's requests
		maxBatch = 5
	)
	victim := replicas[1]
	start := time.Now()
	var (
		seq  atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		reqs []*request
	)
	client := &http.Client{Timeout: 15 * time.Second}
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(start) < loadFor; i++ {
				r := replicas[(c+i)%len(replicas)]
				if r.dead.Load() {
					continue
				}
				n := 1 + rand.IntN(maxBatch)
				req := &request{replica: r, ns: make([]int64, n)}
				events := make([][]byte, n)
				for k := range events {
					req.ns[k] = seq.Add(1)
					events[k] = fmt.Appendf(nil, `{"n": %d, "client": %d, "pad": %q}`, req.ns[k], c, strings.Repeat("x", rand.IntN(100)))
				}
				path, body := "/v1/event", events[0]
				if n > 1 || i%2 == 0 {
					path, body = "/v1/batch", append(append([]byte("["), bytes.Join(events, []byte(","))...), ']')
				}
				req.start = time.Now()
				req.answer = send(client, r.URL+path, body, n)
				req.end = time.Now()
				if req.fate == fateAcked {
					for k, id := range req.ids {
						sent.add(id, events[k])
					}
				}
				mu.Lock()
				reqs = append(reqs, req)
				mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	time.Sleep(killAt)
	killFrom := time.Now()
	victim.kill(t)
	killTo := time.Now() // the victim is gone: no request to it starts later
	killedAt := killFrom.Sub(start)
	wg.Wait()
	accepted := sent.ids()
	var fates [len(fateNames)]int
	for _, r := range reqs {
		fates[r.fate]++
	}
	t.Logf("load: %d requests in %v (%s), %d events acknowledged; %s killed at %v",
		len(reqs), loadFor, fateCounts(fates), len(accepted), victim.Name, killedAt.Round(time.Millisecond))
	// Each fate as it may come: the replicas answer well within the
	// client's timeout, with ids for every event or a 503; only the victim
	// leaves requests unanswered, and only those in flight when it died.
	for _, f := range []fate{fateTimeout, fateBad} {
		if fates[f] > 0 {
			t.Errorf("%d requests %s, want none (%s)", fates[f], f, fateCounts(fates))
		}
	}
	errs := 0
	for _, r := range reqs {
		if (r.fate == fateCut || r.fate == fateConnRefused) && (r.replica != victim || !r.start.Before(killTo) || !r.end.After(killFrom)) {
			if errs++; errs > 10 {
				continue
			}
			t.Errorf("a request to %s (%v to %v) failed (%s: %v), but %s was killed from %v to %v",
				r.replica.Name, r.start.Sub(start), r.end.Sub(start), r.fate, r.err, victim.Name, killedAt, killTo.Sub(start))
		}
	}

	if len(accepted) < 1000 {
		t.Fatalf("only %d events acknowledged: the load did not run", len(accepted))
	}

	// Every acknowledged event reaches every destination. The dead
	// replica's calls run again once their leases (30s) expire.
	deadline := time.Now().Add(90 * time.Second)
	for {
		missing := 0
		for _, id := range accepted {
			for _, d := range dests {
				if d.count(id) == 0 {
					missing++
				}
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d deliveries of acknowledged events missing 90s after the load", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
	delivered := time.Since(start)

	// Nothing is stuck: every call ends done (events that were stored but
	// not acknowledged, by the replica that died, are delivered too).
	store, err := dispatchpg.Open(context.Background(), dispatchpg.Config{URL: dbURL,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var counts []dispatch.CallCount
	for {
		counts, err = store.CallCounts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		stuck := int64(0)
		for _, c := range counts {
			if c.State != dispatch.StateDone {
				stuck += c.N
			}
		}
		if stuck == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls not done 90s after the load: %v", counts)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Duplicates: a delivery that the dead replica was making when it died
	// may have reached the destination without its outcome being stored;
	// it runs again. It had at most --workers calls running, so at most
	// that many deliveries repeat. Live replicas renew their leases and
	// cause none.
	dups := 0
	for _, d := range dests {
		d.mu.Lock()
		for _, n := range d.got {
			dups += n - 1
		}
		if len(d.bad) > 0 {
			t.Errorf("%d deliveries with other bytes than were sent, e.g. %s", len(d.bad), d.bad[0])
		}
		d.mu.Unlock()
	}
	var events int64
	for _, c := range counts {
		if c.Function == "handleEvent" {
			events += c.N
		}
	}
	t.Logf("all %d acknowledged events delivered to both destinations %v after the start; %d events stored in all; "+
		"%d duplicate deliveries (bound %d: the dead replica's --workers); calls: %v",
		len(accepted), delivered.Round(time.Millisecond), events, dups, workers, counts)
	if dups > workers {
		t.Errorf("%d duplicate deliveries, more than the %d the dead replica could have had in flight", dups, workers)
	}
	if int(events) < len(accepted) {
		t.Errorf("%d events stored, fewer than the %d acknowledged", events, len(accepted))
	}
	// What was not acknowledged: events refused (503, connection refused)
	// were not stored and reach no destination; events whose answer was
	// lost may have been stored, and then reach every destination, all of a
	// request's or none.
	var unknownStored, unknownEvents int
	for _, r := range reqs {
		switch r.fate {
		case fate503, fateConnRefused:
			for i, d := range dests {
				if k := d.delivered(r.ns); k > 0 {
					t.Errorf("destination %d got %d of the %d events of a request refused (%s): a refusal stores nothing", i, k, len(r.ns), r.fate)
				}
			}
		case fateCut, fateTimeout, fateBad:
			unknownEvents += len(r.ns)
			k0 := dests[0].delivered(r.ns)
			for i, d := range dests {
				if k := d.delivered(r.ns); (k != 0 && k != len(r.ns)) || k != k0 {
					t.Errorf("destination %d got %d of the %d events of a request whose answer was lost (%s), destination 0 %d: all or none, everywhere",
						i, k, len(r.ns), r.fate, k0)
				}
			}
			unknownStored += k0
		}
	}
	t.Logf("%d events without an answer, %d of them stored and delivered", unknownEvents, unknownStored)
	if line, ok := replicas[0].Logs.Contains("calls whose lease expired run again"); ok {
		t.Logf("replica-0: %s", line)
	}
	if line, ok := replicas[2].Logs.Contains("calls whose lease expired run again"); ok {
		t.Logf("replica-2: %s", line)
	}
	for _, r := range []*replica{replicas[0], replicas[2]} {
		t.Logf("%s: %s", r.Name, r.stop(t))
	}
}

// fate is what came of a request.
type fate int

const (
	fateAcked       fate = iota // 2xx with one id per event
	fate503                     // 503: nothing stored
	fateConnRefused             // connection refused: nothing sent
	fateCut                     // the connection failed before the whole answer: maybe stored
	fateTimeout                 // the client gave up: maybe stored
	fateBad                     // another status, or a 2xx without its ids: maybe stored
)

var fateNames = [...]string{"acked", "503", "connection refused", "cut", "timed out", "unexpected answer"}

func (f fate) String() string { return fateNames[f] }

func fateCounts(c [len(fateNames)]int) string {
	var parts []string
	for f, n := range c {
		parts = append(parts, fmt.Sprintf("%s %d", fate(f), n))
	}
	return strings.Join(parts, ", ")
}

// answer is what a client learnt of a request.
type answer struct {
	fate fate
	ids  []string // fateAcked: one per event
	err  error
}

// request is one request of the load: the events it carried (their "n"),
// the replica it went to, and its answer.
type request struct {
	replica    *replica
	ns         []int64
	start, end time.Time
	answer
}

// send posts a request of events events and says what came of it.
func send(client *http.Client, url string, body []byte, events int) answer {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	var ne net.Error
	switch {
	case err != nil && errors.Is(err, syscall.ECONNREFUSED):
		return answer{fate: fateConnRefused, err: err}
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		return answer{fate: fateTimeout, err: err}
	case err != nil:
		return answer{fate: fateCut, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch {
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		return answer{fate: fateTimeout, err: err}
	case err != nil:
		return answer{fate: fateCut, err: err}
	case resp.StatusCode == http.StatusServiceUnavailable:
		return answer{fate: fate503, err: fmt.Errorf("%s: %s", resp.Status, b)}
	case resp.StatusCode/100 != 2:
		return answer{fate: fateBad, err: fmt.Errorf("%s: %s", resp.Status, b)}
	}
	var ans struct {
		ID  string   `json:"id"`
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return answer{fate: fateBad, err: fmt.Errorf("%s with an unreadable body %q: %v", resp.Status, b, err)}
	}
	if ans.ID != "" {
		ans.IDs = []string{ans.ID}
	}
	if len(ans.IDs) != events || slices.Contains(ans.IDs, "") {
		return answer{fate: fateBad, err: fmt.Errorf("%s with %d ids for %d events: %s", resp.Status, len(ans.IDs), events, b)}
	}
	return answer{fate: fateAcked, ids: ans.IDs}
}

// post sends one request of events events and returns the ids of a 2xx
// answer; anything else is an error that says what came of it.
func post(client *http.Client, url string, body []byte, events int) ([]string, error) {
	a := send(client, url, body, events)
	if a.fate != fateAcked {
		return nil, fmt.Errorf("%s: %w", a.fate, a.err)
	}
	return a.ids, nil
}
