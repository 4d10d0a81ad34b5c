package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/internal/mototest"
	"fanout/internal/rabbittest"
	"fanout/internal/service"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any leaves a goroutine behind: run
// must stop everything it started. The exceptions are the cleaners of
// fasthttp's client (webhook's direct deliveries): they sleep, and end on
// their own once their host has no connection left, which Close ensures;
// fasthttp has no way to stop them sooner. The broker servers the tests
// share (moto_server, RabbitMQ: slow to start, so one per run, started by
// the first test that needs one) stop after the tests.
func TestMain(m *testing.M) {
	transform.WorkerMain() // transformations run in this binary, started again
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*Client).mCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		// The Pub/Sub client's opencensus starts its worker when the
		// package loads, and never stops it.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.Cleanup(func(code int) {
			mototest.Stop()
			rabbittest.Stop()
			os.Exit(code)
		}))
}

// startRun starts run() on a free loopback port, with the SSRF guard letting
// loopback destinations through, and returns its base URL and a function
// that stops it and returns run's error.
func startRun(t testing.TB, args []string, env map[string]string) (string, func() error) {
	t.Helper()
	return startRunArgs(t, append([]string{"--addr", "127.0.0.1:0", "--allow-network", "127.0.0.0/8"}, args...), env)
}

// startRunArgs is startRun with exactly these arguments.
func startRunArgs(t testing.TB, args []string, env map[string]string) (string, func() error) {
	t.Helper()
	base, stop, _ := startRunLogs(t, args, env)
	return base, stop
}

// startRunLogs is startRunArgs that also returns what run has logged so far.
func startRunLogs(t testing.TB, args []string, env map[string]string) (string, func() error, func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var logs bytes.Buffer
	var logsMu sync.Mutex
	done := make(chan error, 1)
	go func() {
		err := Main(ctx, args, func(k string) string { return env[k] }, io.Discard, pw)
		pw.Close()
		done <- err
	}()
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`msg="fanout listening" addr=(\S+)`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logsMu.Lock()
			logs.WriteString(sc.Text() + "\n")
			logsMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	var stopOnce sync.Once
	var stopErr error
	stop := func() error {
		stopOnce.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				var dump strings.Builder
				_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
				stopErr = fmt.Errorf("run did not return within 30s of cancellation; goroutines:\n%s", dump.String())
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		_ = stop()
		if t.Failed() || os.Getenv("FANOUT_TEST_LOGS") != "" {
			logsMu.Lock()
			t.Logf("fanout logs:\n%s", logs.String())
			logsMu.Unlock()
		}
	})
	logged := func() string {
		logsMu.Lock()
		defer logsMu.Unlock()
		return logs.String()
	}
	select {
	case a := <-addr:
		return a, stop, logged
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening within 10s")
	}
	return "", nil, nil
}

