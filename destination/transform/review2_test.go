package transform

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRun_BacktrackingRegexp: a pattern that goja runs in regexp2 (a
// lookahead, a named group) and that backtracks exponentially is one
// built-in call, which Runtime.Interrupt cannot stop; without a bound on
// the match a run of 50ms takes minutes of a CPU (and a POST
// /v1/transform as many as its caller likes).
func TestRun_BacktrackingRegexp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, src string }{
		{"lookahead", `function handler(w) { /(?=a)^(a+)+$/.test("a".repeat(40) + "!") }`},
		{"named group", `function handler(w) { /(?<x>a+)+$/.test("a".repeat(40) + "!") }`},
		{"back-reference", `function handler(w) { /^((a+)\2?)+$/.test("a".repeat(40) + "!") }`},
		{"top level", `/(?=a)^(a+)+$/.test("a".repeat(40) + "!"); function handler(w) {}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				p, err := Compile(tc.src)
				if err == nil {
					_, err = NewEngine(Limits{Timeout: 50 * time.Millisecond}).Run(context.Background(), p, Event{ID: "e"}, order)
				}
				done <- err
			}()
			select {
			case err := <-done:
				var re *RunError
				var se *SyntaxError
				if !(errors.As(err, &re) && re.Timeout) && !errors.As(err, &se) {
					t.Fatalf("got %v; want a run stopped at its time limit", err)
				}
				// One match is bounded by compileTimeout (1s), a run by
				// its limit and one match more: 20s is a busy machine.
				if d := time.Since(start); d > 20*time.Second {
					t.Fatalf("the run took %v", d)
				}
				t.Logf("%v after %v", err, time.Since(start))
			case <-time.After(30 * time.Second):
				t.Fatal("the run is still going after 30s: the regexp is not bounded")
			}
		})
	}
}
