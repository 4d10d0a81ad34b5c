package crashtest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fast retries everywhere in the crash tests: the drain then ends in
// seconds, and a quiet second at the destinations (waitQuiet) proves that no
// retry is still due (retries are at most --retry-max + 100ms apart).
var fastRetries = []string{"--retry-initial", "20ms", "--retry-max", "200ms"}

// crashWorkers is --workers in the crash tests unless they say otherwise. It
// bounds the duplicates a kill may cause (see verifyCrash), so it is kept
// small enough for the bound to mean something and large enough to keep two
// destinations busy.
const crashWorkers = 16

// TestCrash_KillUnderLoad SIGKILLs fanout several times while clients post
// single events and batches, restarts it on the same data each time, and
// lets it drain to two healthy destinations.
func TestCrash_KillUnderLoad(t *testing.T) {
	runCrash(t, crashConfig{
		sinks: []behaviour{healthy, healthy},
		extra: fastRetries,
		load:  loadConfig{singles: 6, batchers: 2, minBatch: 2, maxBatch: 20, rate: 1500},
		kills: kills(5),
		upMin: 300 * time.Millisecond, upMax: 1500 * time.Millisecond,
	})
}

// TestCrash_KillUnderLoadFlakyDestination is the same with one destination
// that answers 503 to half the attempts: retries are in flight and waiting
// in the store at every kill, and must survive it.
func TestCrash_KillUnderLoadFlakyDestination(t *testing.T) {
	runCrash(t, crashConfig{
		sinks: []behaviour{flaky(0.5), healthy},
		extra: fastRetries,
		load:  loadConfig{singles: 6, batchers: 2, minBatch: 2, maxBatch: 20, rate: 1500},
		kills: kills(5),
		upMin: 300 * time.Millisecond, upMax: 1500 * time.Millisecond,
	})
}

// TestCrash_KillDuringBatches SIGKILLs fanout while a /v1/batch request is
// in flight: a batch whose client saw the request fail must be delivered
// whole or not at all.
func TestCrash_KillDuringBatches(t *testing.T) {
	fig := runCrash(t, crashConfig{
		sinks:         []behaviour{healthy, healthy},
		extra:         fastRetries,
		load:          loadConfig{batchers: 6, minBatch: 20, maxBatch: 150, rate: 2000},
		kills:         kills(8),
		upMin:         100 * time.Millisecond,
		upMax:         600 * time.Millisecond,
		killInRequest: true,
	})
	cut, stored, kills := 0, 0, 0
	for _, k := range fig.kills {
		cut += k.cutBatches
		stored += k.cutStored
		if k.cutBatches > 0 {
			kills++
		}
	}
	t.Logf("%d of %d kills cut a batch request: %d batches cut, %d of them stored (and delivered whole), %d not stored (and delivered not at all)",
		kills, len(fig.kills), cut, stored, cut-stored)
	if cut == 0 {
		// fanout may be fine, but the test did not prove what it says.
		t.Errorf("no kill cut a batch request: the test proved nothing about cut batches")
	}
}

// TestSoak is the long version: kills every few seconds for
// FANOUT_SOAK_DURATION (default 10m) under a steady mixed load, with one
// flaky destination. make soak runs it.
func TestSoak(t *testing.T) {
	if os.Getenv("FANOUT_SOAK") == "" {
		t.Skip("soak test: set FANOUT_SOAK=1 to run it (make soak), for FANOUT_SOAK_DURATION (default 10m)")
	}
	d := 10 * time.Minute
	if v := os.Getenv("FANOUT_SOAK_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("FANOUT_SOAK_DURATION=%q: %v", v, err)
		}
	}
	runCrash(t, crashConfig{
		sinks: []behaviour{healthy, flaky(0.2)},
		extra: fastRetries,
		// 1000 events/s is 2400 attempts/s with the flaky destination's
		// retries: 64 workers keep up with it, 16 would not.
		workers:       64,
		load:          loadConfig{singles: 4, batchers: 2, minBatch: 1, maxBatch: 50, rate: 1000},
		soak:          d,
		upMin:         time.Second,
		upMax:         8 * time.Second,
		killInRequest: true,
	})
}

// kills is n, or 2 with -short.
func kills(n int) int {
	if testing.Short() {
		return 2
	}
	return n
}

