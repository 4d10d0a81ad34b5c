package crashtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFault_ConcurrentBigBatches is the attack a security review made:
// many clients post the largest batch fanout takes at once, each refused
// only at its last element, while other clients post small events. Request
// bodies are held in memory while they are read and decoded, so without a
// bound across requests the process grew by every body at once (60 bodies
// of 16 MB took it from 82 MB to 1.29 GB). With --max-inflight-bytes, the
// growth of fanout's peak resident memory stays within that flag's value,
// every big request is answered (400 for its bad element, or 503 with
// Retry-After when it waited too long for its turn), and every small event
// is accepted meanwhile: they draw on a reserve of their own.
func TestFault_ConcurrentBigBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("sends about 1 GB over loopback")
	}
	const (
		inflight = 96 << 20 // --max-inflight-bytes
		bigs     = 60       // concurrent big batches
		smalls   = 1000     // small events from other clients
		clients  = 8        // clients posting the small events
	)
	args := fanoutArgs(t.TempDir(), nil, "--max-inflight-bytes", fmt.Sprint(inflight))
	p := startFanout(t, args)
	base := p.URL

	// The baseline: fanout after it has taken some small events, so that
	// the pools and caches that any use fills are in it.
	for range 100 {
		postEvent(t, base, `{"type":"warm.up","data":{"n":1}}`)
	}
	_, baseline := procCounters(t, p.Cmd.Process.Pid)

	body := bigBatch(t, 16_000_000)
	client := &http.Client{Timeout: 60 * time.Second}
	var (
		wg                 sync.WaitGroup
		refused, busy, bad atomic.Int64
		smallOK, smallBad  atomic.Int64
		firstErr           sync.Once
		errMsg             atomic.Value
	)
	fail := func(format string, a ...any) {
		firstErr.Do(func() { errMsg.Store(fmt.Sprintf(format, a...)) })
	}
	for range bigs {
		wg.Go(func() {
			resp, err := client.Post(base+"/v1/batch", "application/json", bytes.NewReader(body))
			if err != nil {
				bad.Add(1)
				fail("a big batch: %v", err)
				return
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusBadRequest && strings.Contains(string(msg), "must be a JSON object"):
				refused.Add(1)
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
				busy.Add(1)
			default:
				bad.Add(1)
				fail("a big batch: %d %s", resp.StatusCode, msg)
			}
		})
	}
	for c := range clients {
		wg.Go(func() {
			for i := range smalls / clients {
				ev := fmt.Sprintf(`{"type":"small","data":{"client":%d,"i":%d}}`, c, i)
				resp, err := client.Post(base+"/v1/event", "application/json", strings.NewReader(ev))
				if err != nil {
					smallBad.Add(1)
					fail("a small event: %v", err)
					continue
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					smallBad.Add(1)
					fail("a small event: %d %s", resp.StatusCode, msg)
					continue
				}
				smallOK.Add(1)
			}
		})
	}
	wg.Wait()
	_, peak := procCounters(t, p.Cmd.Process.Pid)
	t.Logf("big batches: %d refused at their bad element, %d told to come back (503); small events accepted: %d of %d; "+
		"peak RSS %d MiB, baseline %d MiB, --max-inflight-bytes %d MiB",
		refused.Load(), busy.Load(), smallOK.Load(), smalls, peak>>20, baseline>>20, inflight>>20)
	if m, _ := errMsg.Load().(string); m != "" {
		t.Errorf("first unexpected answer: %s", m)
	}
	if bad.Load() != 0 || refused.Load()+busy.Load() != bigs {
		t.Errorf("big batches: %d refused, %d 503, %d otherwise; want all %d refused (400) or told to retry (503)",
			refused.Load(), busy.Load(), bad.Load(), bigs)
	}
	if refused.Load() == 0 {
		t.Errorf("no big batch was read to its end: the bound lets none through")
	}
	if smallOK.Load() != smalls {
		t.Errorf("%d of %d small events accepted while the big batches waited, want all", smallOK.Load(), smalls)
	}
	if peak > baseline+inflight {
		t.Errorf("peak RSS %d MiB > baseline %d MiB + --max-inflight-bytes %d MiB: request bodies are not bounded across requests",
			peak>>20, baseline>>20, inflight>>20)
	}
	terminate(t, p, 30*time.Second)
}

// bigBatch returns a batch of about size bytes, under the default
// --max-batch-bytes and --max-batch-events, whose events are all valid but
// the last, which is not an object: fanout reads and decodes the whole body
// before it refuses it.
func bigBatch(t testing.TB, size int) []byte {
	t.Helper()
	const events = 9000
	pad := strings.Repeat("x", size/events-64)
	var b bytes.Buffer
	b.Grow(size + 1024)
	b.WriteByte('[')
	for i := range events {
		fmt.Fprintf(&b, `{"type":"big.batch","data":{"i":%d,"pad":"%s"}},`, i, pad)
	}
	b.WriteString("1]")
	if b.Len() > 16<<20 {
		t.Fatalf("the batch is %d bytes, over the default --max-batch-bytes", b.Len())
	}
	return b.Bytes()
}
