package replicatest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"fanout/internal/pgtest"
)

// heldSink is a destination that counts requests by webhook-id and, while
// hold is set, keeps each request until release is closed.
type heldSink struct {
	srv     *httptest.Server
	mu      sync.Mutex
	hold    bool
	held    int // requests that arrived while hold was set
	got     map[string]int
	release chan struct{}
	once    sync.Once
}

func newHeldSink(t testing.TB) *heldSink {
	s := &heldSink{got: map[string]int{}, release: make(chan struct{}), hold: true}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.got[r.Header.Get("webhook-id")]++
		hold := s.hold
		if hold {
			s.held++
		}
		s.mu.Unlock()
		if hold {
			<-s.release
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.srv.Close)
	t.Cleanup(s.letGo) // before Close, which waits for the handlers
	return s
}

// letGo turns hold off and answers the requests held.
func (s *heldSink) letGo() {
	s.mu.Lock()
	s.hold = false
	s.mu.Unlock()
	s.once.Do(func() { close(s.release) })
}

func (s *heldSink) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

func (s *heldSink) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[id]
}

// metric returns the value of an unlabelled metric of a replica's /metrics.
func metric(t testing.TB, base, name string) float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("/metrics: %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// waitFor polls cond every 100ms until it holds or timeout has passed; it
// returns whether it held.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReplicas_FrozenWithLocalCalls freezes (SIGSTOP) a replica while its
// deliveries run as local calls (no row of their own, their event's plan
// leased to the replica), and checks the takeover: once the lease expires,
// the other replica drops the plans and sends every delivery again, with
// the same webhook-id; when the frozen replica wakes up, its late outcomes
// are refused (fenced on the lease it lost), so each event ends delivered
// once in the database, each delivery sent at most twice, and no plan or
// lease is left behind.
func TestReplicas_FrozenWithLocalCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a frozen replica's 30s lease to expire; skipped with -short")
	}
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("needs /proc to see that a replica stopped by SIGSTOP has stopped")
	}
	t.Parallel() // mostly waiting
	const events = 20
	dbURL := pgtest.NewURL(t)
	sink := newHeldSink(t)
	// A long delivery timeout: the frozen replica's requests must not time
	// out when it wakes up, but read their 204 and try to store it.
	args := fanoutArgs(t, dbURL, []string{sink.srv.URL + "/hook"}, "--delivery-timeout", "3m")
	a := startReplica(t, "replica-a", args)
	t.Cleanup(func() { _ = a.Cmd.Process.Signal(syscall.SIGCONT) }) // never leave it stopped (proctest then kills it)
	b := startReplica(t, "replica-b", args)
	start := time.Now()

	// Events to A, whose deliveries A starts at once and the sink holds.
	client := &http.Client{Timeout: 15 * time.Second}
	ids := make([]string, 0, events)
	for i := range events {
		got, err := post(client, a.URL+"/v1/event", fmt.Appendf(nil, `{"type": "frozen.test", "n": %d}`, i), 1)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		ids = append(ids, got[0])
	}
	if !waitFor(30*time.Second, func() bool { return sink.heldCount() >= events }) {
		t.Fatalf("the sink holds %d requests 30s after %d events were acknowledged", sink.heldCount(), events)
	}
	if n := metric(t, a.URL, "fanout_local_calls_total"); n < events {
		t.Fatalf("fanout_local_calls_total of %s is %v with %d deliveries in flight: they are not local calls, "+
			"and this test does not test what it says (are local calls off?)", a.Name, n, events)
	} else {
		t.Logf("%d deliveries held by the sink; %s's fanout_local_calls_total %v", sink.heldCount(), a.Name, n)
	}

	// Freeze A with its deliveries in flight; the sink then answers them,
	// to a process that cannot read the answers.
	stop := time.Now()
	if err := a.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", a.Name, err)
	}
	if err := waitStopped(a.Cmd.Process.Pid, 10*time.Second); err != nil {
		t.Fatalf("%s after SIGSTOP: %v", a.Name, err)
	}
	frozen := time.Now()
	t.Logf("%s seen stopped %v after SIGSTOP (polled every 100ms)", a.Name, frozen.Sub(stop).Round(time.Microsecond))
	sink.letGo()

	// B takes over once A's leases expire (30s) and sends every delivery
	// again.
	resent := func() int {
		k := 0
		for _, id := range ids {
			if sink.count(id) >= 2 {
				k++
			}
		}
		return k
	}
	if !waitFor(90*time.Second, func() bool { return resent() == events }) {
		var not []string
		for _, id := range ids {
			if n := sink.count(id); n < 2 {
				not = append(not, fmt.Sprintf("event %s sent %d time(s), its calls: %s", id, n, describeCalls(dbURL, id)))
			}
		}
		t.Fatalf("%d of %d deliveries sent again 90s after %s froze; not sent again:\n%s",
			resent(), events, a.Name, strings.Join(not, "\n"))
	}
	takenOver := time.Since(frozen)
	line := b.WaitLog(t, 10*time.Second, "calls whose lease expired run again")
	t.Logf("all %d deliveries sent again %v after %s froze; %s: %s", events, takenOver.Round(time.Millisecond), a.Name, b.Name, line)

	// A wakes up: its deliveries read their 204s, and their outcomes are
	// refused, each of them.
	if err := a.Cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT %s: %v", a.Name, err)
	}
	const (
		fenced    = "call was taken over while it ran; dropping its outcome"
		storeFail = "store call outcome" // the finish failed instead (a unique-key error, say)
	)
	waitFor(30*time.Second, func() bool {
		_, failed := a.Logs.Contains(storeFail)
		return failed || a.Logs.Count(fenced) >= events
	})
	if line, ok := a.Logs.Contains(storeFail); ok {
		t.Errorf("%s failed to store a late outcome instead of having it refused (%d refused): %s", a.Name, a.Logs.Count(fenced), line)
	} else if n := a.Logs.Count(fenced); n < events {
		t.Errorf("%s logged %q for %d of its %d late outcomes within 30s of SIGCONT, want all", a.Name, fenced, n, events)
	}

	// Every event is delivered once, as B read it.
	type eventView struct {
		State      string `json:"state"`
		Deliveries []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"deliveries"`
	}
	getEvent := func(id string) (eventView, error) {
		var v eventView
		resp, err := client.Get(b.URL + "/v1/events/" + id)
		if err != nil {
			return v, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return v, fmt.Errorf("GET /v1/events/%s: %s", id, resp.Status)
		}
		return v, json.NewDecoder(resp.Body).Decode(&v)
	}
	var last string
	done := func() bool {
		for _, id := range ids {
			v, err := getEvent(id)
			switch {
			case err != nil:
				last = err.Error()
				return false
			case v.State != "delivered" || len(v.Deliveries) != 1 || v.Deliveries[0].State != "delivered":
				last = fmt.Sprintf("event %s: %+v", id, v)
				return false
			}
		}
		return true
	}
	if !waitFor(30*time.Second, done) {
		t.Errorf("not every event delivered with one delivery delivered 30s after the takeover; e.g. %s", last)
	}
	sends := 0
	for _, id := range ids {
		n := sink.count(id)
		sends += n
		if n < 1 || n > 2 {
			t.Errorf("event %s was sent %d times, want 1 or 2", id, n)
		}
	}

	// The database: every call done, no plan, no lease.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect to the database: %v", err)
	}
	defer conn.Close(context.Background())
	var calls, notDone, plans, leases int
	check := func() bool {
		err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE state <> 3),
			count(*) FILTER (WHERE plan IS NOT NULL),
			count(*) FILTER (WHERE lease_owner IS NOT NULL OR lease_expires IS NOT NULL) FROM calls`).
			Scan(&calls, &notDone, &plans, &leases)
		if err != nil {
			t.Fatalf("count calls: %v", err)
		}
		return notDone == 0 && plans == 0 && leases == 0
	}
	if !waitFor(30*time.Second, check) {
		t.Errorf("calls in the database: %d, %d not done, %d with a plan, %d with a lease; want all done, no plan, no lease",
			calls, notDone, plans, leases)
	}
	if calls != 2*events {
		t.Errorf("%d calls in the database, want %d: %d events and one delivery each", calls, 2*events, events)
	}
	t.Logf("%d events, %d sends to the sink (%d again by %s), %d late outcomes refused by %s; %d calls, all done, no plan, no lease; %v in all",
		events, sends, sends-events, b.Name, a.Logs.Count(fenced), a.Name, calls, time.Since(start).Round(time.Millisecond))

	t.Logf("%s: %s", a.Name, a.stop(t))
	t.Logf("%s: %s", b.Name, b.stop(t))
}

