package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// orderSink is the receiver of TestCrash_OrderedKillUnderLoad: it refuses a
// share of the attempts with a 503 and records, per key, the sequence
// numbers it accepted, in arrival order, with the run of fanout (epoch)
// that sent each.
//
// The run is the connection's, taken when it is accepted, not the one
// alive when its request is answered: a request that the killed process
// sent just before its SIGKILL may be answered after the next run began
// (a loaded machine schedules the handler late), and counting it in that
// run made its resend by that run (the 2xx never reached the dead process)
// look like a delivery sent twice by one process. A process's connections
// are its own, so the connection tells which run sent a request; nextRun
// makes sure every connection of a killed process was accepted before the
// epoch moves on.
type orderSink struct {
	*httptest.Server
	epoch  atomic.Int64
	refuse float64 // the share of attempts answered 503
	mu     sync.Mutex
	got    map[string][]arrival
	// inFlight counts the requests of a key being answered, per run: more
	// than one of one run is a breach of one-at-a-time.
	inFlight map[string]int
	overlaps []string
	// late counts the requests answered 2xx after their run ended.
	late int
}

type arrival struct {
	n     int
	epoch int64
}

// connEpoch is the context key of the epoch of a request's connection.
type connEpoch struct{}

func newOrderSink(t *testing.T, refuse float64) *orderSink {
	s := &orderSink{refuse: refuse, got: map[string][]arrival{}, inFlight: map[string]int{}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/accepted" {
			w.WriteHeader(http.StatusNoContent) // nextRun's own connection
			return
		}
		var e struct {
			K string `json:"k"`
			N int    `json:"n"`
		}
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			w.WriteHeader(400)
			return
		}
		epoch := r.Context().Value(connEpoch{}).(int64)
		run := fmt.Sprintf("%s@%d", e.K, epoch)
		s.mu.Lock()
		if s.inFlight[run]++; s.inFlight[run] > 1 {
			s.overlaps = append(s.overlaps, fmt.Sprintf("%s/%d", run, e.N))
		}
		s.mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.inFlight[run]--
		if rand.Float64() < s.refuse {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if epoch != s.epoch.Load() {
			s.late++
		}
		s.got[e.K] = append(s.got[e.K], arrival{e.N, epoch})
		w.WriteHeader(http.StatusNoContent)
	}))
	// Called by the server's accept loop, in the order of the listen
	// queue, before it accepts the next connection.
	s.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connEpoch{}, s.epoch.Load())
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// nextRun moves the sink to the next run of fanout, once the last one is
// dead: a connection of its own, answered, was accepted after every
// connection queued before it, those of the dead process included, which
// so keep their run.
func (s *orderSink) nextRun(t *testing.T) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(s.URL + "/accepted")
	if err != nil {
		t.Fatalf("the sink's own request: %v", err)
	}
	resp.Body.Close()
	s.epoch.Add(1)
}

// TestOrderSink_RunOfConnection: a request counts in the run of fanout
// that opened its connection, even when it is answered after the next run
// began: the requests a killed process had sent (here on connections
// opened before nextRun, answered after it) are of its run, and its
// successor's resends of the next.
func TestOrderSink_RunOfConnection(t *testing.T) {
	t.Parallel()
	s := newOrderSink(t, 0)
	addr := s.Listener.Addr().String()
	// The killed process's connections, with requests not yet answered.
	old := make([]net.Conn, 20)
	for i := range old {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		old[i] = c
	}
	s.nextRun(t)
	post := func(c net.Conn, key string) {
		t.Helper()
		body := fmt.Sprintf(`{"k":%q,"n":0}`, key)
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s: %d", key, resp.StatusCode)
		}
	}
	for i, c := range old {
		post(c, fmt.Sprintf("k%d", i))
	}
	// The next run sends them again, on its own connections.
	for i := range old {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		post(c, fmt.Sprintf("k%d", i))
		c.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range old {
		key := fmt.Sprintf("k%d", i)
		if got, want := s.got[key], []arrival{{0, 0}, {0, 1}}; !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v (the first in the run of its connection, the second in the next)", key, got, want)
		}
	}
}

