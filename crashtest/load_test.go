package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// loadConfig shapes the load of a crash test.
type loadConfig struct {
	singles  int // clients posting /v1/event
	batchers int // clients posting /v1/batch
	minBatch int
	maxBatch int
	// rate, when positive, caps the events per second of all clients
	// together. Unbounded, the clients outrun the deliveries (16 workers)
	// many times over and the test would spend minutes draining.
	rate float64
}

// outcome is what a client learnt of a request.
type outcome int

const (
	// acked: 202 with the ids. Every event must be delivered.
	acked outcome = iota
	// rejected: fanout answered 503, which promises that nothing was
	// stored, or refused the connection (nothing was sent). No event may
	// be delivered.
	rejected
	// unknown: no answer that says (the connection was cut, the client
	// gave up, or the answer made no sense). The events may or may not be
	// stored, and may be delivered, but a batch is stored whole or not at
	// all.
	unknown
)

// fate is what exactly came of a request; each outcome has several, which
// the tests count and judge apart.
type fate int

const (
	fateAcked       fate = iota // 202 with one id per event
	fate503                     // 503: nothing stored (rejected)
	fateConnRefused             // connection refused: nothing sent (rejected)
	fateCut                     // the connection failed before the whole answer came (unknown)
	fateTimeout                 // the client's timeout (30s) ran out (unknown)
	fateBad202                  // 202 with an unreadable body or the wrong number of ids (unknown)
	fateUnexpected              // any other status: a 500, a 4xx (unknown)
)

var fateNames = [...]string{"acked", "503", "connection refused", "cut", "timed out", "202 without its ids", "unexpected status"}

func (f fate) String() string { return fateNames[f] }

// request is one POST and what came of it.
type request struct {
	batch   bool
	keys    []string // the events' keys, in order
	ids     []string // acked: ids[i] is the id of keys[i]
	outcome outcome
	fate    fate
	status  int
	err     string
	start   time.Time
	end     time.Time
}

// loadCounts counts requests by fate.
type loadCounts [len(fateNames)]int

func (c loadCounts) String() string {
	var parts []string
	for f, n := range c {
		parts = append(parts, fmt.Sprintf("%s %d", fate(f), n))
	}
	return strings.Join(parts, ", ")
}

// countFates counts reqs by fate.
func countFates(reqs []*request) loadCounts {
	var c loadCounts
	for _, r := range reqs {
		c[r.fate]++
	}
	return c
}

// loader posts events with unique keys from concurrent clients to whatever
// fanout currently runs, and remembers every event's bytes and every answer.
type loader struct {
	cfg      loadConfig
	client   *http.Client
	limiter  *rate.Limiter
	base     atomic.Pointer[string] // "" while fanout is down
	inflight atomic.Int64
	// awaiting counts the requests in flight whose body was sent whole:
	// fanout has them, and is storing them or answering.
	awaiting atomic.Int64
	accepted atomic.Int64 // acked events so far

	mu         sync.Mutex
	sent       map[string][]byte // key -> the event's exact bytes
	reqs       []*request
	unexpected []string // answers no request should get (a 500, a 400)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newLoader(cfg loadConfig) *loader {
	l := &loader{
		cfg: cfg,
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: cfg.singles + cfg.batchers},
		},
		sent: make(map[string][]byte),
	}
	if cfg.rate > 0 {
		l.limiter = rate.NewLimiter(rate.Limit(cfg.rate), max(1, cfg.maxBatch))
	}
	empty := ""
	l.base.Store(&empty)
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// target points the clients at fanout's base URL, or pauses them ("").
func (l *loader) target(base string) { l.base.Store(&base) }

func (l *loader) start() {
	for c := range l.cfg.singles + l.cfg.batchers {
		l.wg.Add(1)
		go l.runClient(c, c >= l.cfg.singles)
	}
}

// stop stops the clients and waits for their last requests (each bounded by
// the client timeout).
func (l *loader) stop() {
	l.cancel()
	l.wg.Wait()
	l.client.CloseIdleConnections()
}

