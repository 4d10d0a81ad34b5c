// Command testsum runs go test with -json and prints what go test prints
// without it, a line per package and the output of the tests that failed,
// then lists every test that was skipped, with its reason, and every test
// that failed. make test runs it, so that a skip is never silent.
//
//	go run ./internal/cmd/testsum -race -count=1 ./...
//
// The arguments are go test's (testsum adds -json); $GO names the go
// command. testsum exits with go test's status, or 1 if it saw a failure
// go test did not report in its status.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
)

func main() {
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	sum := summarise(out, os.Stdout)
	err = cmd.Wait()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		fmt.Fprintln(os.Stderr, "testsum:", err)
		code = 2
	}
	if code == 0 && sum.failed {
		code = 1
	}
	os.Exit(code)
}

// event is one line of go test -json (cmd/test2json).
type event struct {
	ImportPath string // build-output, build-fail
	Action     string
	Package    string
	Test       string
	Output     string
	// FailedBuild, on a package's fail, names the package whose build
	// failed.
	FailedBuild string
}

// summary is what summarise saw.
type summary struct {
	skipped  []string // "package Test: reason"
	failures []string // "package Test", or "package [build failed]"
	failed   bool
}

// pkgRun collects one package's events until it ends.
type pkgRun struct {
	events      []event
	tests       map[string]*testRun
	failedBuild string
}

type testRun struct {
	ended  string // pass, fail or skip; "" while it runs
	paused bool   // a parallel test waiting for its turn (=== PAUSE, no === CONT yet)
	lines  []string
	header string // its "--- FAIL: ..." line, once seen
}

// summarise reads go test -json from r and writes to w what go test would
// print without -json, then the SKIPPED and FAILED lists.
func summarise(r io.Reader, w io.Writer) summary {
	var sum summary
	pkgs := map[string]*pkgRun{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(w, "%s\n", line) // not an event: as go test wrote it
			continue
		}
		switch e.Action {
		case "build-output":
			fmt.Fprint(w, e.Output)
			continue
		case "build-fail":
			sum.failed = true
			continue
		}
		if e.Package == "" {
			continue
		}
		p := pkgs[e.Package]
		if p == nil {
			p = &pkgRun{tests: map[string]*testRun{}}
			pkgs[e.Package] = p
		}
		if e.Test != "" {
			tr := p.tests[e.Test]
			if tr == nil {
				tr = &testRun{}
				p.tests[e.Test] = tr
			}
			switch e.Action {
			case "output":
				tr.lines = append(tr.lines, e.Output)
				switch {
				case strings.HasPrefix(e.Output, "=== PAUSE "):
					tr.paused = true
				case strings.HasPrefix(e.Output, "=== CONT "):
					tr.paused = false
				}
				if strings.HasPrefix(strings.TrimSpace(e.Output), "--- FAIL: ") {
					tr.header = strings.TrimSpace(e.Output)
				}
			case "pass", "fail", "skip":
				tr.ended = e.Action
			}
			p.events = append(p.events, e)
			continue
		}
		p.events = append(p.events, e)
		if e.FailedBuild != "" {
			p.failedBuild = e.FailedBuild
		}
		switch e.Action {
		case "pass", "fail", "skip":
			p.report(w, e.Package, e.Action, &sum)
			delete(pkgs, e.Package)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(w, "testsum: reading go test's output:", err)
		sum.failed = true
	}
	// Packages that never ended: go test died or was killed.
	names := make([]string, 0, len(pkgs))
	for name := range pkgs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pkgs[name].report(w, name, "fail", &sum)
	}

	if len(sum.skipped) > 0 {
		fmt.Fprintf(w, "\nSKIPPED (%d):\n", len(sum.skipped))
		for _, s := range sum.skipped {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	if len(sum.failures) > 0 {
		fmt.Fprintf(w, "\nFAILED (%d):\n", len(sum.failures))
		for _, s := range sum.failures {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	return sum
}

// framing reports whether a line of a test's output is test2json's framing,
// which go test without -json does not print.
func framing(line string) bool {
	for _, p := range []string{"=== RUN ", "=== PAUSE ", "=== CONT ", "=== NAME "} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// report prints a package that ended with action, as go test would without
// -json, and records its skipped and failed tests in sum.
func (p *pkgRun) report(w io.Writer, pkg, action string, sum *summary) {
	// Skips, in the order the tests ran.
	seen := map[string]bool{}
	for _, e := range p.events {
		tr := p.tests[e.Test]
		if e.Test == "" || seen[e.Test] || tr.ended != "skip" {
			continue
		}
		seen[e.Test] = true
		var reason []string
		for _, l := range tr.lines {
			l = strings.TrimSpace(l)
			if l != "" && !framing(l) && !strings.HasPrefix(l, "--- SKIP: ") {
				reason = append(reason, l)
			}
		}
		if len(reason) == 0 {
			reason = []string{"(no reason given)"}
		}
		sum.skipped = append(sum.skipped, fmt.Sprintf("%s %s: %s", pkg, e.Test, strings.Join(reason, " ")))
	}

	if action != "fail" {
		for _, e := range p.events {
			if e.Test == "" && e.Action == "output" && (strings.HasPrefix(e.Output, "ok  ") || strings.HasPrefix(e.Output, "?   ")) {
				fmt.Fprint(w, e.Output)
			}
		}
		return
	}

	sum.failed = true
	// A test that never ended (a panic, a timeout) failed with its
	// package, unless it was a parallel test still waiting for its turn.
	failed := func(name string) bool {
		tr := p.tests[name]
		return tr != nil && (tr.ended == "fail" || tr.ended == "" && !tr.paused)
	}
	started := map[string]bool{}
	leaves := 0
	for _, e := range p.events {
		if e.Test == "" {
			if e.Action == "output" && !framing(e.Output) {
				fmt.Fprint(w, e.Output)
			}
			continue
		}
		if !failed(e.Test) {
			continue
		}
		tr := p.tests[e.Test]
		indent := strings.Repeat("    ", strings.Count(e.Test, "/"))
		if !started[e.Test] {
			started[e.Test] = true
			header := tr.header
			if header == "" {
				header = "--- FAIL: " + e.Test + " (did not finish)"
			}
			fmt.Fprintf(w, "%s%s\n", indent, header)
			hasFailedSub := false
			for name := range p.tests {
				if strings.HasPrefix(name, e.Test+"/") && failed(name) {
					hasFailedSub = true
				}
			}
			if !hasFailedSub {
				sum.failures = append(sum.failures, pkg+" "+e.Test)
				leaves++
			}
		}
		if e.Action != "output" || framing(e.Output) || (tr.header != "" && strings.TrimSpace(e.Output) == tr.header) {
			continue
		}
		fmt.Fprint(w, indent+e.Output)
	}
	switch {
	case p.failedBuild != "":
		sum.failures = append(sum.failures, pkg+" [build failed]")
	case leaves == 0:
		sum.failures = append(sum.failures, pkg+" (the package failed outside its tests: a panic, TestMain, a timeout)")
	}
}