func TestRun_EndToEnd(t *testing.T) {
	t.Parallel()
	good, flaky := newReceiver(t), newReceiver(t)
	flaky.fail.Store(true)
	base, stop := startRun(t, []string{
		"--data", t.TempDir(),
		"--destination", good.URL + "/hook",
		"--destination", flaky.URL + "/flaky",
		"--retry-initial", "20ms", "--retry-max", "100ms",
	}, nil)

	want := map[string]string{}
	for b := range 9 {
		var events []string
		for i := range 100 {
			events = append(events, fmt.Sprintf(`{"batch":%d, "i":%d, "pad":"%s"}`, b, i, strings.Repeat("x", i%7)))
		}
		code, body := post(t, base+"/v1/batch", "["+strings.Join(events, ",")+"]")
		if code != http.StatusAccepted {
			t.Fatalf("batch %d: %d %s", b, code, body)
		}
		var resp struct{ IDs []string }
		if err := json.Unmarshal(body, &resp); err != nil || len(resp.IDs) != 100 {
			t.Fatalf("batch %d: %s", b, body)
		}
		for i, id := range resp.IDs {
			want[id] = events[i]
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				event := fmt.Sprintf(`{"single":%d}`, g*10+i)
				code, body := post(t, base+"/v1/event", event)
				var resp struct{ ID string }
				if code != http.StatusAccepted || json.Unmarshal(body, &resp) != nil {
					t.Errorf("event: %d %s", code, body)
					return
				}
				mu.Lock()
				want[resp.ID] = event
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(want) != 1000 {
		t.Fatalf("%d distinct ids for 1000 events", len(want))
	}

	good.waitAll(t, want, 60*time.Second)
	// Let the flaky one fail for a while.
	eventually(t, "100 failed attempts at the flaky destination", 30*time.Second, func() bool { return flaky.failed.Load() >= 100 })
	flaky.fail.Store(false)
	flaky.waitAll(t, want, 60*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("flaky destination refused %d deliveries before it recovered", flaky.failed.Load())
}

// TestRun_ShutdownAndRestart stops the service while some deliveries are in
// flight and others wait for a retry: the ones in flight finish before run
// returns, the others are delivered by the next start, and nothing twice.
func TestRun_ShutdownAndRestart(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	dest := newReceiver(t)
	args := []string{"--data", data, "--destination", dest.URL, "--retry-initial", "50ms", "--retry-max", "100ms",
		"--shutdown-timeout", "5s"}
	base, stop := startRun(t, args, nil)
	send := func(n int, want map[string]string) {
		for i := range n {
			event := fmt.Sprintf(`{"n":%d}`, len(want)+i)
			code, body := post(t, base+"/v1/event", event)
			var resp struct{ ID string }
			if code != http.StatusAccepted || json.Unmarshal(body, &resp) != nil {
				t.Fatalf("%d %s", code, body)
			}
			want[resp.ID] = event
		}
	}
	retrying, inFlight := map[string]string{}, map[string]string{}
	dest.fail.Store(true)
	send(20, retrying)
	eventually(t, "each of the 20 refused once", 10*time.Second, func() bool { return dest.wasRefused(retrying) })
	dest.fail.Store(false)
	dest.delay.Store(int64(500 * time.Millisecond))
	dest.hold.Store(true) // the retries fail again; new events are slow
	send(5, inFlight)
	eventually(t, "the 5 new deliveries in flight", 10*time.Second, func() bool { return dest.hasBegun(inFlight) })
	began := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("shutdown took %v, over its 5s deadline", took)
	}
	for id := range inFlight {
		if _, ok := dest.has(id); !ok {
			t.Fatalf("delivery of %s was in flight at shutdown and did not finish", id)
		}
	}

	dest.hold.Store(false)
	dest.delay.Store(0)
	_, stop = startRun(t, args, nil)
	dest.waitAll(t, retrying, 30*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("second run: %v", err)
	}
	for id := range inFlight {
		if n := dest.deliveries(id); n != 1 {
			t.Fatalf("event %s delivered %d times, want once: it finished before the shutdown", id, n)
		}
	}
}

func TestRun_DataDirInUse(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	startRun(t, []string{"--data", data}, nil)
	err := Main(context.Background(), []string{"--addr", "127.0.0.1:0", "--data", data}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second run on the same data: %v, want an error saying it is in use", err)
	}
}

// TestRun_Isolation: a destination that hangs past the timeout holds at most
// its own concurrency, and a healthy one beside it gets its events about as
// fast as when it is alone: the same load is timed first with the healthy
// destination alone, then with the hanging one added.
func TestRun_Isolation(t *testing.T) {
	var inHang, peak atomic.Int32
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inHang.Add(1)
		defer inHang.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		_, _ = io.Copy(io.Discard, r.Body) // so that the server notices fanout hanging up
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer hang.Close()
	healthy := newReceiver(t)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--delivery-timeout", "300ms", "--workers", "32",
		"--retry-initial", "50ms", "--retry-max", "200ms"}, nil)
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": healthy.URL}, nil); code != 201 {
		t.Fatalf("create the healthy destination: %d", code)
	}
	// deliver posts 5 batches of 100 events and returns how long the
	// healthy destination took to have them all.
	deliver := func(phase int) time.Duration {
		want := map[string]string{}
		for b := range 5 {
			var events []string
			for i := range 100 {
				events = append(events, fmt.Sprintf(`{"phase":%d,"b":%d,"i":%d}`, phase, b, i))
			}
			var r struct{ IDs []string }
			if code := call(t, "POST", base+"/v1/batch", "["+strings.Join(events, ",")+"]", &r); code != 202 {
				t.Fatalf("batch: %d", code)
			}
			for i, id := range r.IDs {
				want[id] = events[i]
			}
		}
		start := time.Now()
		healthy.waitAll(t, want, 20*time.Second)
		return time.Since(start)
	}
	alone := deliver(0)
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": hang.URL, "max_concurrency": 4}, nil); code != 201 {
		t.Fatalf("create the hanging destination: %d", code)
	}
	beside := deliver(1)
	t.Logf("the healthy destination got 500 events in %v alone, in %v beside one that hangs (peak %d at once there)",
		alone, beside, peak.Load())
	switch p := peak.Load(); {
	case p == 0:
		t.Fatal("the hanging destination got no delivery: the test tests nothing")
	case p > 4:
		t.Fatalf("the hanging destination had %d deliveries at once, over its max_concurrency of 4", p)
	}
	// Generous, for a shared machine: without isolation the healthy
	// destination waits for timeouts (300 ms each) and takes many times
	// longer.
	if limit := 3*alone + time.Second; beside > limit {
		t.Fatalf("beside a hanging destination the healthy one took %v, over %v (3x alone + 1s)", beside, limit)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRun_CircuitBreaker pauses a destination whose deliveries keep failing,
// and resumes it by API.
func TestRun_CircuitBreaker(t *testing.T) {
	t.Parallel()
	down := newSignedReceiver(t)
	down.status.Store(http.StatusServiceUnavailable)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--breaker-failures", "5", "--breaker-window", "0s",
		"--breaker-cooldown", "1h", "--retry-initial", "10ms", "--retry-max", "20ms"}, nil)
	var d destination.Destination
	call(t, "POST", base+"/v1/destinations", map[string]any{"url": down.URL}, &d)
	down.setSecret(t, d.Secret)
	var r struct{ ID string }
	call(t, "POST", base+"/v1/event", `{"n":1}`, &r)
	eventually(t, "the breaker pauses the destination", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/destinations/"+d.ID, nil, &d)
		return d.CircuitOpenUntil != nil && strings.Contains(d.Reason, "circuit breaker")
	})
	var ev service.EventView
	call(t, "GET", base+"/v1/events/"+r.ID, nil, &ev)
	if len(ev.Deliveries) != 1 || ev.Deliveries[0].State == "failed" {
		t.Fatalf("delivery %+v, want it kept while the destination is paused", ev.Deliveries)
	}
	down.status.Store(0)
	var resumed destination.Destination
	call(t, "POST", base+"/v1/destinations/"+d.ID+"/resume", nil, &resumed)
	if resumed.CircuitOpenUntil != nil || resumed.Reason != "" || resumed.Version != d.Version+1 {
		t.Fatalf("resumed destination %+v", resumed)
	}
	eventually(t, "delivery after resume", 10*time.Second, func() bool { return down.has(r.ID) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
