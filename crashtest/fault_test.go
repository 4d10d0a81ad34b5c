package crashtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/webhook"
)

// The fault tests run one fanout each against a destination that misbehaves
// in one way, and check the outcome README.md promises for it: retried and
// delivered, or failed for good and kept in the store as failed. They run in
// parallel: most of their time is spent waiting for a timeout or a retry.

// Retries in the fault tests come within about 100-200ms, so that a test can
// tell "retried" from "not retried" in a second.
var faultRetries = []string{"--retry-initial", "20ms", "--retry-max", "100ms"}

// deliveryOf stops fanout cleanly and returns, from its store, the
// handleEvent call of event id and its one delivery (publishEvent call).
//
// A delivery that just finished may leave its event's handleEvent queued to
// resume, and a clean stop hands queued calls back to the store: when the
// event is not final yet, deliveryOf starts fanout again with restart (if
// not nil) and stops it a moment later, a few times at most.
func deliveryOf(t *testing.T, p *fanoutProc, restart func() *fanoutProc, data, id string) (event, delivery *dispatch.Call) {
	t.Helper()
	for i := 0; ; i++ {
		terminate(t, p, time.Minute)
		st := openStore(t, data)
		event, children := eventCall(t, st, id)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if len(children) != 1 {
			t.Fatalf("event %s has %d deliveries in the store, want 1", id, len(children))
		}
		if event.State.Final() || restart == nil || i == 5 {
			return event, children[0]
		}
		left := int64(1) // the event
		if !children[0].State.Final() {
			left++
		}
		p = restart()
		waitFinished(t, p, left, 20*time.Second)
	}
}

// TestDeliver_ExactBytes: a destination receives the bytes the client sent,
// not a re-encoding of them (README.md, "Deliveries").
func TestDeliver_ExactBytes(t *testing.T) {
	t.Parallel()
	s := newSink(t, healthy)
	p := startFanout(t, fanoutArgs(t.TempDir(), []string{s.URL + "/hook"}, faultRetries...))
	tests := []struct {
		name, body string
		// trimmed marks a known difference: fanout keeps the JSON value,
		// not the whitespace around it (see docs/RELIABILITY.md).
		trimmed bool
	}{
		{name: "Escapes", body: `{"html":"<a href=\"x\">&amp;</a>","u":"\u00e9\u2028","raw":"é😀"}`},
		{name: "SpacingAndNumbers", body: "{ \"a\" :\t1.50e2 ,\n \"b\":[ 1,2 ], \"c\" : { } }"},
		{name: "DuplicateKeys", body: `{"a":1,"a":2}`},
		{name: "Deep", body: strings.Repeat(`{"a":`, 200) + "0" + strings.Repeat("}", 200)},
		{name: "OuterWhitespace", body: " \t{\"a\":1}\n", trimmed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := postEvent(t, p.URL, tc.body)
			s.waitDelivered(t, []string{id}, 20*time.Second)
			got := s.get(id).body
			switch {
			case string(got) == tc.body:
			case tc.trimmed && string(got) == strings.TrimSpace(tc.body):
				// The event is the JSON value: white space around it is
				// not part of it, as README.md says.
			default:
				t.Errorf("destination got %q, want the bytes sent, %q", got, tc.body)
			}
		})
	}
}

