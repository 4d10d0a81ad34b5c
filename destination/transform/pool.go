package transform

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Isolation.
const (
	// DefaultWorkerMemory bounds a worker's memory: a run's input and
	// answer are at most 1 MiB each, and what a handler builds from them
	// fits many times over.
	DefaultWorkerMemory = 256 << 20
	// minWorkerMemory is the least a worker is given: the Go runtime and
	// goja need some to start.
	minWorkerMemory = 32 << 20
	// startTimeout bounds a worker's start, to its hello.
	startTimeout = 10 * time.Second
	// killGrace is how long past its own time limit a run may take before
	// its worker is killed: a run stopped by Runtime.Interrupt answers
	// within it; only a built-in call that goja cannot interrupt (a sort
	// of a huge array, a backtracking regular expression) reaches it.
	killGrace = time.Second
)

// Isolation runs programs in worker processes (see WorkerMain).
type Isolation struct {
	// Workers is how many programs run at once, each in its own process,
	// started when first needed and kept.
	Workers int
	// Memory bounds each worker (bytes; default DefaultWorkerMemory):
	// past it the worker dies and its run fails, the next run gets a new
	// one. Enforced by the kernel on Linux (RLIMIT_DATA).
	Memory int64
	// Command starts a worker; nil starts this executable again. It must
	// call WorkerMain before anything else.
	Command func() (*exec.Cmd, error)
}

// pool keeps the worker processes of an Engine.
type pool struct {
	iso    Isolation
	tokens chan struct{}    // one per run that may go on at once
	idle   chan *workerProc // started workers waiting for a run
	closed atomic.Bool      // Close was called
	mu     sync.Mutex       // guards live
	live   map[*workerProc]struct{}
	starts atomic.Int64 // workers started, for tests
}

func newPool(iso Isolation) *pool {
	if iso.Workers < 1 {
		iso.Workers = 1
	}
	if iso.Memory <= 0 {
		iso.Memory = DefaultWorkerMemory
	}
	iso.Memory = max(iso.Memory, minWorkerMemory)
	if iso.Command == nil {
		iso.Command = selfCommand
	}
	p := &pool{iso: iso, tokens: make(chan struct{}, iso.Workers), idle: make(chan *workerProc, iso.Workers),
		live: map[*workerProc]struct{}{}}
	for range iso.Workers {
		p.tokens <- struct{}{}
	}
	return p
}

// selfCommand starts this executable again as a worker. A test binary gets
// -test.run=^$ besides: should its TestMain not call WorkerMain, it runs
// no test and exits, and the parent reports the missing hello instead of
// running every test again in each worker.
func selfCommand() (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find fanout's executable to start a transformation worker: %w", err)
	}
	args := []string{"transform-worker"} // what ps shows; WorkerMain reads the environment, not this
	if strings.HasSuffix(exe, ".test") {
		args = []string{"-test.run=^$"}
	}
	return exec.Command(exe, args...), nil
}

var errClosed = errors.New("transformations stopped: fanout is shutting down")

// call runs one request on a worker: it waits for a free one (at most
// wait, then ErrBusy; or until ctx ends), sends the request, and kills the
// worker if no answer comes within its deadline.
func (p *pool) call(ctx context.Context, op byte, prog *Program, input []byte, timeout, wait time.Duration) ([]byte, error) {
	select {
	case <-p.tokens: // a free worker: no timer to arm, as for most runs
	default:
		if err := p.waitToken(ctx, wait); err != nil {
			return nil, err
		}
	}
	defer func() { p.tokens <- struct{}{} }()
	if p.closed.Load() {
		return nil, &RunError{Message: errClosed.Error()}
	}
	var w *workerProc
	select {
	case w = <-p.idle:
	default:
		var err error
		if w, err = p.start(); err != nil {
			return nil, &RunError{Message: err.Error()}
		}
	}
	out, err := w.call(ctx, op, prog, input, timeout, p.iso.Memory)
	if w.dead || p.closed.Load() {
		p.retire(w)
	} else {
		p.idle <- w // never blocks: a worker is idle or held by one token
	}
	return out, err
}