// crashConfig is one crash scenario.
type crashConfig struct {
	sinks   []behaviour
	workers int      // --workers, crashWorkers when 0
	extra   []string // fanout flags beyond fanoutArgs and --workers
	load    loadConfig
	kills   int // SIGKILLs, each followed by a restart on the same data
	// soak, when set, keeps killing until this much time has passed.
	soak time.Duration
	// Each run of fanout lasts a random time in [upMin, upMax) before its
	// kill (and at least until it accepted an event).
	upMin, upMax time.Duration
	// killInRequest waits, before each kill, until a request was sent whole
	// and not answered yet: fanout is storing it or answering it.
	killInRequest bool
}

// kill is one SIGKILL and the restart that followed it.
type kill struct {
	at          time.Time // the signal was sent
	restartAt   time.Time // the next fanout was started (it may deliver before it listens)
	restartTook time.Duration
	inflight    int64 // requests in flight when the signal was sent
	awaiting    int64 // of those, the ones sent whole (fanout had them)
	// Found by verifyCrash:
	duplicates int // deliveries made again because of this kill
	// lazyDuplicates, for a power cut, are those whose outcome was
	// stored by a lazy commit that the cut lost (see verifyCrash).
	lazyDuplicates int
	cutBatches     int // batches whose client saw the request fail at this kill
	cutStored      int // of those, the ones fanout had stored (and delivered whole)
}

// crashFigures are what a crash test measured.
type crashFigures struct {
	kills                  []kill
	acked, rejected        int // events
	unknown, unknownStored int // events whose client did not learn the outcome, and how many of them were stored
	requests               loadCounts
	deliveries, duplicates int
	drain, total           time.Duration
	restarts               int // clean restarts the drain needed to finish
}

// runCrash runs a crash scenario: load, kills and restarts, drain, clean
// shutdown, then every check of verifyCrash and of the store.
func runCrash(t *testing.T, cfg crashConfig) *crashFigures {
	t.Helper()
	if cfg.workers == 0 {
		cfg.workers = crashWorkers
	}
	began := time.Now()
	data := t.TempDir()
	sinks := make([]*sink, len(cfg.sinks))
	for i, b := range cfg.sinks {
		sinks[i] = newSink(t, b)
	}
	args := fanoutArgs(data, urlsOf(sinks, "/hook"),
		append([]string{"--workers", strconv.Itoa(cfg.workers)}, cfg.extra...)...)

	l := newLoader(cfg.load)
	t.Cleanup(l.stop) // on a failure; stopping twice is fine
	p := startFanout(t, args)
	l.target(p.URL)
	l.start()

	var kills []kill
	for i := 0; ; i++ {
		if (cfg.soak > 0 && time.Since(began) >= cfg.soak) || (cfg.soak == 0 && i >= cfg.kills) {
			break
		}
		// Let this run take some load, then kill it at a random moment.
		before := l.accepted.Load()
		time.Sleep(cfg.upMin + rand.N(cfg.upMax-cfg.upMin))
		if !l.waitAccepted(before+1, 30*time.Second) {
			t.Fatalf("run %d of fanout accepted no event within 30s", i+1)
		}
		if cfg.killInRequest {
			l.waitAwaiting(5 * time.Second)
		}
		k := kill{inflight: l.inflight.Load(), awaiting: l.awaiting.Load()}
		k.at = p.Kill(t)
		l.target("") // clients wait instead of hammering a closed port
		// Every request the dead process sent reaches its destination
		// before the next one starts: a delivery that arrives later was
		// sent by the next process (see verifyCrash, duplicates).
		waitSinksDrained(t, sinks, 10*time.Second)
		k.restartAt = time.Now()
		p = startFanout(t, args)
		k.restartTook = time.Since(k.restartAt)
		l.target(p.URL)
		kills = append(kills, k)
		if cfg.soak > 0 {
			t.Logf("kill %d at %v: %d requests in flight, %d events accepted so far, restarted in %v",
				len(kills), k.at.Sub(began).Round(time.Millisecond), k.inflight, l.accepted.Load(),
				k.restartTook.Round(time.Millisecond))
		}
	}
	time.Sleep(cfg.upMin) // the last run takes load too
	l.stop()

	// Drain: every acknowledged event reaches every destination, then
	// fanout runs until the store says that every call is done.
	drainStart := time.Now()
	reqs, sent, unexpected := l.results()
	ackedIDs := ackedIDs(reqs)
	for _, s := range sinks {
		s.waitDelivered(t, ackedIDs, 3*time.Minute+cfg.soak)
	}
	rounds := stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, args) }, data, sinks)
	drain := time.Since(drainStart)
	storedEvents, storedDeliveries := checkAllDone(t, data)

	if len(unexpected) > 0 {
		t.Errorf("fanout gave answers it should not have:\n%s", strings.Join(unexpected, "\n"))
	}
	counts := checkFates(t, reqs, kills)
	fig := verifyCrash(t, reqs, sent, sinks, kills, cfg.workers, 0, storedEvents, storedDeliveries)
	fig.requests = counts
	fig.drain, fig.total, fig.restarts = drain, time.Since(began), rounds
	fig.log(t)
	return fig
}

