package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"fanout/internal/proctest"
)

// The broker fault tests (issue 22) run the real fanout against real
// brokers, Debian's nats-server (JetStream, file storage) and redis-server
// (append-only file, fsync on every write), and break fanout or the broker
// under load. What they check is the promise of README.md for every kind:
// an event fanout acknowledged (2xx) reaches every destination at least
// once, here found in the broker by the event id it carries
// (fanout-event-id in a NATS message's headers, event_id in a Redis
// entry's fields), with the client's bytes. Duplicates are allowed, and
// counted.

// --- brokers ---

// freePort returns a loopback port nobody listens on, for a broker that
// must come back on the same one after a restart.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitPort waits until something accepts connections on addr.
func waitPort(t testing.TB, p *fanoutProc, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-p.Exited():
			t.Fatalf("%s exited before it listened on %s:\n%s", p.Name, addr, p.Logs.Tail(30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after %v:\n%s", p.Name, addr, timeout, p.Logs.Tail(30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// natsServer is Debian's nats-server with JetStream on file storage in a
// directory of the test's own, which a restart keeps.
type natsServer struct {
	bin, dir string
	port     int
	proc     *fanoutProc
}

// natsSubject is where the tests' destinations publish; natsStream
// captures it, on file storage.
const (
	natsStream  = "FANOUT"
	natsSubject = "fanout.events"
)

func startNATS(t testing.TB) *natsServer {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Skip("SKIPPED: nats-server is not installed (apt-get install nats-server, as .ci/run does): the NATS JetStream fault tests need it")
	}
	n := &natsServer{bin: bin, dir: t.TempDir(), port: freePort(t)}
	n.start(t)
	js := n.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: natsStream, Subjects: []string{natsSubject}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("create the stream: %v", err)
	}
	return n
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// start starts the server (again) on its port and directory.
func (n *natsServer) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(n.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-js", "-sd", n.dir)
	n.proc = proctest.Start(t, "nats-server", cmd)
	waitPort(t, n.proc, fmt.Sprintf("127.0.0.1:%d", n.port), 20*time.Second)
}

// stop stops the server cleanly (SIGTERM): what is tested is fanout's
// retries, not JetStream's own durability.
func (n *natsServer) stop(t testing.TB) {
	t.Helper()
	n.proc.Terminate(t, 30*time.Second)
}

// client connects to the server, and closes the connection at the end of
// the test.
func (n *natsServer) client(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(n.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to nats-server: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// redisServer is Debian's redis-server with the append-only file, fsynced
// before every answer.
type redisServer struct {
	port int
	proc *fanoutProc
}

const redisStream = "fanout-events"

func startRedisAOF(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED: redis-server is not installed (apt-get install redis-server, as .ci/run does): the Redis fault test needs it")
	}
	dir := t.TempDir()
	r := &redisServer{port: freePort(t)}
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(dir, "redis.log"))
	r.proc = proctest.Start(t, "redis-server", cmd)
	waitPort(t, r.proc, fmt.Sprintf("127.0.0.1:%d", r.port), 20*time.Second)
	return r
}

func (r *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d", r.port) }

// --- what the brokers hold ---

// brokerCopies is what a broker holds, by event id: how many messages
// carry it, and the body of the first.
type brokerCopies struct {
	mu     sync.Mutex
	n      map[string]int
	body   map[string][]byte
	differ map[string]bool // a later copy had other bytes
}

func newBrokerCopies() *brokerCopies {
	return &brokerCopies{n: map[string]int{}, body: map[string][]byte{}, differ: map[string]bool{}}
}

func (c *brokerCopies) add(id string, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[id]++
	if prev, ok := c.body[id]; !ok {
		c.body[id] = body
	} else if !bytes.Equal(prev, body) {
		c.differ[id] = true
	}
}

// missing is how many of ids the broker does not hold, and the first.
func (c *brokerCopies) missing(ids []string) (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, first := 0, ""
	for _, id := range ids {
		if c.n[id] == 0 {
			if n == 0 {
				first = id
			}
			n++
		}
	}
	return n, first
}

// brokerReader reads a broker's new messages into copies.
type brokerReader interface {
	name() string
	read(ctx context.Context, into *brokerCopies) error
}

// natsReader reads the stream from the sequence after the last it read.
type natsReader struct {
	js   jetstream.JetStream
	next uint64 // the first sequence not read yet
}

func (r *natsReader) name() string { return "NATS JetStream" }

func (r *natsReader) read(ctx context.Context, into *brokerCopies) error {
	st, err := r.js.Stream(ctx, natsStream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if r.next == 0 {
		r.next = 1
	}
	for r.next <= info.State.LastSeq {
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: r.next,
		})
		if err != nil {
			return err
		}
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return err
		}
		got := 0
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			into.add(m.Headers().Get("fanout-event-id"), m.Data())
			r.next = meta.Sequence.Stream + 1
			got++
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if got == 0 {
			return fmt.Errorf("the stream's last sequence is %d, but nothing came from %d on", info.State.LastSeq, r.next)
		}
	}
	return nil
}

// redisReader reads the stream after the last entry it read.
type redisReader struct {
	c    *redis.Client
	last string
}

func (r *redisReader) name() string { return "Redis Streams" }

func (r *redisReader) read(ctx context.Context, into *brokerCopies) error {
	for {
		start := "-"
		if r.last != "" {
			start = "(" + r.last
		}
		entries, err := r.c.XRangeN(ctx, redisStream, start, "+", 1000).Result()
		if err != nil {
			return err
		}
		for _, e := range entries {
			id, _ := e.Values["event_id"].(string)
			body, _ := e.Values["body"].(string)
			into.add(id, []byte(body))
			r.last = e.ID
		}
		if len(entries) < 1000 {
			return nil
		}
	}
}

// waitInBroker reads the broker until it holds every one of ids, or fails
// the test after timeout.
func waitInBroker(t testing.TB, r brokerReader, c *brokerCopies, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.read(ctx, c)
		cancel()
		if err == nil {
			if n, _ := c.missing(ids); n == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			n, first := c.missing(ids)
			t.Fatalf("%s: %d of %d acknowledged events not in the broker after %v (for example %s; last read: %v)",
				r.name(), n, len(ids), timeout, first, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- fanout's broker destinations ---

// createDestination creates a destination of a broker kind through the API,
// as a user would.
func createDestination(t testing.TB, base, kind string, config map[string]any) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"type": kind, "config": config})
	resp, err := apiClient.Post(base+"/v1/destinations", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST /v1/destinations: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct{ ID string }
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &out) != nil || out.ID == "" {
		t.Fatalf("POST /v1/destinations %s: %d %s, want 201 with an id", body, resp.StatusCode, b)
	}
	return out.ID
}

// checkBrokerCopies checks what a broker holds against what the clients
// sent and heard: every acknowledged event is there under its id with the
// client's bytes, no event of a refused request is, and the broker holds as
// many distinct events as fanout's store holds events (all done: the
// events whose client did not learn the outcome but that fanout stored
// count too). It returns the duplicates (copies beyond the first).
func checkBrokerCopies(t *testing.T, name string, c *brokerCopies, reqs []*request, sent map[string][]byte, storedEvents int64) int {
	t.Helper()
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(name+": "+format, args...)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	dups, byKey := 0, map[string]string{}
	for id, n := range c.n {
		dups += n - 1
		body := c.body[id]
		key := keyOf(body)
		switch want, ok := sent[key]; {
		case id == "":
			fail("a message without an event id: %q", body)
		case !ok:
			fail("event %s is no event a client sent: %q", id, body)
		case !bytes.Equal(body, want):
			fail("event %s is %q, want the client's bytes %q", id, body, want)
		case c.differ[id]:
			fail("event %s came twice with different bytes", id)
		}
		if other, ok := byKey[key]; ok {
			fail("event %s was stored twice, as %s and %s", key, other, id)
		}
		byKey[key] = id
	}
	for _, r := range reqs {
		for i, key := range r.keys {
			switch r.outcome {
			case acked:
				if c.n[r.ids[i]] == 0 {
					fail("event %s (id %s) was acknowledged but is not in the broker", key, r.ids[i])
				}
			case rejected:
				if id, ok := byKey[key]; ok {
					fail("event %s of a refused request (%d %s) is in the broker as %s", key, r.status, r.err, id)
				}
			}
		}
	}
	if got := int64(len(c.n)); got != storedEvents {
		fail("holds %d distinct events; fanout's store holds %d, all done", got, storedEvents)
	}
	if errs > 20 {
		t.Errorf("%s: ... and %d more failures", name, errs-20)
	}
	return dups
}

// TestBrokers_KillUnderLoad SIGKILLs fanout 3 times while clients post
// events and batches to it, with two broker destinations, NATS JetStream on
// file storage and Redis Streams with appendfsync always, which run
// throughout. Every acknowledged event must be in both brokers.
func TestBrokers_KillUnderLoad(t *testing.T) {
	t.Parallel()
	began := time.Now()
	ns := startNATS(t)
	rs := startRedisAOF(t)
	data := t.TempDir()
	args := fanoutArgs(data, nil, append([]string{"--workers", strconv.Itoa(crashWorkers)}, fastRetries...)...)
	p := startFanout(t, args)
	createDestination(t, p.URL, "nats", map[string]any{"url": ns.url(), "subject": natsSubject, "stream": natsStream})
	createDestination(t, p.URL, "redis", map[string]any{"url": rs.url(), "stream": redisStream})

	l := newLoader(loadConfig{singles: 6, batchers: 2, minBatch: 2, maxBatch: 20, rate: 1000})
	t.Cleanup(l.stop)
	l.target(p.URL)
	l.start()
	var kills []kill
	for i := range 3 {
		before := l.accepted.Load()
		time.Sleep(500*time.Millisecond + rand.N(1000*time.Millisecond))
		if !l.waitAccepted(before+1, 30*time.Second) {
			t.Fatalf("run %d of fanout accepted no event within 30s", i+1)
		}
		k := kill{inflight: l.inflight.Load(), awaiting: l.awaiting.Load()}
		k.at = p.Kill(t)
		l.target("")
		k.restartAt = time.Now()
		p = startFanout(t, args)
		k.restartTook = time.Since(k.restartAt)
		l.target(p.URL)
		kills = append(kills, k)
	}
	time.Sleep(500 * time.Millisecond)
	l.stop()
	reqs, sent, unexpected := l.results()
	if len(unexpected) > 0 {
		t.Errorf("fanout gave answers it should not have:\n%s", strings.Join(unexpected, "\n"))
	}
	counts := checkFates(t, reqs, kills)
	ids := ackedIDs(reqs)
	if len(ids) < 500 {
		t.Fatalf("only %d events acknowledged: the load did not reach fanout (requests: %v)", len(ids), counts)
	}

	drainStart := time.Now()
	rc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", rs.port)})
	t.Cleanup(func() { _ = rc.Close() })
	readers := []brokerReader{&natsReader{js: ns.client(t)}, &redisReader{c: rc}}
	copies := []*brokerCopies{newBrokerCopies(), newBrokerCopies()}
	for i, r := range readers {
		waitInBroker(t, r, copies[i], ids, time.Minute)
	}
	drain := time.Since(drainStart)
	// Every call done, then the brokers hold exactly the events stored.
	rounds := stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, args) }, data, nil)
	storedEvents, storedDeliveries := checkAllDone(t, data)
	if storedDeliveries != 2*storedEvents {
		t.Errorf("the store holds %d done deliveries for %d events and 2 destinations", storedDeliveries, storedEvents)
	}
	var summary []string
	for i, r := range readers {
		if err := r.read(context.Background(), copies[i]); err != nil {
			t.Fatalf("%s: %v", r.name(), err)
		}
		dups := checkBrokerCopies(t, r.name(), copies[i], reqs, sent, storedEvents)
		summary = append(summary, fmt.Sprintf("%s %d events, %d duplicates", r.name(), len(copies[i].n), dups))
	}
	t.Logf("%d events acknowledged, %d stored; %s; requests: %v; drain %v (%d clean restarts); total %v",
		len(ids), storedEvents, strings.Join(summary, "; "), counts, drain.Round(time.Millisecond), rounds,
		time.Since(began).Round(time.Millisecond))
}