// waitStopped waits until every thread of process pid is stopped, for up
// to timeout. SIGSTOP does not stop a process by the time kill(2) returns:
// the signal is queued, and the threads stop once the kernel runs them
// again, which on a busy machine may be milliseconds later. Until then the
// process runs: a replica would read the answers the sink gives once it is
// told the replica is frozen, and store them, and those deliveries would
// not be sent again.
func waitStopped(pid int, timeout time.Duration) error {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	var running []string
	ok := waitFor(timeout, func() bool {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			running = []string{err.Error()}
			return false
		}
		running = running[:0]
		for _, task := range tasks {
			stat, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
			if err != nil {
				continue // the thread exited
			}
			// pid (comm) state ...: comm may hold spaces and parentheses.
			fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
			if len(fields) == 0 {
				running = append(running, task.Name()+": unreadable stat")
				continue
			}
			switch fields[0] {
			case "T", "t", "Z", "X": // stopped, traced, exited
			default:
				running = append(running, task.Name()+" in state "+fields[0])
			}
		}
		return len(running) == 0
	})
	if !ok {
		return fmt.Errorf("threads not stopped after %v: %s", timeout, strings.Join(running, ", "))
	}
	return nil
}

// describeCalls says in what state the calls of an event are, the event's
// and its children's: of a delivery not sent again, whether it was lost
// (in a plan still, or stored pending and never run) or finished before
// its replica froze.
func describeCalls(dbURL, event string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err.Error()
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id, state, attempt, coalesce(lease_owner, ''), plan IS NOT NULL, waiting
		FROM calls WHERE id = $1 OR parent_id = $1 ORDER BY id`, event)
	if err != nil {
		return err.Error()
	}
	var out []string
	for rows.Next() {
		var id, owner string
		var state int16
		var attempt, waiting int32
		var plan bool
		if err := rows.Scan(&id, &state, &attempt, &owner, &plan, &waiting); err != nil {
			return err.Error()
		}
		out = append(out, fmt.Sprintf("%s state %d attempt %d lease %q plan %v waiting %d", id, state, attempt, owner, plan, waiting))
	}
	if err := rows.Err(); err != nil {
		return err.Error()
	}
	return strings.Join(out, "; ")
}