// TestFault_Retried: destinations that fail for a while in a way that is
// worth retrying. Each event is delivered, exactly once (the failed
// attempts were not 2xx), after the expected number of failed attempts.
func TestFault_Retried(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		extra []string
		// failures is how many attempts fail before the destination
		// takes the event.
		failures int
		fail     behaviour
		// minGap is the least time between the first two attempts.
		minGap time.Duration
	}{
		{
			name:     "ServerErrorThenOK",
			failures: 3,
			fail:     func(attempt) answer { return answer{Status: http.StatusInternalServerError} },
		},
		{
			// The destination hangs past --delivery-timeout: fanout gives
			// up on the attempt, closes the connection and retries.
			name:     "HangsPastDeliveryTimeout",
			extra:    []string{"--delivery-timeout", "300ms"},
			failures: 1,
			fail: func(a attempt) answer {
				select {
				case <-a.Req.Context().Done(): // fanout hung up
				case <-time.After(20 * time.Second):
				}
				// Too late: nobody reads it. Not a 2xx, so that the sink
				// does not count it as a delivery.
				return answer{Status: http.StatusServiceUnavailable}
			},
			minGap: 300 * time.Millisecond,
		},
		{
			// The connection is dropped without an answer.
			name:     "ConnectionReset",
			failures: 2,
			fail: func(attempt) answer {
				panic(http.ErrAbortHandler) // net/http closes the connection
			},
		},
		{
			name:     "BadGatewayWithEndlessBody",
			failures: 1,
			fail:     func(attempt) answer { return answer{Status: http.StatusBadGateway, Write: endless(nil)} },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSink(t, func(a attempt) answer {
				if a.N <= tc.failures {
					return tc.fail(a)
				}
				return answer{Status: http.StatusNoContent}
			})
			data := t.TempDir()
			args := fanoutArgs(data, []string{s.URL + "/hook"}, append(faultRetries, tc.extra...)...)
			p := startFanout(t, args)
			id := postEvent(t, p.URL, `{"fault":"`+tc.name+`"}`)
			s.waitDelivered(t, []string{id}, 30*time.Second)
			rec := s.get(id)
			if got, want := len(rec.attempts), tc.failures+1; got != want {
				t.Errorf("%d attempts, want %d: %d failures, then the delivery", got, want, tc.failures)
			}
			if len(rec.deliveries) != 1 {
				t.Errorf("delivered %d times, want once", len(rec.deliveries))
			}
			if gap := rec.attempts[1].Sub(rec.attempts[0]); gap < tc.minGap {
				t.Errorf("second attempt %v after the first, want at least %v", gap, tc.minGap)
			}
			event, delivery := deliveryOf(t, p, func() *fanoutProc { return startFanout(t, args) }, data, id)
			if delivery.State != dispatch.StateDone || delivery.Failures != tc.failures || event.State != dispatch.StateDone {
				t.Errorf("in the store: delivery %v after %d failures, event %v; want done after %d failures, done",
					delivery.State, delivery.Failures, event.State, tc.failures)
			}
		})
	}
}

// endless writes a body until the reader goes away (or, if it never does,
// 1 GiB, so that a broken test still ends), counting the bytes written into
// n.
func endless(n *atomic.Int64) func(w http.ResponseWriter, r *http.Request) {
	chunk := bytes.Repeat([]byte("endless "), 4096)
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < (1<<30)/len(chunk); i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			if n != nil {
				n.Add(int64(len(chunk)))
			}
		}
	}
}