// TestBrokers_NATSRestart stops the NATS server in the middle of a load and
// starts it again: fanout keeps accepting, its deliveries fail and are
// retried, and resume once the server is back; nothing acknowledged is
// missing from the stream at the end.
func TestBrokers_NATSRestart(t *testing.T) {
	t.Parallel()
	began := time.Now()
	ns := startNATS(t)
	data := t.TempDir()
	args := fanoutArgs(data, nil, append([]string{"--workers", strconv.Itoa(crashWorkers)}, fastRetries...)...)
	p := startFanout(t, args)
	createDestination(t, p.URL, "nats", map[string]any{"url": ns.url(), "subject": natsSubject, "stream": natsStream})
	reader := &natsReader{js: ns.client(t)}
	copies := newBrokerCopies()

	l := newLoader(loadConfig{singles: 4, batchers: 1, minBatch: 2, maxBatch: 10, rate: 500})
	t.Cleanup(l.stop)
	l.target(p.URL)
	l.start()
	if !l.waitAccepted(200, 30*time.Second) {
		t.Fatal("fanout accepted fewer than 200 events within 30s")
	}
	before := metrics(t, p)
	ns.stop(t)
	down := time.Now()
	acceptedDown := l.accepted.Load()
	time.Sleep(2 * time.Second)
	during := metrics(t, p)
	acceptedDown = l.accepted.Load() - acceptedDown
	ns.start(t)
	up := time.Now()
	time.Sleep(time.Second)
	l.stop()
	reqs, sent, unexpected := l.results()
	if len(unexpected) > 0 {
		t.Errorf("fanout gave answers it should not have:\n%s", strings.Join(unexpected, "\n"))
	}
	counts := checkFates(t, reqs, nil)
	ids := ackedIDs(reqs)

	// While the server was down: events were still accepted, deliveries
	// failed, and were retried rather than given up on.
	retried := during[`fanout_attempts_total{outcome="retried"}`] - before[`fanout_attempts_total{outcome="retried"}`]
	failed := during[`fanout_attempts_total{outcome="failed"}`] - before[`fanout_attempts_total{outcome="failed"}`]
	if acceptedDown == 0 {
		t.Errorf("fanout accepted no event while NATS was down: ingest must not depend on a destination")
	}
	if retried == 0 {
		t.Errorf("no delivery attempt failed and was retried while NATS was down for 2s (attempts before %v, during %v)", before, during)
	}
	if failed != 0 {
		t.Errorf("%d deliveries failed for good while NATS was down: a broker that is down is a retryable failure", failed)
	}

	waitInBroker(t, reader, copies, ids, time.Minute)
	resumed := time.Since(up)
	rounds := stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, args) }, data, nil)
	storedEvents, _ := checkAllDone(t, data)
	if err := reader.read(context.Background(), copies); err != nil {
		t.Fatal(err)
	}
	dups := checkBrokerCopies(t, reader.name(), copies, reqs, sent, storedEvents)
	t.Logf("%d events acknowledged (%d while NATS was down for %v); %d attempts retried meanwhile; all in the stream %v after NATS came back; %d duplicates; requests: %v; %d clean restarts; total %v",
		len(ids), acceptedDown, up.Sub(down).Round(time.Millisecond), retried, resumed.Round(time.Millisecond),
		dups, counts, rounds, time.Since(began).Round(time.Millisecond))
}
