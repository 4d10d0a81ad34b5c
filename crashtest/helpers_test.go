package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/internal/proctest"
)

// --- the fanout process ---

// fanoutArgs is the one place that says how the tests start fanout: on a
// free loopback port, with its data in data, delivering to destinations.
// Tests add their own flags in extra. The destinations are all on
// loopback, which fanout's SSRF guard refuses unless --allow-network lets
// them through.
func fanoutArgs(data string, destinations []string, extra ...string) []string {
	args := []string{"--addr", "127.0.0.1:0", "--data", data, "--allow-network", "127.0.0.0/8"}
	for _, d := range destinations {
		args = append(args, "--destination", d)
	}
	return append(args, extra...)
}

// fanoutProc is one run of the fanout binary.
type fanoutProc = proctest.Proc

// startFanout starts fanout with args (made by fanoutArgs) and returns once
// it listens.
func startFanout(t testing.TB, args []string) *fanoutProc {
	t.Helper()
	p := launch(t, exec.Command(fanoutBin, args...))
	p.WaitListening(t, 30*time.Second)
	return p
}

// launch starts cmd, which runs fanout, with its output captured and a
// cleanup that kills it: nothing outlives the test.
func launch(t testing.TB, cmd *exec.Cmd) *fanoutProc {
	t.Helper()
	return proctest.Start(t, "fanout", cmd)
}

// terminate sends SIGTERM, the clean shutdown, and checks that fanout exits
// with status 0 within timeout.
func terminate(t testing.TB, p *fanoutProc, timeout time.Duration) {
	t.Helper()
	if st := p.Terminate(t, timeout); !st.Success() {
		t.Fatalf("fanout exited with %v after SIGTERM, want status 0:\n%s", st, p.Logs.Tail(30))
	}
}

// --- destinations ---

// attempt is one delivery attempt as a sink sees it.
type attempt struct {
	ID   string // webhook-id: the event id
	N    int    // 1 for the first attempt of this event at this sink
	Body []byte
	Req  *http.Request
}

// answer is what a sink says to an attempt. Status 2xx counts as delivered.
type answer struct {
	Status int
	Header map[string]string
	// Write, if set, writes the body after the status (an endless one, say).
	Write func(w http.ResponseWriter, r *http.Request)
}

// behaviour decides a sink's answer; it may block (a hanging destination).
type behaviour func(a attempt) answer

func healthy(attempt) answer { return answer{Status: http.StatusNoContent} }

// flaky answers 503 to a fraction p of the attempts, at random.
func flaky(p float64) behaviour {
	return func(attempt) answer {
		if rand.Float64() < p {
			return answer{Status: http.StatusServiceUnavailable}
		}
		return answer{Status: http.StatusOK}
	}
}

// sink is a destination on loopback in the test process. It records every
// attempt and every delivery (an attempt it answered 2xx) by webhook-id.
type sink struct {
	*httptest.Server
	behave      behaviour
	mu          sync.Mutex
	byID        map[string]*record
	attempts    atomic.Int64
	deliveries  atomic.Int64
	lastAttempt atomic.Int64 // unix nanoseconds
}

// record is what a sink saw of one event.
type record struct {
	attempts   []time.Time // arrival of every attempt
	deliveries []time.Time // arrival of the attempts answered 2xx
	body       []byte      // the body of the first delivery
	differs    []byte      // a later delivered body that was not the same bytes
}

func newSink(t testing.TB, behave behaviour) *sink {
	t.Helper()
	return newSinkOn(t, nil, behave)
}

// newSinkOn starts a sink on ln, or on a free loopback port when ln is nil.
func newSinkOn(t testing.TB, ln net.Listener, behave behaviour) *sink {
	t.Helper()
	s := &sink{behave: behave, byID: make(map[string]*record)}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	if ln != nil {
		s.Listener.Close()
		s.Listener = ln
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return // fanout went away mid-request: not an attempt that counts
	}
	id := r.Header.Get("webhook-id")
	s.attempts.Add(1)
	s.lastAttempt.Store(at.UnixNano())
	s.mu.Lock()
	rec := s.byID[id]
	if rec == nil {
		rec = &record{}
		s.byID[id] = rec
	}
	rec.attempts = append(rec.attempts, at)
	n := len(rec.attempts)
	s.mu.Unlock()

	ans := s.behave(attempt{ID: id, N: n, Body: body, Req: r})
	if ans.Status >= 200 && ans.Status < 300 {
		// Recorded before the answer leaves: once fanout has it, the test
		// must see the delivery.
		s.mu.Lock()
		rec.deliveries = append(rec.deliveries, at)
		if rec.body == nil {
			rec.body = body
		} else if !bytes.Equal(rec.body, body) && rec.differs == nil {
			rec.differs = body
		}
		s.mu.Unlock()
		s.deliveries.Add(1)
	}
	for k, v := range ans.Header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(ans.Status)
	if ans.Write != nil {
		ans.Write(w, r)
	}
}

