package dispatchpg_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"

	"fanout/dispatch/dispatchpg"
	"fanout/internal/pgtest"
)

// withSetting returns the connection string u with a server setting for
// the session, as a libpq "options" parameter (-c name=value): the way an
// operator could turn synchronous_commit off without touching the server.
func withSetting(t *testing.T, u, name, value string) string {
	t.Helper()
	opt := "-c " + name + "=" + value
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		q := p.Query()
		q.Set("options", opt)
		// pgx reads "+" as itself, not as a space: encode spaces as %20
		// (Encode escapes a literal + as %2B).
		p.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
		return p.String()
	}
	return u + " options='" + opt + "'"
}

// A 2xx promises that the events are durable, which on PostgreSQL takes a
// commit that waits for its WAL flush: Open refuses a connection whose
// synchronous_commit is off or local (a server crash would lose the last
// acknowledged events), unless AllowAsyncCommit says so.
func TestOpen_SynchronousCommit(t *testing.T) {
	for _, tc := range []struct {
		value   string
		allow   bool
		refused bool
	}{
		{value: "on"},
		{value: "remote_write"},
		{value: "remote_apply"},
		{value: "off", refused: true},
		{value: "local", refused: true},
		{value: "off", allow: true},
		{value: "local", allow: true},
	} {
		name := tc.value
		if tc.allow {
			name += "/AllowAsyncCommit"
		}
		t.Run(name, func(t *testing.T) {
			u := withSetting(t, pgtest.NewURL(t), "synchronous_commit", tc.value)
			var logs syncBuffer
			s, err := dispatchpg.Open(context.Background(), dispatchpg.Config{
				URL:              u,
				AllowAsyncCommit: tc.allow,
				Logger:           slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if tc.refused {
				if err == nil {
					_ = s.Close()
					t.Fatalf("Open with synchronous_commit=%s succeeded, want it refused", tc.value)
				}
				for _, want := range []string{`synchronous_commit is "` + tc.value + `"`, "acknowledged events would be lost",
					"AllowAsyncCommit"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Open with synchronous_commit=%s: %q, want a message with %q", tc.value, err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Open with synchronous_commit=%s: %v", tc.value, err)
			}
			defer s.Close()
			// The setting reaches the server through this URL, and the
			// store works with it, and says so when its commits are not
			// durable.
			var got string
			if err := connect(t, u).QueryRow(context.Background(), "SHOW synchronous_commit").Scan(&got); err != nil || got != tc.value {
				t.Fatalf("SHOW synchronous_commit on a connection with the same URL = %q (%v), want %q", got, err, tc.value)
			}
			insert(t, s, call("c", T0))
			warned := strings.Contains(logs.String(), "synchronous_commit is "+tc.value+": a server crash loses")
			if tc.allow && !warned {
				t.Errorf("Open with synchronous_commit=%s and AllowAsyncCommit logged no warning:\n%s", tc.value, logs.String())
			}
			if !tc.allow && warned {
				t.Errorf("Open with synchronous_commit=%s warned about asynchronous commits:\n%s", tc.value, logs.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer for a logger that more than one goroutine
// may use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