// TestCrash_OrderedKillUnderLoad: a destination ordered by a key of the
// payload, 1,000 keys, a receiver that answers 503 to a fifth of the
// attempts, and fanout SIGKILLed five times while one producer sends each
// key's events in order (batches, each sent once the one before was
// accepted, repeated after a kill with the same Idempotency-Key). Per key,
// the receiver must never get an event before the one before it was
// delivered (no gap), must go backwards only when fanout restarted (a
// resumed run: the deliveries since the last one durably finished, again
// and in order), and must have every event at the end.
func TestCrash_OrderedKillUnderLoad(t *testing.T) {
	t.Parallel()
	const keys, perKey, batchKeys = 1000, 10, 250
	recv := newOrderSink(t, 0.2)
	data := t.TempDir()
	args := fanoutArgs(data, nil, fastRetries...)
	var mu sync.Mutex
	p := startFanout(t, args)
	url := func() string { mu.Lock(); defer mu.Unlock(); return p.URL }
	var dest struct{ ID string }
	if code := apiJSON(t, "POST", p.URL+"/v1/destinations", map[string]any{"url": recv.URL, "ordering": map[string]string{"key": "k"}}, &dest); code != 201 {
		t.Fatalf("create the ordered destination: %d", code)
	}
	// The producer: batch b holds sequence number n of keys [j, j+batchKeys).
	client := &http.Client{Timeout: 10 * time.Second}
	sent := make(chan struct{})
	var batches atomic.Int64
	go func() {
		defer close(sent)
		b := 0
		for n := range perKey {
			for j := 0; j < keys; j += batchKeys {
				var events []string
				for k := j; k < j+batchKeys; k++ {
					events = append(events, string(eventBody(fmt.Sprintf("key%04d", k), n)))
				}
				body := []byte("[" + strings.Join(events, ",") + "]")
				for {
					req, _ := http.NewRequest("POST", url()+"/v1/batch", bytes.NewReader(body))
					req.Header.Set("Idempotency-Key", fmt.Sprintf("ordered-batch-%d", b))
					resp, err := client.Do(req)
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == 202 {
							break
						}
					}
					time.Sleep(20 * time.Millisecond) // killed: send it again to the next run
				}
				b++
				batches.Add(1)
			}
		}
	}()
	total := perKey * keys / batchKeys
	for i := range kills(5) {
		// Kill while batches are being sent and deliveries made.
		target := int64((i + 1) * total / (kills(5) + 1))
		deadline := time.Now().Add(60 * time.Second)
		for batches.Load() < target && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
		mu.Lock()
		p.Kill(t)
		recv.nextRun(t)
		p = startFanout(t, args)
		mu.Unlock()
	}
	select {
	case <-sent:
	case <-time.After(2 * time.Minute):
		t.Fatal("the producer did not get every batch accepted")
	}
	delivered := func() (missing int) {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		for k := range keys {
			seen := map[int]bool{}
			for _, a := range recv.got[fmt.Sprintf("key%04d", k)] {
				seen[a.n] = true
			}
			missing += perKey - len(seen)
		}
		return missing
	}
	deadline := time.Now().Add(3 * time.Minute)
	for delivered() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	terminate(t, p, 30*time.Second)

	recv.mu.Lock()
	defer recv.mu.Unlock()
	var gaps, backwards, missing, resumed, repeats int
	for k := range keys {
		key := fmt.Sprintf("key%04d", k)
		got := recv.got[key]
		top := -1
		seen := map[int]bool{}
		for i, a := range got {
			switch {
			case a.n > top+1:
				if gaps++; gaps <= 10 {
					t.Errorf("%s: %d delivered before %d (sequence %v)", key, a.n, top+1, got)
				}
			case i > 0 && got[i-1].epoch == a.epoch && a.n != got[i-1].n+1:
				// Within one run of fanout, a key's deliveries follow each
				// other exactly: backwards only where fanout restarted.
				if backwards++; backwards <= 10 {
					t.Errorf("%s: %d after %d within one run of fanout (sequence %v)", key, a.n, got[i-1].n, got)
				}
			case a.n <= top:
				repeats++
				if i == 0 || got[i-1].epoch != a.epoch {
					resumed++ // the first of a resumed run
				}
			}
			top = max(top, a.n)
			seen[a.n] = true
		}
		missing += perKey - len(seen)
	}
	if missing > 0 {
		t.Errorf("%d events never delivered", missing)
	}
	if len(recv.overlaps) > 0 {
		t.Errorf("%d deliveries arrived while another of their key was being answered, in one run: %v", len(recv.overlaps), recv.overlaps[:min(10, len(recv.overlaps))])
	}
	t.Logf("%d keys x %d events, %d kills: %d deliveries again (%d runs resumed after a restart, %d answered after their run ended), %d gaps, %d backward steps within a run",
		keys, perKey, kills(5), repeats, resumed, recv.late, gaps, backwards)
}