// TestFault_ResponseBody: what a destination answers after its status line
// is read only up to webhook.DefaultMaxResponseBytes (64 KiB) and never
// changes the outcome: a 200 with an endless or a huge body is delivered, at
// the first attempt, and fanout neither reads on nor keeps it in memory. (A
// 502 with an endless body is in TestFault_Retried.)
//
// What the destination manages to write proves nothing: the kernel buffers
// megabytes of it on loopback (tcp_rmem allows 32 MiB here). So the test
// reads fanout's own counters in /proc: rchar, every byte its read calls
// returned (sockets and files), across one delivery, and its peak resident
// memory. The events go one at a time to one fanout, so that nothing else
// is read meanwhile but the event's request and the store's pages.
func TestFault_ResponseBody(t *testing.T) {
	t.Parallel()
	const (
		// readSlack is what else fanout may read during a delivery: the
		// POST of the event, the answer's head, the store's pages (about
		// 250 bytes here, as the Quiet case shows; a reload of the
		// destinations that falls in the window may read a few pages).
		readSlack = 32 << 10
		// memSlack is how much fanout's peak resident memory may grow over
		// a delivery: far less than the 32 MiB body.
		memSlack = 16 << 20
	)
	huge := bytes.Repeat([]byte("0123456789abcdef"), (32<<20)/16)
	written := make(chan error, 1) // the outcome of the destination's write
	report := func(err error) {
		select {
		case written <- err:
		default: // an attempt the test did not expect: the checks below say so
		}
	}
	s := newSink(t, func(a attempt) answer {
		var e struct{ Fault string }
		_ = json.Unmarshal(a.Body, &e)
		return answer{Status: http.StatusOK, Write: func(w http.ResponseWriter, r *http.Request) {
			switch e.Fault {
			case "EndlessOK":
				chunk := bytes.Repeat([]byte("endless "), 4096)
				for range (1 << 30) / len(chunk) { // 1 GiB: fanout read it all
					if _, err := w.Write(chunk); err != nil {
						report(err)
						return
					}
				}
				report(nil)
			case "HugeOK":
				_, err := w.Write(huge)
				report(err)
			default:
				report(nil)
			}
		}}
	})
	data := t.TempDir()
	args := fanoutArgs(data, []string{s.URL + "/hook"}, faultRetries...)
	p := startFanout(t, args)
	pid := p.Cmd.Process.Pid

	var ids []string
	for _, tc := range []struct {
		name string
		cut  bool // the body outgrows what fanout reads: the write must fail
	}{{"Quiet", false}, {"EndlessOK", true}, {"HugeOK", true}} {
		t.Run(tc.name, func(t *testing.T) {
			read0, peak0 := procCounters(t, pid)
			id := postEvent(t, p.URL, `{"fault":"`+tc.name+`"}`)
			ids = append(ids, id)
			s.waitDelivered(t, []string{id}, 30*time.Second)
			var werr error
			select {
			case werr = <-written:
			case <-time.After(30 * time.Second):
				t.Fatal("the destination was still writing its answer 30s later")
			}
			read1, peak1 := procCounters(t, pid)
			read, grew := read1-read0, peak1-peak0
			t.Logf("fanout read %d bytes during the delivery; its peak memory grew by %d KiB; the destination's write: %v",
				read, grew>>10, werr)
			if tc.cut && werr == nil {
				t.Errorf("the destination wrote its whole answer: fanout read it all")
			}
			if read > webhook.DefaultMaxResponseBytes+readSlack {
				t.Errorf("fanout read %d bytes during one delivery, want at most %d (the answer's limit) + %d: the read is not bounded",
					read, webhook.DefaultMaxResponseBytes, readSlack)
			}
			if grew > memSlack {
				t.Errorf("fanout's peak resident memory grew by %d MiB during one delivery, want at most %d MiB",
					grew>>20, memSlack>>20)
			}
		})
	}

	stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, args) }, data, []*sink{s})
	st := openStore(t, data)
	for _, id := range ids {
		event, deliveries := eventCall(t, st, id)
		if n := len(s.get(id).attempts); n != 1 || len(deliveries) != 1 ||
			deliveries[0].State != dispatch.StateDone || event.State != dispatch.StateDone {
			t.Errorf("event %s: %d attempts, %d deliveries, event %v; want one attempt, one delivery done, event done",
				id, n, len(deliveries), event.State)
		}
	}
}

// procCounters returns, from /proc, the bytes a process's read calls have
// returned (rchar: sockets and files alike) and its peak resident memory
// (VmHWM), in bytes.
func procCounters(t *testing.T, pid int) (read, peak int64) {
	t.Helper()
	field := func(file, name string) int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
		if err != nil {
			t.Fatalf("read fanout's counters: %v", err)
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				f := strings.Fields(v)
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					t.Fatalf("/proc/%d/%s: %q: %v", pid, file, line, err)
				}
				if len(f) > 1 && f[1] == "kB" {
					n <<= 10
				}
				return n
			}
		}
		t.Fatalf("/proc/%d/%s has no %s", pid, file, name)
		return 0
	}
	return field("io", "rchar"), field("status", "VmHWM")
}