func (l *loader) runClient(c int, batch bool) {
	defer l.wg.Done()
	for seq := 0; l.ctx.Err() == nil; seq++ {
		n := 1
		if batch {
			n = l.cfg.minBatch + rand.IntN(l.cfg.maxBatch-l.cfg.minBatch+1)
		}
		if l.limiter != nil && l.limiter.WaitN(l.ctx, n) != nil {
			return
		}
		base := *l.base.Load()
		if base == "" {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		keys := make([]string, n)
		bodies := make([][]byte, n)
		l.mu.Lock()
		for i := range n {
			keys[i] = fmt.Sprintf("c%d-%d-%d", c, seq, i)
			bodies[i] = eventBody(keys[i], len(l.sent))
			l.sent[keys[i]] = bodies[i]
		}
		l.mu.Unlock()
		r := l.post(base, batch, keys, bodies)
		l.mu.Lock()
		l.reqs = append(l.reqs, r)
		l.mu.Unlock()
		if r.outcome != acked {
			time.Sleep(time.Millisecond) // fanout is down or refusing: no busy loop
		}
	}
}

func (l *loader) post(base string, batch bool, keys []string, bodies [][]byte) *request {
	r := &request{batch: batch, keys: keys, start: time.Now()}
	path, body := "/v1/event", bodies[0]
	if batch {
		path, body = "/v1/batch", append(append([]byte("[ "), bytes.Join(bodies, []byte(",\n  "))...), " ]"...)
	}
	l.inflight.Add(1)
	defer l.inflight.Add(-1)
	sent := &sentBody{r: bytes.NewReader(body), awaiting: &l.awaiting}
	defer sent.done()
	// Not bound to l.ctx: stopping the load must not cut requests in
	// flight, whose outcome the test then would not know.
	req, err := http.NewRequest(http.MethodPost, base+path, sent)
	if err != nil {
		panic(err)
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		r.end, r.err = time.Now(), err.Error()
		var ne net.Error
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			// Nothing was sent: fanout was down. Nothing may be stored.
			r.outcome, r.fate = rejected, fateConnRefused
		case errors.As(err, &ne) && ne.Timeout():
			r.outcome, r.fate = unknown, fateTimeout
		default:
			r.outcome, r.fate = unknown, fateCut
		}
		return r
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r.status, r.end = resp.StatusCode, time.Now()
	var ne net.Error
	switch {
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		r.outcome, r.fate, r.err = unknown, fateTimeout, err.Error()
	case err != nil:
		r.outcome, r.fate, r.err = unknown, fateCut, err.Error() // cut while the answer came
	case resp.StatusCode == http.StatusAccepted:
		var out struct {
			ID  string   `json:"id"`
			IDs []string `json:"ids"`
		}
		if err := json.Unmarshal(b, &out); err != nil {
			r.outcome, r.fate, r.err = unknown, fateBad202, fmt.Sprintf("202 with an unreadable body %q: %v", b, err)
			l.note(fmt.Sprintf("%s: %s", path, r.err))
			break
		}
		if !batch {
			out.IDs = []string{out.ID}
		}
		if len(out.IDs) != len(keys) || slices.Contains(out.IDs, "") {
			r.outcome, r.fate = unknown, fateBad202
			l.note(fmt.Sprintf("%s: 202 with %d ids for %d events: %s", path, len(out.IDs), len(keys), b))
			break
		}
		r.outcome, r.fate, r.ids = acked, fateAcked, out.IDs
		l.accepted.Add(int64(len(keys)))
	case resp.StatusCode == http.StatusServiceUnavailable:
		r.outcome, r.fate = rejected, fate503
	default:
		// A 500 (a panic) or a 4xx (a bad request of ours): nothing the
		// test expects, and nothing it can say was or wasn't stored.
		r.outcome, r.fate = unknown, fateUnexpected
		l.note(fmt.Sprintf("%s: unexpected %d %s", path, resp.StatusCode, b))
	}
	return r
}

// sentBody is a request body that counts its request in awaiting once the
// transport has read all of it, until done.
type sentBody struct {
	r        *bytes.Reader
	awaiting *atomic.Int64
	mu       sync.Mutex
	state    int // 0 sending, 1 sent (counted), 2 done
}

func (b *sentBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		if b.state == 0 {
			b.state = 1
			b.awaiting.Add(1)
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *sentBody) done() {
	b.mu.Lock()
	if b.state == 1 {
		b.awaiting.Add(-1)
	}
	b.state = 2
	b.mu.Unlock()
}

func (l *loader) note(s string) {
	l.mu.Lock()
	if len(l.unexpected) < 20 {
		l.unexpected = append(l.unexpected, s)
	}
	l.mu.Unlock()
}

// waitAccepted waits until at least n events were acknowledged in all.
func (l *loader) waitAccepted(n int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for l.accepted.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// waitAwaiting waits, briefly, until a request has been sent whole and not
// answered yet: fanout is storing it, or answering.
func (l *loader) waitAwaiting(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for l.awaiting.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Microsecond)
	}
}

// ackedIDs returns the ids of the events of the acknowledged requests.
func ackedIDs(reqs []*request) []string {
	var ids []string
	for _, r := range reqs {
		if r.outcome == acked {
			ids = append(ids, r.ids...)
		}
	}
	return ids
}

// results returns every request made and every event sent, once the load
// has stopped.
func (l *loader) results() ([]*request, map[string][]byte, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reqs, l.sent, l.unexpected
}
