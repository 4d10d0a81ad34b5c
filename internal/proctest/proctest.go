// Package proctest runs the fanout binary for tests that need a real
// process, to kill it or to run several: it builds the binary once, starts
// it with its output captured line by line, waits until it listens, and
// stops or kills it. crashtest and replicatest share it.
package proctest

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Build builds fanout (package main of the module whose root is root,
// relative to the calling test's directory) into a new temporary directory
// and returns the binary and a function that removes the directory. The
// binary is built without -race: the tests check fanout's behaviour across
// processes, the race detector runs on the test code and on fanout's
// packages in their own tests, and an instrumented child would only make
// every crash window slower. $GO names the go command, if set.
func Build(root string) (bin string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "fanout-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { _ = os.RemoveAll(dir) }
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	bin = filepath.Join(dir, "fanout")
	build := exec.Command(goCmd, "build", "-o", bin, "fanout")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("go build fanout: %v\n%s", err, out)
	}
	return bin, remove, nil
}

// Main is a TestMain for a package that runs the fanout binary: it builds
// it (see Build; the package sits one level below the module root), sets
// *bin, runs the tests, calls after (when not nil) and removes the binary,
// then exits with the tests' status.
func Main(m *testing.M, name string, bin *string, after func() error) {
	flag.Parse()
	b, remove, err := Build("..")
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	*bin = b
	code := m.Run()
	if after != nil {
		if err := after(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		}
	}
	remove()
	os.Exit(code)
}

// ChildEnv is the test's environment without what would change fanout's
// behaviour behind the test's back: its own FANOUT_* settings, and proxies
// (a proxy would take the deliveries off loopback).
func ChildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "FANOUT_") || strings.HasSuffix(strings.ToUpper(name), "_PROXY") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Proc is one run of the fanout binary.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	URL  string // http://127.0.0.1:PORT once it listens
	Logs *Lines

	exited chan struct{} // closed once the process is reaped
	state  *os.ProcessState
}

var listeningRE = regexp.MustCompile(`msg="fanout listening" addr=(\S+)`)

// Start starts cmd, which runs fanout, with ChildEnv (and what cmd.Env
// holds already, which wins), its output captured, and a cleanup that
// kills it if it still runs: nothing outlives the test.
// With a failed test, or FANOUT_TEST_LOGS set, the cleanup prints the end
// of its log. Start does not wait for it to listen: see WaitListening.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Name: name, Cmd: cmd, Logs: &Lines{}, exited: make(chan struct{})}
	cmd.Env = append(ChildEnv(), cmd.Env...)
	cmd.Stdout, cmd.Stderr = p.Logs, p.Logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait() // the exit status is in cmd.ProcessState
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				t.Errorf("%s (pid %d) did not die within 10s of SIGKILL", name, cmd.Process.Pid)
			}
		}
		if t.Failed() || os.Getenv("FANOUT_TEST_LOGS") != "" {
			t.Logf("%s, pid %d (%s), last lines of its log:\n%s", name, cmd.Process.Pid,
				strings.Join(cmd.Args[1:], " "), p.Logs.Tail(60))
		}
	})
	return p
}

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// WaitListening waits until fanout logs that it listens, and sets URL.
func (p *Proc) WaitListening(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := p.Logs.Find(listeningRE); m != nil {
			p.URL = m[1]
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited before listening (%v):\n%s", p.Name, p.state, p.Logs.Tail(30))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen within %v:\n%s", p.Name, timeout, p.Logs.Tail(30))
		}
	}
}

// Kill sends SIGKILL and waits until the process is gone. It returns when
// the signal was sent.
func (p *Proc) Kill(t testing.TB) time.Time {
	t.Helper()
	at := time.Now()
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s: %v", p.Name, err)
	}
	p.WaitExit(t, 10*time.Second)
	return at
}

// Terminate sends SIGTERM, the clean shutdown, and returns the exit status
// once the process has exited, within timeout. A process that has exited
// already just gives its status, for the caller to judge.
func (p *Proc) Terminate(t testing.TB, timeout time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.exited:
		return p.state
	default:
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.Name, err)
	}
	return p.WaitExit(t, timeout)
}

// WaitExit waits for the process to exit and returns its status.
func (p *Proc) WaitExit(t testing.TB, timeout time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.exited:
		return p.state
	case <-time.After(timeout):
		t.Fatalf("%s (pid %d) still runs %v after it was told to stop:\n%s", p.Name, p.Cmd.Process.Pid, timeout, p.Logs.Tail(30))
		return nil
	}
}

// WaitLog waits until a line of the log contains every one of parts, and
// returns it.
func (p *Proc) WaitLog(t testing.TB, timeout time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if line, ok := p.Logs.Contains(parts...); ok {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line of %s's log has %q within %v:\n%s", p.Name, parts, timeout, p.Logs.Tail(30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Lines collects a process's output by line, keeping the last maxLines.
type Lines struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
}

const maxLines = 20000

func (l *Lines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if n := len(l.lines) - maxLines; n > 0 {
		l.lines = slices.Delete(l.lines, 0, n)
	}
	return len(b), nil
}

// Find returns the submatches of re in the first line it matches.
func (l *Lines) Find(re *regexp.Regexp) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if m := re.FindStringSubmatch(line); m != nil {
			return m
		}
	}
	return nil
}

// Contains returns the first line that contains every one of parts.
func (l *Lines) Contains(parts ...string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if hasAll(line, parts) {
			return line, true
		}
	}
	return "", false
}

// Count counts the lines that contain every one of parts.
func (l *Lines) Count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if hasAll(line, parts) {
			n++
		}
	}
	return n
}

func hasAll(line string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(line, p) {
			return false
		}
	}
	return true
}

// All is the whole output kept.
func (l *Lines) All() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + string(l.partial)
}

// Tail is the last n lines.
func (l *Lines) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n") + string(l.partial)
}