// TestFault_RetryAfter: a throttled destination's Retry-After is honoured:
// the next attempt comes no sooner, although --retry-initial alone would
// retry within about 120ms; and no later than --retry-max allows, whatever
// the header asks for. fanout waits exactly the delay it read (no jitter on
// a hint), so the second attempt comes within retrySlack of it: the time to
// record the failure, wake up and connect again (about 3ms here).
func TestFault_RetryAfter(t *testing.T) {
	t.Parallel()
	const retrySlack = 750 * time.Millisecond
	tests := []struct {
		name       string
		status     int
		retryAfter func() string
		retryMax   string
		// The delay fanout should wait: at least minGap, at most maxGap.
		minGap, maxGap time.Duration
	}{
		{"Seconds", http.StatusTooManyRequests, func() string { return "1" }, "30s", time.Second, time.Second},
		{"HTTPDate", http.StatusServiceUnavailable, func() string {
			// Whole seconds: the delay fanout reads is between 1s and 2s.
			return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat)
		}, "30s", time.Second, 2 * time.Second},
		// An hour is cut to --retry-max: the event is delivered a second
		// later, not an hour or even two seconds later.
		{"CappedAtRetryMax", http.StatusTooManyRequests, func() string { return "3600" }, "1s", time.Second, time.Second},
		{"HTTPDateCappedAtRetryMax", http.StatusServiceUnavailable, func() string {
			return time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
		}, "1s", time.Second, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSink(t, func(a attempt) answer {
				if a.N == 1 {
					return answer{Status: tc.status, Header: map[string]string{"Retry-After": tc.retryAfter()}}
				}
				return answer{Status: http.StatusNoContent}
			})
			data := t.TempDir()
			p := startFanout(t, fanoutArgs(data, []string{s.URL + "/hook"},
				"--retry-initial", "20ms", "--retry-max", tc.retryMax))
			id := postEvent(t, p.URL, `{"fault":"`+tc.name+`"}`)
			s.waitDelivered(t, []string{id}, 20*time.Second)
			rec := s.get(id)
			gap := rec.attempts[1].Sub(rec.attempts[0])
			switch {
			case gap < tc.minGap:
				t.Errorf("second attempt %v after the first, want at least %v (Retry-After)", gap, tc.minGap)
			case gap > tc.maxGap+retrySlack:
				t.Errorf("second attempt %v after the first, want at most %v (the delay, capped at --retry-max %s) + %v",
					gap, tc.maxGap, tc.retryMax, retrySlack)
			default:
				t.Logf("second attempt %v after the first", gap.Round(time.Millisecond))
			}
			if len(rec.attempts) != 2 {
				t.Errorf("%d attempts, want 2", len(rec.attempts))
			}
		})
	}
}

// TestFault_Permanent: answers that retrying cannot change end the delivery
// at once: one attempt, no retry, and the store keeps the delivery and its
// event as failed. A redirect is not followed.
func TestFault_Permanent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		status   int
		redirect bool
	}{
		{"Gone", http.StatusGone, false},
		{"BadRequest", http.StatusBadRequest, false},
		{"Found", http.StatusFound, true},
		{"PermanentRedirect", http.StatusPermanentRedirect, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			elsewhere := newSink(t, healthy)
			s := newSink(t, func(a attempt) answer {
				h := map[string]string{}
				if tc.redirect {
					h["Location"] = elsewhere.URL + "/moved"
				}
				return answer{Status: tc.status, Header: h}
			})
			data := t.TempDir()
			p := startFanout(t, fanoutArgs(data, []string{s.URL + "/hook"}, faultRetries...))
			id := postEvent(t, p.URL, `{"fault":"`+tc.name+`"}`)
			// The event fails once its delivery has: handleEvent logs it.
			p.WaitLog(t, 20*time.Second, `msg="call attempt failed"`, "function=handleEvent", "call="+id, "retry=false")
			time.Sleep(500 * time.Millisecond) // time for a retry that must not come
			if n := len(s.get(id).attempts); n != 1 {
				t.Errorf("%d attempts, want 1: a %d is not retried", n, tc.status)
			}
			if n := elsewhere.attempts.Load(); n != 0 {
				t.Errorf("the redirect's target got %d requests: redirects must not be followed", n)
			}
			event, delivery := deliveryOf(t, p, nil, data, id) // final: handleEvent said so
			if delivery.State != dispatch.StateFailed || delivery.Status != dispatch.StatusPermanent ||
				!strings.Contains(delivery.Error, fmt.Sprint(tc.status)) {
				t.Errorf("delivery in the store: %v, %v, %q; want failed, permanent, naming the status %d",
					delivery.State, delivery.Status, delivery.Error, tc.status)
			}
			if event.State != dispatch.StateFailed {
				t.Errorf("event in the store: %v, want failed (its delivery failed)", event.State)
			}
		})
	}
}

