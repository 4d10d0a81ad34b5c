package app

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRun_Demo: --demo, as a newcomer runs it (no --allow-network): the
// demonstration destination receives an event, checks its signature and
// logs it, and keeps its id across restarts though its port changes.
func TestRun_Demo(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	for run := range 2 {
		base, stop, logs := startRunLogs(t, []string{"--addr", "127.0.0.1:0", "--data", data, "--demo"}, nil)
		var ev struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", fmt.Sprintf(`{"type":"demo","run":%d}`, run), &ev); code != 202 {
			t.Fatalf("run %d: ingest %d", run, code)
		}
		eventually(t, "the demo destination logs the event", 10*time.Second, func() bool {
			for _, line := range strings.Split(logs(), "\n") {
				if strings.Contains(line, "demo destination received an event") && strings.Contains(line, ev.ID) {
					if !strings.Contains(line, "signature=valid") {
						t.Fatalf("run %d: %s", run, line)
					}
					return true
				}
			}
			return false
		})
		var list struct{ Destinations []struct{ ID string } }
		if call(t, "GET", base+"/v1/destinations", nil, &list); len(list.Destinations) != 1 || list.Destinations[0].ID != demoID {
			t.Fatalf("run %d: destinations %+v, want only %s", run, list.Destinations, demoID)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}
