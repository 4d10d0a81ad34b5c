package crashtest

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/internal/proctest"
)

// TestMigration_PayloadOnce starts from a store written by the fanout of the
// commit before migration 004 (built from git history), in which every
// delivery carries a copy of its event, and checks that today's fanout
// migrates it: every delivery's stored input loses its copy, the deliveries
// that were still to make are made with the event's exact bytes and its
// id, and the event reads back through the API, its deliveries as they were
// (migrations and upgrades since included). It skips when the history
// is not there (a shallow clone, no git).
func TestMigration_PayloadOnce(t *testing.T) {
	oldBin := buildBeforePayloadOnce(t)
	data := t.TempDir()

	// The old fanout: one destination takes everything, the other answers
	// 503 for now, so that its deliveries wait in the store (as retries)
	// when the new fanout opens it.
	var ready atomic.Bool
	good := newSink(t, healthy)
	late := newSink(t, func(attempt) answer {
		if ready.Load() {
			return answer{Status: http.StatusNoContent}
		}
		return answer{Status: http.StatusServiceUnavailable}
	})
	dests := []string{good.URL + "/a", late.URL + "/b"}
	old := launch(t, exec.Command(oldBin, fanoutArgs(data, dests, "--retry-initial", "50ms", "--retry-max", "200ms")...))
	old.WaitListening(t, 30*time.Second)
	bodies := map[string][]byte{}
	var ids []string
	for i := range 20 {
		b := eventBody(fmt.Sprintf("m%d", i), i)
		id := postEvent(t, old.URL, string(b))
		bodies[id] = b
		ids = append(ids, id)
	}
	good.waitDelivered(t, ids, 30*time.Second)
	// What the old fanout says of the deliveries it made, to compare with
	// what today's says of them after the migrations and upgrades.
	// (A destination has a delivery a moment before the store has it done.)
	before := map[string]map[string]any{}
	for deadline := time.Now().Add(10 * time.Second); len(before) < len(ids); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the old fanout shows %d deliveries delivered, want at least %d", len(before), len(ids))
		}
		clear(before)
		for _, id := range ids {
			for _, d := range deliveryViews(t, old.URL, id) {
				if d["state"] == "delivered" {
					before[d["id"].(string)] = d
				}
			}
		}
	}
	terminate(t, old, time.Minute)

	copies := deliveriesWithCopies(t, data)
	if copies != 2*len(ids) {
		t.Fatalf("the old fanout stored %d deliveries with a copy of their event, want %d: is it the schema before 004?", copies, 2*len(ids))
	}

	// Today's fanout migrates the store as it opens it.
	ready.Store(true)
	p := startFanout(t, fanoutArgs(data, dests, "--retry-initial", "50ms", "--retry-max", "200ms"))
	// fanout rewrites the stored deliveries itself, in the background
	// (upgrade.go): the store's migration 004 only drops an index now.
	p.WaitLog(t, 30*time.Second, "deliveries no longer carry a copy of their event", "rewritten=")
	for _, id := range ids {
		for _, d := range deliveryViews(t, p.URL, id) {
			if was, ok := before[d["id"].(string)]; ok {
				for k, v := range was {
					if !reflect.DeepEqual(d[k], v) {
						t.Fatalf("delivery %s: %s is %v, was %v before the migration (%v, was %v)", d["id"], k, d[k], v, d, was)
					}
				}
			}
		}
	}
	late.waitDelivered(t, ids, 30*time.Second)
	for _, id := range ids {
		for _, s := range []*sink{good, late} {
			if got := s.get(id).body; !bytes.Equal(got, bodies[id]) {
				t.Fatalf("event %s reached %s as %q, want the client's bytes %q", id, s.URL, got, bodies[id])
			}
		}
		view := getEvent(t, p.URL, id)
		if !sameJSON(view.Event, bodies[id]) || len(view.Deliveries) != 2 {
			t.Fatalf("GET /v1/events/%s = %s with %d deliveries, want the event's bytes and 2", id, view.Event, len(view.Deliveries))
		}
	}
	stopWhenDone(t, p, func() *fanoutProc { return startFanout(t, fanoutArgs(data, dests)) }, data, []*sink{good, late})
	if n := deliveriesWithCopies(t, data); n != 0 {
		t.Fatalf("after the migration %d deliveries still carry a copy of their event, want 0", n)
	}
	if idx := sqliteIndexes(t, data); strings.Contains(idx, "calls_children") {
		t.Fatalf("the migrated store still has the index calls_children: %s", idx)
	}
}