// TestFault_DestinationRefuses: nothing listens at the destination's
// address; attempts fail with a TCP error and are retried, and the event is
// delivered once something listens there.
func TestFault_DestinationRefuses(t *testing.T) {
	t.Parallel()
	// A port that refuses: listen, note the address, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	data := t.TempDir()
	args := fanoutArgs(data, []string{"http://" + addr + "/hook"}, append([]string{"--log-level", "debug"}, faultRetries...)...)
	p := startFanout(t, args)
	id := postEvent(t, p.URL, `{"fault":"refused"}`)
	deadline := time.Now().Add(20 * time.Second)
	for p.Logs.Count(`msg="call attempt failed"`, "function=publishEvent", `status="tcp error"`, "retry=true") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("fanout did not retry the refused delivery 3 times within 20s:\n%s", p.Logs.Tail(20))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Skipf("cannot listen on %s again (taken meanwhile?): %v", addr, err)
	}
	s := newSinkOn(t, ln, healthy)
	s.waitDelivered(t, []string{id}, 20*time.Second)
	restart := func() *fanoutProc { return startFanout(t, args) }
	if _, delivery := deliveryOf(t, p, restart, data, id); delivery.State != dispatch.StateDone || delivery.Failures < 3 {
		t.Errorf("delivery in the store: %v after %d failures, want done after at least 3", delivery.State, delivery.Failures)
	}
}

// TestFault_DNSFailure: the destination's host does not resolve. Attempts
// are retried until --retry-max-attempts is spent, then the delivery is
// failed. fanout runs in a mount namespace of its own, with a resolv.conf
// that names 127.0.0.1, where no DNS server listens, so that its lookups of
// the .invalid host stay on loopback like all the tests' traffic. Without
// root (unshare, mount) the test is skipped; webhook's TestSend_DNSFailure
// still covers the classification.
func TestFault_DNSFailure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// sh -c SCRIPT sh RESOLV BIN ARGS...: bind the file, then become fanout
	// (exec keeps the pid, so that signals reach fanout itself).
	wrap := func(args ...string) *exec.Cmd {
		return exec.Command("unshare", append([]string{"--mount", "--", "sh", "-c",
			`mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`, "sh", resolv}, args...)...)
	}
	if out, err := wrap("true").CombinedOutput(); err != nil {
		t.Skipf("cannot give fanout a resolv.conf of its own (needs root, unshare and mount): %v %s", err, out)
	}

	data := filepath.Join(dir, "data")
	args := fanoutArgs(data, []string{"http://fanout-crashtest.invalid/hook"},
		append([]string{"--log-level", "debug", "--retry-max-attempts", "3"}, faultRetries...)...)
	p := launch(t, wrap(append([]string{fanoutBin}, args...)...))
	p.WaitListening(t, 30*time.Second)
	id := postEvent(t, p.URL, `{"fault":"dns"}`)
	p.WaitLog(t, 30*time.Second, `msg="call attempt failed"`, "function=handleEvent", "call="+id, "retry=false")
	if n := p.Logs.Count(`msg="call attempt failed"`, "function=publishEvent", `status="dns error"`); n != 3 {
		t.Errorf("%d failed attempts with a DNS error, want 3 (--retry-max-attempts)", n)
	}
	_, delivery := deliveryOf(t, p, nil, data, id) // final: handleEvent said so
	if delivery.State != dispatch.StateFailed || delivery.Status != dispatch.StatusDNS || delivery.Attempt != 3 ||
		!strings.Contains(delivery.Error, "gave up after 3 attempts") {
		t.Errorf("delivery in the store: %v, %v, attempt %d, %q; want failed, dns error, 3 attempts, gave up",
			delivery.State, delivery.Status, delivery.Attempt, delivery.Error)
	}
}

// TestStart_UnusableDataDir: a data directory fanout cannot write, or a full
// disk, stops it at start with a message that names --data and the reason,
// and exit status 1; never a panic. The tests run as root, who writes
// through permission bits: the cases use what root cannot write either.
func TestStart_UnusableDataDir(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   func(t *testing.T) string // returns --data
		wantErr string
	}{
		{
			name: "UnderARegularFile",
			setup: func(t *testing.T) string {
				f := filepath.Join(t.TempDir(), "file")
				if err := os.WriteFile(f, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(f, "data")
			},
			wantErr: "not a directory",
		},
		{
			name: "ReadOnly",
			setup: func(t *testing.T) string {
				dir := t.TempDir()
				// Immutable: not even root may create a file in it.
				if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
					t.Skipf("chattr +i is not available here (%v %s): no directory that root cannot write", err, out)
				}
				t.Cleanup(func() { _ = exec.Command("chattr", "-i", dir).Run() })
				return dir
			},
			wantErr: "operation not permitted",
		},
		{
			name: "DiskFull",
			setup: func(t *testing.T) string {
				dir := mountTmpfs(t, "64k")
				fill(t, dir)
				return dir
			},
			wantErr: "disk is full",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := tc.setup(t)
			p := launch(t, exec.Command(fanoutBin, fanoutArgs(data, nil)...))
			st := p.WaitExit(t, 30*time.Second)
			out := p.Logs.All()
			if st.ExitCode() != 1 {
				t.Errorf("exit status %d, want 1", st.ExitCode())
			}
			want := "fanout: open the store in " + data + " (--data): "
			if !strings.Contains(out, want) || !strings.Contains(out, tc.wantErr) {
				t.Errorf("output %q, want it to say %q and %q", out, want, tc.wantErr)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("fanout panicked:\n%s", out)
			}
		})
	}
}