// waitToken waits for a run's token, at most wait (then ErrBusy), or until
// ctx ends.
func (p *pool) waitToken(ctx context.Context, wait time.Duration) error {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-p.tokens:
		return nil
	case <-timer.C:
		return ErrBusy
	case <-ctx.Done():
		return &RunError{Message: fmt.Sprintf("stopped while waiting for a free worker: %v", ctx.Err())}
	}
}

// start starts a worker and waits for its hello.
func (p *pool) start() (*workerProc, error) {
	cmd, err := p.iso.Command()
	if err != nil {
		return nil, err
	}
	// Nothing of fanout's environment (its tokens, its database's URL)
	// reaches a process that runs programs: only what Go needs.
	cmd.Env = []string{WorkerEnv + "=" + strconv.FormatInt(p.iso.Memory*raceMemoryFactor, 10), "GOMAXPROCS=1", "GOTRACEBACK=single"}
	// A worker killed may leave its pipes to a process of its own (never
	// fanout's, but a Command's): Wait then gives up on them.
	cmd.WaitDelay = time.Second
	tieToParent(cmd)
	keepInheritedFiles() // fanout's own are close-on-exec already
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	w := &workerProc{cmd: cmd, in: bufio.NewWriterSize(stdin, 64<<10), stdin: stdin, out: bufio.NewReaderSize(stdout, 64<<10),
		stderr: &stderrHead{max: 4 << 10}, known: map[[32]byte]bool{}}
	cmd.Stderr = w.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start a transformation worker: %w", err)
	}
	p.starts.Add(1)
	p.mu.Lock()
	p.live[w] = struct{}{}
	p.mu.Unlock()
	hello := make(chan error, 1)
	go func() {
		line, err := w.out.ReadSlice('\n')
		if err == nil && string(line) != workerHello {
			err = fmt.Errorf("it said %q", trim(string(line)))
		}
		hello <- err
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case err = <-hello:
	case <-timer.C:
		err = fmt.Errorf("no answer within %v", startTimeout)
	}
	if err != nil {
		w.kill(reasonNone)
		p.retire(w)
		return nil, fmt.Errorf("a transformation worker did not start (%s is fanout started again with %s set, and must call transform.WorkerMain first): %v%s",
			cmd.Path, WorkerEnv, err, w.stderr.said())
	}
	return w, nil
}

// retire kills w and waits for it.
func (p *pool) retire(w *workerProc) {
	w.kill(reasonNone)
	_ = w.cmd.Wait()
	p.mu.Lock()
	delete(p.live, w)
	p.mu.Unlock()
}

// close stops every worker; runs in progress fail.
func (p *pool) close() {
	if p.closed.Swap(true) {
		return
	}
	p.mu.Lock()
	for w := range p.live {
		w.kill(reasonClosed)
	}
	p.mu.Unlock()
	for {
		select {
		case w := <-p.idle:
			p.retire(w)
			continue
		default:
		}
		break
	}
	// Runs in progress retire their own workers; wait for them.
	for range p.iso.Workers {
		<-p.tokens
	}
	for range p.iso.Workers {
		p.tokens <- struct{}{}
	}
}

// testHookAnswered, set by a test, runs as a worker's answer arrives.
var testHookAnswered func(context.Context)

// Why a worker was killed.
const (
	reasonNone int32 = iota
	reasonTimeout
	reasonContext
	reasonClosed
)

// workerProc is one worker process; one run uses it at a time.
type workerProc struct {
	cmd    *exec.Cmd
	stdin  io.Closer
	in     *bufio.Writer
	out    *bufio.Reader
	stderr *stderrHead
	// known are the programs whose source this worker was sent.
	known map[[32]byte]bool
	// killed is why it was killed (reason*), once it was.
	killed atomic.Int32
	dead   bool // a call failed: the worker is not used again
}

// kill kills the worker, and records why unless reason is reasonNone or
// a reason was recorded before.
func (w *workerProc) kill(reason int32) {
	if reason != reasonNone {
		w.killed.CompareAndSwap(reasonNone, reason)
	}
	_ = w.cmd.Process.Kill()
}