func (r *record) clone() record {
	return record{attempts: slices.Clone(r.attempts), deliveries: slices.Clone(r.deliveries),
		body: r.body, differs: r.differs}
}

// get returns a copy of what the sink saw of one event.
func (s *sink) get(id string) record {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec := s.byID[id]; rec != nil {
		return rec.clone()
	}
	return record{}
}

// snapshot returns a copy of everything the sink saw.
func (s *sink) snapshot() map[string]record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]record, len(s.byID))
	for id, rec := range s.byID {
		out[id] = rec.clone()
	}
	return out
}

// delivered returns how many of ids, from the first on, were delivered
// to the sink, stopping at the first that was not.
func (s *sink) delivered(ids []string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, id := range ids {
		if rec := s.byID[id]; rec == nil || len(rec.deliveries) == 0 {
			return i
		}
	}
	return len(ids)
}

// waitDelivered waits until every one of ids was delivered to the sink. It
// moves a cursor through ids rather than checking them all on every look:
// a soak checks hundreds of thousands, under the lock the sink's handlers
// need.
func (s *sink) waitDelivered(t testing.TB, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for next := 0; ; {
		next += s.delivered(ids[next:])
		if next == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			missing := 0
			for _, id := range ids[next:] {
				if len(s.get(id).deliveries) == 0 {
					missing++
				}
			}
			t.Fatalf("%s: %d of %d events not delivered within %v (for example %s, which saw %d attempts)",
				s.URL, missing, len(ids), timeout, ids[next], len(s.get(ids[next]).attempts))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitQuiet waits until no sink has seen an attempt for quiet: with retries
// at most --retry-max apart (plus the runtime's 100ms minimum), a quiet
// longer than that means nothing is waiting for a retry any more.
func waitQuiet(t testing.TB, sinks []*sink, quiet, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := int64(0)
		for _, s := range sinks {
			last = max(last, s.lastAttempt.Load())
		}
		if time.Since(time.Unix(0, last)) >= quiet {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the destinations still saw attempts %v after the load stopped", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSinksDrained waits until no sink holds a connection it has not
// closed yet: the kernel's table of TCP sockets (/proc/net/tcp) lists none
// on a sink's port that is established, half-open or closed by the other
// end only. Called once fanout is dead, it returns when every request the
// dead process sent has been served and recorded: a sink closes a
// connection only after it has read it to its end. (A connection that the
// dead process reset instead had an unread answer on it, so no request
// waiting.)
func waitSinksDrained(t testing.TB, sinks []*sink, timeout time.Duration) {
	t.Helper()
	ports := map[string]bool{}
	for _, s := range sinks {
		_, port, err := net.SplitHostPort(s.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			t.Fatal(err)
		}
		ports[fmt.Sprintf("%04X", n)] = true
	}
	deadline := time.Now().Add(timeout)
	for {
		open := 0
		for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("read the table of TCP sockets: %v", err)
			}
			for line := range strings.Lines(string(b)) {
				// sl local_address rem_address st ...: "0100007F:9C41 0100007F:D0E2 01 ..."
				f := strings.Fields(line)
				if len(f) < 4 {
					continue
				}
				_, port, _ := strings.Cut(f[1], ":")
				switch f[3] {
				case "01", "03", "08": // ESTABLISHED, SYN_RECV, CLOSE_WAIT
					if ports[port] {
						open++
					}
				}
			}
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the destinations still had %d connections open %v after fanout died", open, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func urlsOf(sinks []*sink, path string) []string {
	urls := make([]string, len(sinks))
	for i, s := range sinks {
		urls[i] = s.URL + path
	}
	return urls
}

// --- the API ---

var apiClient = &http.Client{Timeout: 30 * time.Second}

// postEvent posts one event and returns its id; anything but 202 fails the test.
func postEvent(t testing.TB, base string, body string) string {
	t.Helper()
	resp, err := apiClient.Post(base+"/v1/event", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /v1/event: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct{ ID string }
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(b, &out) != nil || out.ID == "" {
		t.Fatalf("POST /v1/event: %d %s, want 202 with an id", resp.StatusCode, b)
	}
	return out.ID
}

// eventBody is an event that carries its key, with the bytes that a
// re-encoding would change (spacing, escapes, <&>, non-ASCII), so that the
// destinations' copy proves it is the client's own bytes.
func eventBody(key string, n int) []byte {
	return fmt.Appendf(nil, `{"k":"%s", "n" : %d,"s":"<&>\u00e9 é \"q\"","pad":"%s"}`, key, n, strings.Repeat("x", n%61))
}

func keyOf(body []byte) string {
	var e struct {
		K string `json:"k"`
	}
	_ = json.Unmarshal(body, &e)
	return e.K
}

// --- the store ---

// openStore opens fanout's database once fanout has stopped (it holds a lock
// on it while it runs).
func openStore(t testing.TB, data string) *dispatchsqlite.Store {
	t.Helper()
	st, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{
		Path:   filepath.Join(data, "fanout.db"),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("open fanout's store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// callCounts returns the calls in fanout's store by function and state.
func callCounts(t testing.TB, data string) map[string]map[dispatch.State]int64 {
	t.Helper()
	st := openStore(t, data)
	counts, err := st.CallCounts(context.Background())
	if err != nil {
		t.Fatalf("CallCounts: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}
	out := map[string]map[dispatch.State]int64{}
	for _, c := range counts {
		if out[c.Function] == nil {
			out[c.Function] = map[dispatch.State]int64{}
		}
		out[c.Function][c.State] += c.N
	}
	return out
}

// notDone is how many calls of counts are not done.
func notDone(counts map[string]map[dispatch.State]int64) int64 {
	var n int64
	for _, states := range counts {
		for state, k := range states {
			if state != dispatch.StateDone {
				n += k
			}
		}
	}
	return n
}

// stopWhenDone stops fanout cleanly once it has nothing left to do, and
// returns how many extra runs that took: it waits until the destinations
// are quiet (nothing left to retry), stops fanout, and reads the store. The
// destinations cannot see the last step of an event, its handleEvent call
// resuming once its deliveries are done; a clean stop hands back the calls
// queued but not started, and under a backlog the resumes wait behind older
// deliveries (claims take the oldest first). So while the store holds calls
// that are not done, stopWhenDone starts fanout again (restart) to finish
// them, for as long as each run makes progress.
func stopWhenDone(t testing.TB, p *fanoutProc, restart func() *fanoutProc, data string, sinks []*sink) int {
	t.Helper()
	left := int64(-1)
	for runs := 0; ; runs++ {
		waitQuiet(t, sinks, time.Second, 2*time.Minute)
		terminate(t, p, time.Minute)
		counts := callCounts(t, data)
		n := notDone(counts)
		if n == 0 {
			return runs
		}
		if runs == 10 || (left >= 0 && n >= left) {
			t.Fatalf("after %d clean stops the store still holds %d calls that are not done: %v", runs+1, n, counts)
		}
		left = n
		t.Logf("after a clean stop %d calls are not done yet (%v): starting fanout again to finish them", n, counts)
		p = restart()
		waitFinished(t, p, n, 30*time.Second)
	}
}

// waitFinished waits until fanout has finished (done or failed) n call
// attempts since it started, by its metrics, or until timeout: the calls a
// clean stop left behind are then run, and the caller's next look at the
// store says whether that was all.
func waitFinished(t testing.TB, p *fanoutProc, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := metrics(t, p)
		finished := m[`fanout_attempts_total{outcome="done"}`] + m[`fanout_attempts_total{outcome="failed"}`]
		if finished >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("fanout finished %d call attempts in %v, not the %d left: looking at the store anyway", finished, timeout, n)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metrics scrapes fanout's /metrics: the value of each series, by its name
// and labels as written.
func metrics(t testing.TB, p *fanoutProc) map[string]int64 {
	t.Helper()
	resp, err := apiClient.Get(p.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64); err == nil {
			out[line[:i]] = int64(v)
		}
	}
	return out
}

// checkAllDone fails the test unless every call in the store is done, and
// returns how many handleEvent calls (events) and publishEvent calls
// (deliveries) it holds.
func checkAllDone(t testing.TB, data string) (events, deliveries int64) {
	t.Helper()
	counts := callCounts(t, data)
	if n := notDone(counts); n > 0 {
		t.Errorf("after a clean shutdown the store holds %d calls that are not done, want every call done: %v", n, counts)
	}
	return counts["handleEvent"][dispatch.StateDone], counts["publishEvent"][dispatch.StateDone]
}

// eventCall returns the handleEvent call of an event and its deliveries
// (publishEvent calls, one per destination, in destination order).
func eventCall(t testing.TB, st *dispatchsqlite.Store, id string) (*dispatch.Call, []*dispatch.Call) {
	t.Helper()
	ctx := context.Background()
	c, err := st.CallGet(ctx, id)
	if err != nil {
		t.Fatalf("CallGet(%s): %v", id, err)
	}
	children, err := st.CallListChildren(ctx, id)
	if err != nil {
		t.Fatalf("CallListChildren(%s): %v", id, err)
	}
	return c, children
}