// TestFault_DiskFullWhileRunning: when the disk fills up under fanout,
// ingest answers 503 with Retry-After and stores nothing; once there is room
// again it accepts events again, and every accepted event is delivered.
// (TestHandlers_StorageFailure in the root package checks the same contract
// with a store that fails on purpose.)
func TestFault_DiskFullWhileRunning(t *testing.T) {
	t.Parallel()
	data := mountTmpfs(t, "16m")
	s := newSink(t, healthy)
	args := fanoutArgs(data, []string{s.URL + "/hook"}, faultRetries...)
	p := startFanout(t, args)
	accepted := []string{postEvent(t, p.URL, `{"disk":"before"}`)}
	s.waitDelivered(t, accepted, 20*time.Second)

	filler := fill(t, data)
	pad := strings.Repeat("x", 8<<10)
	refused := map[int]bool{}
	for b := 0; len(refused) == 0; b++ {
		if b == 200 {
			t.Fatalf("200 batches of 256 KiB into a full 16 MiB disk, and none was refused")
		}
		events := make([]string, 32)
		for i := range events {
			events[i] = fmt.Sprintf(`{"disk":"full","b":%d,"pad":"%s"}`, b, pad)
		}
		resp, err := apiClient.Post(p.URL+"/v1/batch", "application/json", strings.NewReader("["+strings.Join(events, ",")+"]"))
		if err != nil {
			t.Fatalf("POST /v1/batch on a full disk: %v (fanout should answer, not fail)", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			refused[b] = true
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "nothing was stored") {
				t.Errorf("503 with Retry-After %q and body %s, want a Retry-After and 'nothing was stored'",
					resp.Header.Get("Retry-After"), body)
			}
		case http.StatusAccepted:
			// SQLite had free pages left: the disk is not full for it yet.
			var out struct{ IDs []string }
			if err := json.Unmarshal(body, &out); err != nil || len(out.IDs) != len(events) {
				t.Fatalf("202 without the ids: %s", body)
			}
			accepted = append(accepted, out.IDs...)
		default:
			t.Fatalf("POST /v1/batch on a full disk: %d %s, want 202 or 503", resp.StatusCode, body)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := apiClient.Post(p.URL+"/v1/event", "application/json", strings.NewReader(`{"disk":"after"}`))
		if err != nil {
			t.Fatalf("POST /v1/event after freeing the disk: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			var out struct{ ID string }
			if err := json.Unmarshal(body, &out); err != nil || out.ID == "" {
				t.Fatalf("202 without an id: %s", body)
			}
			accepted = append(accepted, out.ID)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ingest did not recover within 20s of freeing the disk: %d %s", resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitDelivered(t, accepted, 20*time.Second)
	stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, args) }, data, []*sink{s})
	if events, _ := checkAllDone(t, data); events != int64(len(accepted)) {
		t.Errorf("the store holds %d events, want the %d accepted", events, len(accepted))
	}
	for id, rec := range s.snapshot() {
		var e struct{ B *int }
		if json.Unmarshal(rec.body, &e) == nil && e.B != nil && refused[*e.B] {
			t.Errorf("event %s of batch %d was delivered, but the batch was refused with 503", id, *e.B)
		}
	}
}

// mountTmpfs mounts a tmpfs of size on a new directory, or skips the test
// where that is not allowed (it needs root).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a %s tmpfs for a small disk (needs root): %v %s", size, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file in dir until the disk is full, and returns its name.
func fill(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range 1 << 20 { // at most 4 GiB: the tmpfs is far smaller
		if _, err := f.Write(chunk); err != nil {
			return name // full
		}
	}
	t.Fatalf("wrote 4 GiB into %s without filling it", dir)
	return ""
}