// call sends one request and reads its answer; the source goes along when
// this worker has not been sent it, or asks for it.
func (w *workerProc) call(ctx context.Context, op byte, prog *Program, input []byte, timeout time.Duration, memory int64) ([]byte, error) {
	deadline := time.AfterFunc(timeout+killGrace, func() { w.kill(reasonTimeout) })
	stop := context.AfterFunc(ctx, func() { w.kill(reasonContext) })
	for attempt := 0; ; attempt++ {
		src := ""
		if op != opRun || !w.known[prog.id] || attempt > 0 {
			src = prog.source
		}
		req := encodeRequest(op, timeout, prog.id, prog.name, src, input)
		if len(req) > maxFrame { // the engine bounds what it sends: a bug, not the worker's fault
			deadline.Stop()
			stop()
			return nil, &RunError{Message: fmt.Sprintf("a request of %d bytes, over %d", len(req), maxFrame)}
		}
		answer, err := w.roundTrip(req)
		if err != nil {
			deadline.Stop()
			stop()
			return nil, w.failed(ctx, err, timeout, memory)
		}
		if testHookAnswered != nil {
			testHookAnswered(ctx)
		}
		out, needSource, err := decodeAnswer(answer)
		if needSource && attempt == 0 && op == opRun {
			continue
		}
		// A kill that fired as the answer came (the deadline, the
		// context) may land on the process at any time from now: the
		// worker must not serve another run.
		if stoppedTimer, stoppedCtx := deadline.Stop(), stop(); !stoppedTimer || !stoppedCtx {
			w.dead = true
		}
		if needSource || errors.Is(err, errBadFrame) {
			w.dead = true
			return nil, &RunError{Message: "the transformation's worker answered out of turn; it was stopped"}
		}
		if op == opRun {
			if len(w.known) >= workerCacheSize {
				clear(w.known) // the worker forgets as many; it may ask again
			}
			w.known[prog.id] = true
		}
		return out, err
	}
}

func (w *workerProc) roundTrip(req []byte) ([]byte, error) {
	if err := writeFrame(w.in, req); err != nil {
		return nil, err
	}
	return readFrame(w.out)
}

// failed is the error of a run whose worker stopped answering: killed at
// its deadline or its context's end, or dead of its own (out of memory).
func (w *workerProc) failed(ctx context.Context, err error, timeout time.Duration, memory int64) error {
	w.dead = true
	w.kill(reasonNone) // it may still be alive: the pipe broke
	_ = w.stdin.Close()
	_ = w.cmd.Wait() // the exit and the last of its stderr
	switch w.killed.Load() {
	case reasonTimeout:
		return &RunError{Timeout: true, Message: fmt.Sprintf("the program ran longer than %v, inside a built-in call that could not be interrupted: its worker was killed", timeout)}
	case reasonContext:
		return &RunError{Message: fmt.Sprintf("stopped: %v", context.Cause(ctx))}
	case reasonClosed:
		return &RunError{Message: errClosed.Error()}
	}
	said := w.stderr.String()
	if strings.Contains(said, "out of memory") || strings.Contains(said, "cannot allocate memory") ||
		strings.Contains(said, "failed to allocate") { // the race detector's own words
		return &RunError{Message: fmt.Sprintf("the program ran out of memory (a transformation may use %d MiB): its worker died", memory>>20)}
	}
	return &RunError{Message: trim(fmt.Sprintf("the transformation's worker died (%v, %v)%s", err, w.cmd.ProcessState, w.stderr.said()))}
}

// stderrHead keeps the first bytes a worker writes to its standard error
// (the Go runtime's fatal error comes first, its goroutines' stacks after).
type stderrHead struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *stderrHead) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if room := t.max - len(t.b); room > 0 {
		t.b = append(t.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (t *stderrHead) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// said is the first line of what the worker wrote, to follow an error.
func (t *stderrHead) said() string {
	s, _, _ := strings.Cut(strings.TrimSpace(t.String()), "\n")
	if s == "" {
		return ""
	}
	return ": " + trim(s)
}