// checkFates counts the requests by fate and checks that each came about as
// it may: no client timed out (fanout answers in far less than 30s, or
// dies), no 202 lacked its ids and no status was unexpected; and a request
// got no answer (cut, connection refused) only when a kill came while it was
// in flight, between its start and the restart that followed.
func checkFates(t *testing.T, reqs []*request, kills []kill) loadCounts {
	t.Helper()
	c := countFates(reqs)
	for _, f := range []fate{fateTimeout, fateBad202, fateUnexpected} {
		if c[f] > 0 {
			t.Errorf("%d requests %s, want none (requests: %v)", c[f], f, c)
		}
	}
	errs := 0
	for _, r := range reqs {
		if r.fate != fateCut && r.fate != fateConnRefused {
			continue
		}
		if !slices.ContainsFunc(kills, func(k kill) bool { return r.start.Before(k.restartAt) && r.end.After(k.at) }) {
			if errs++; errs <= 10 {
				t.Errorf("a request started at %v failed at %v (%s: %s) with no kill while it was in flight",
					r.start.Format(time.StampMicro), r.end.Format(time.StampMicro), r.fate, r.err)
			}
		}
	}
	return c
}

// verifyCrash checks the promises against what the destinations got:
//
//   - every delivered body is, byte for byte, an event a client sent, and an
//     event (a key) was stored once, under one id;
//   - every acknowledged event reached every destination, under its id;
//   - no event of a refused request reached any;
//   - the events of a request whose outcome the client did not learn
//     reached each destination all of them, or none: a batch is atomic;
//   - the store's done calls are exactly the events the destinations got;
//   - duplicates have a kill between their two copies, and each kill
//     accounts for at most --workers of them, but for those whose first
//     copy arrived within lazy of it (a power cut: see below).
func verifyCrash(t *testing.T, reqs []*request, sent map[string][]byte, sinks []*sink, kills []kill, workers int,
	lazy time.Duration, storedEvents, storedDeliveries int64) *crashFigures {
	t.Helper()
	fig := &crashFigures{kills: kills}
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}

	idOfKey := map[string]string{}
	delivered := make([]map[string]bool, len(sinks)) // by sink: the keys it got
	snaps := make([]map[string]record, len(sinks))
	for i, s := range sinks {
		snaps[i] = s.snapshot()
		delivered[i] = map[string]bool{}
		for id, rec := range snaps[i] {
			if len(rec.deliveries) == 0 {
				continue
			}
			key := keyOf(rec.body)
			want, ok := sent[key]
			switch {
			case !ok:
				fail("destination %d got event %s, which no client sent: %q", i, id, rec.body)
				continue
			case !bytes.Equal(rec.body, want):
				fail("destination %d got event %s as %q, want the client's bytes %q", i, id, rec.body, want)
			case rec.differs != nil:
				fail("destination %d got event %s twice with different bytes: %q and %q", i, id, rec.body, rec.differs)
			}
			if other, ok := idOfKey[key]; ok && other != id {
				fail("event %s was stored twice, as %s and %s", key, other, id)
			}
			idOfKey[key] = id
			delivered[i][key] = true
			fig.deliveries += len(rec.deliveries)
		}
	}
	for i := range sinks {
		if got := int64(len(delivered[i])); got != storedEvents {
			fail("destination %d got %d distinct events; the store holds %d events, all done", i, got, storedEvents)
		}
	}
	if want := storedEvents * int64(len(sinks)); storedDeliveries != want {
		fail("the store holds %d done deliveries for %d events and %d destinations, want %d",
			storedDeliveries, storedEvents, len(sinks), want)
	}

	for _, r := range reqs {
		switch r.outcome {
		case acked:
			fig.acked += len(r.keys)
			for i, key := range r.keys {
				for s := range sinks {
					if !delivered[s][key] {
						fail("event %s (id %s) was acknowledged but never reached destination %d", key, r.ids[i], s)
					}
				}
				if got := idOfKey[key]; got != r.ids[i] {
					fail("event %s was acknowledged as %s but delivered as %s", key, r.ids[i], got)
				}
			}
		case rejected:
			fig.rejected += len(r.keys)
			for _, key := range r.keys {
				if id, ok := idOfKey[key]; ok {
					fail("event %s of a refused request (%d %s) was delivered as %s: a refusal stores nothing",
						key, r.status, r.err, id)
				}
			}
		case unknown:
			fig.unknown += len(r.keys)
			for s := range sinks {
				n := 0
				for _, key := range r.keys {
					if delivered[s][key] {
						n++
					}
				}
				if n != 0 && n != len(r.keys) {
					fail("destination %d got %d of the %d events of a request that failed (%s): a batch is all or nothing",
						s, n, len(r.keys), r.err)
				}
				if s == 0 {
					fig.unknownStored += n
				}
			}
			// The kill that cut it: the first after the request began.
			if r.batch {
				for k := range kills {
					if kills[k].at.After(r.start) {
						kills[k].cutBatches++
						if delivered[0][r.keys[0]] {
							kills[k].cutStored++
						}
						break
					}
				}
			}
		}
	}

	// Duplicates. A delivery is made again only when the attempt that made
	// it never recorded its outcome; with destinations that answer in
	// microseconds and a 10s delivery timeout, only a crash does that. The
	// first copy was then sent by a process that still held the delivery's
	// lease when it was killed, and a process holds at most --workers
	// leases (every call it runs, or has queued for its workers, takes a
	// worker slot: see dispatch's reserve). So each kill may cause at most
	// --workers duplicates, across all destinations, and each duplicate
	// has a kill between its two copies. A duplicate is charged to the
	// first restart after its first copy: runCrash starts the next fanout
	// only once the sinks have served every request the dead one sent
	// (waitSinksDrained), so a copy that arrived after a restart was sent
	// by a later process.
	//
	// A power cut (lazy > 0) may also lose the outcomes of deliveries that
	// had ended: a finish's commit is not fsynced by itself, and becomes
	// durable with the next fsync, at most 100ms later (dispatchsqlite's
	// lazy commits). A duplicate whose first copy arrived within lazy of
	// the cut is one of those, and is not charged to --workers; one from
	// earlier is, so that finishes never made durable still fail the test.
	for s := range sinks {
		for id, rec := range snaps[s] {
			for j := 1; j < len(rec.deliveries); j++ {
				fig.duplicates++
				first, again := rec.deliveries[j-1], rec.deliveries[j]
				k := slices.IndexFunc(kills, func(k kill) bool { return k.restartAt.After(first) })
				if k < 0 || !again.After(kills[k].at) {
					fail("destination %d got event %s again at %v after %v with no kill between",
						s, id, again.Format(time.StampMicro), first.Format(time.StampMicro))
					continue
				}
				if lazy > 0 && !first.Before(kills[k].at.Add(-lazy)) {
					kills[k].lazyDuplicates++
					continue
				}
				kills[k].duplicates++
			}
		}
	}
	for i, k := range kills {
		if k.duplicates > workers {
			fail("kill %d caused %d duplicate deliveries, more than the %d calls (--workers) a process can hold",
				i+1, k.duplicates, workers)
		}
	}
	if errs > 20 {
		t.Errorf("... and %d more failures", errs-20)
	}
	return fig
}

func (f *crashFigures) log(t *testing.T) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%d events acknowledged, %d refused (503 or connection refused), %d with an unknown outcome "+
		"(%d of them stored and delivered); %d deliveries, %d duplicates; drain %v (%d clean restarts); total %v\n",
		f.acked, f.rejected, f.unknown, f.unknownStored, f.deliveries, f.duplicates,
		f.drain.Round(time.Millisecond), f.restarts, f.total.Round(time.Millisecond))
	fmt.Fprintf(&b, "  requests: %v\n", f.requests)
	for i, k := range f.kills {
		fmt.Fprintf(&b, "  kill %d: %d requests in flight (%d sent whole), %d duplicates (+%d whose finish a power cut lost), %d batches cut (%d stored), restart took %v\n",
			i+1, k.inflight, k.awaiting, k.duplicates, k.lazyDuplicates, k.cutBatches, k.cutStored, k.restartTook.Round(time.Millisecond))
	}
	t.Log(b.String())
}