// buildBeforePayloadOnce builds fanout as it was before migration 004: at
// the parent of the commit that added it, or at HEAD while it is not
// committed yet. It skips the test when git or the history is missing.
func buildBeforePayloadOnce(t *testing.T) string {
	t.Helper()
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", append([]string{"-C", ".."}, args...)...).Output()
		return strings.TrimSpace(string(out)), err
	}
	if _, err := git("rev-parse", "HEAD"); err != nil {
		t.Skipf("no git history to build the fanout before migration 004 from: %v", err)
	}
	rev := "HEAD"
	added, err := git("log", "--diff-filter=A", "--format=%H", "--", "dispatch/dispatchsqlite/migration/004_payload_once.up.sql")
	if err != nil {
		t.Skipf("git log: %v", err)
	}
	if lines := strings.Fields(added); len(lines) > 0 {
		rev = lines[len(lines)-1] + "^"
	}
	if _, err := git("rev-parse", "--verify", "--quiet", rev+"^{commit}"); err != nil {
		t.Skipf("commit %s is not in this clone (shallow?): %v", rev, err)
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", "..", "archive", "--format=tar", rev)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		t.Skipf("tar: %v", err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v", rev, err)
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("tar: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "dispatch/dispatchsqlite/migration/004_payload_once.up.sql")); err == nil {
		t.Fatalf("the source at %s already has migration 004", rev)
	}
	bin, remove, err := proctest.Build(src)
	if err != nil {
		t.Fatalf("build fanout at %s: %v", rev, err)
	}
	t.Cleanup(remove)
	t.Logf("the store is written by fanout at %s", rev)
	return bin
}

// deliveriesWithCopies counts the publishEvent calls in fanout's store whose
// input carries an event.
func deliveriesWithCopies(t testing.TB, data string) int {
	t.Helper()
	var n int
	query(t, data, `SELECT count(*) FROM calls WHERE function = 'publishEvent' AND instr(CAST(input AS TEXT), '"event":') > 0`, &n)
	return n
}

func sqliteIndexes(t testing.TB, data string) string {
	t.Helper()
	var names string
	query(t, data, `SELECT group_concat(name, ' ') FROM sqlite_schema WHERE type = 'index'`, &names)
	return names
}

// query reads one row of fanout's database (fanout is stopped) straight
// through the SQLite driver, read-only: dispatchsqlite.Open would migrate
// it.
func query(t testing.TB, data, q string, dest ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(data, "fanout.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow(q).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// deliveryViews returns the deliveries of an event as the API shows them.
func deliveryViews(t testing.TB, base, id string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, raw := range getEvent(t, base, id).Deliveries {
		var d map[string]any
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("delivery of %s: %v: %s", id, err, raw)
		}
		out = append(out, d)
	}
	return out
}

type eventViewT struct {
	Event      json.RawMessage   `json:"event"`
	Deliveries []json.RawMessage `json:"deliveries"`
}

func getEvent(t testing.TB, base, id string) eventViewT {
	t.Helper()
	resp, err := apiClient.Get(base + "/v1/events/" + id)
	if err != nil {
		t.Fatalf("GET /v1/events/%s: %v", id, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v eventViewT
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &v) != nil {
		t.Fatalf("GET /v1/events/%s: %d %s", id, resp.StatusCode, b)
	}
	return v
}

// sameJSON reports whether a and b are the same JSON value (the API
// re-encodes an event in its answer).
func sameJSON(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}
