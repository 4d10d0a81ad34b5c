// Package transform runs a destination's transformation: a JavaScript
// function handler(webhook) that may change a delivery's method, URL path
// and query, headers and payload, or cancel it, before it is signed and
// sent.
//
// Programs run in goja (a JavaScript interpreter in pure Go), in a fresh
// Runtime per run, with nothing of the host exposed: no I/O, no timers, no
// require or import, no eval. goja bounds what it can: the program's
// length (MaxSourceBytes), the input (MaxInputBytes), the time
// (Limits.Timeout, through Runtime.Interrupt, which stops the program
// between two JavaScript steps), the depth of its calls, and the size of
// what it returns (MaxOutputBytes). It bounds neither memory nor a single
// built-in call (a sort of an array of four billion holes, a backtracking
// regular expression), and either can take a whole process down or hold a
// core. So fanout runs programs in worker processes of its own (Isolation,
// pool.go, worker.go): a worker's memory is capped by the kernel, a run
// that outlives its limit by killGrace has its worker killed, and what
// dies is the worker, never fanout. Setting a transformation is still an
// operator's right, which an operator may grant a tenant: a program costs
// a worker's CPU for its time limit on every delivery.
//
// The handler's answer is read back as JSON (DecodeResult) and checked
// there, not in JavaScript: whatever the program did to its globals, the
// request it produces keeps the destination's scheme, host and port, and
// none of the headers fanout sets.
package transform

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/dlclark/regexp2"
	"github.com/dop251/goja"
	"github.com/dop251/goja/parser"
	"github.com/tidwall/gjson"
)

// Bounds of a transformation.
const (
	// MaxSourceBytes bounds a program's source (it fits, with the rest of
	// a destination, in the API's 64 KiB body of a PATCH).
	MaxSourceBytes = 32 << 10
	// MaxInputBytes bounds the webhook handed to a program (its payload,
	// mostly): a larger event fails the attempt, without running it.
	MaxInputBytes = 1 << 20
	// MaxOutputBytes bounds what the handler returns, as JSON.
	MaxOutputBytes = 1 << 20
	// DefaultTimeout bounds one run: the program's top level and its
	// handler together.
	DefaultTimeout = 50 * time.Millisecond
	// compileTimeout bounds the top level's run at Compile: generous,
	// since its purpose is to find a missing handler, and a busy machine
	// must not turn a correct program away.
	compileTimeout = time.Second
	// maxCallStack bounds the depth of the program's calls (goja's own
	// stack, not Go's): a runaway recursion fails instead of growing.
	maxCallStack = 512
)

// Limits are an Engine's settings.
type Limits struct {
	// Timeout bounds one run (default DefaultTimeout).
	Timeout time.Duration
	// Isolation, when set, runs programs in worker processes; nil runs
	// them in this process, which only the package's own tests and a
	// worker itself should do.
	Isolation *Isolation
}

// SyntaxError is a program that does not compile, or has no handler.
type SyntaxError struct {
	Line, Column int // 1-based; 0 when the error has no place
	Message      string
}

func (e *SyntaxError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Message)
	}
	return e.Message
}

// RunError is a run that failed: the program threw, ran out of time or of
// stack, or answered something that is not a request fanout may send.
type RunError struct {
	// Timeout is set when the run was stopped at its time limit.
	Timeout bool
	Message string
}

func (e *RunError) Error() string { return "transformation: " + e.Message }

// Program is a transformation, named: in this process it is compiled
// once and runs in any number of runtimes at once; in workers, each
// compiles it once under its id.
type Program struct {
	source string
	// name is whose program it is: a destination's id, or a fresh random
	// name for a check or a preview. A worker keeps a program's runtimes
	// (and whatever globals a handler leaves in them) under id, a hash of
	// name and source, so that two destinations with the same text never
	// share a runtime.
	name string
	id   [32]byte
	prg  *goja.Program // nil until compiled in this process
	pool sync.Pool     // of *instance
}

// Source is the program's text.
func (p *Program) Source() string { return p.source }

// programID is the id of name's program of src.
func programID(name, src string) [32]byte {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(src))
	var id [32]byte
	h.Sum(id[:0])
	return id
}

// newProgram is name's program of src, not compiled.
func newProgram(name, src string) *Program {
	return &Program{source: src, name: name, id: programID(name, src)}
}

// freshName names a program that nothing else shares (a check, a preview).
func freshName() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "preview-" + hex.EncodeToString(b[:])
}

// CheckSource refuses what is no program at all (empty, or too long),
// without parsing it: parsing (goja's compiler takes time more than
// linear in some sources) is left to whoever may run it.
func CheckSource(src string) error {
	if strings.TrimSpace(src) == "" {
		return &SyntaxError{Message: "the program is empty: it must define function handler(webhook)"}
	}
	if len(src) > MaxSourceBytes {
		return &SyntaxError{Message: fmt.Sprintf("the program is %d bytes, over the limit of %d", len(src), MaxSourceBytes)}
	}
	return nil
}

// compile parses and compiles p's source in this process, without
// running any of it: a syntax error is found, a missing handler is not.
func compile(p *Program) error {
	if err := CheckSource(p.source); err != nil {
		return err
	}
	ast, err := parser.ParseFile(nil, "transform.js", p.source, 0, parser.WithDisableSourceMaps)
	if err != nil {
		var list parser.ErrorList
		if errors.As(err, &list) && len(list) > 0 {
			e := list[0]
			return &SyntaxError{Line: e.Position.Line, Column: e.Position.Column, Message: e.Message}
		}
		return &SyntaxError{Message: err.Error()}
	}
	prg, err := goja.CompileAST(ast, false)
	if err != nil {
		var ce *goja.CompilerSyntaxError
		if errors.As(err, &ce) && ce.File != nil {
			pos := ce.File.Position(ce.Offset)
			return &SyntaxError{Line: pos.Line, Column: pos.Column, Message: ce.Message}
		}
		return &SyntaxError{Message: err.Error()}
	}
	p.prg = prg
	return nil
}

// glue calls the handler with the webhook (its JSON, parsed in the
// runtime) and answers the result as JSON, which DecodeResult checks. The
// event is frozen: a handler may read it, and what it writes there is
// ignored anyway.
var glue = goja.MustCompile("glue.js", `(function (input) {
	var w = JSON.parse(input);
	Object.freeze(w.event);
	var out = handler(w);
	if (out === undefined) out = w;
	if (out === null || typeof out !== "object") {
		throw new TypeError("handler must return the webhook (or nothing, to keep the one it changed), not " +
			(out === null ? "null" : typeof out) + "; set webhook.cancel = true to cancel the delivery");
	}
	return JSON.stringify({method: out.method, path: out.path, query: out.query, headers: out.headers,
		payload: out.payload, cancel: out.cancel});
})`, true)

// sandbox takes from a fresh runtime what runs code made of strings: such
// code would run inside the same sandbox and limits, but a transformation
// has no use for it, and it would hide what a program does from a reader.
var sandbox = goja.MustCompile("sandbox.js", `(function () {
	var F = Function;
	delete globalThis.eval;
	delete globalThis.Function;
	Object.defineProperty(F.prototype, "constructor", {value: undefined, writable: false, configurable: false});
	[function* () {}, async function () {}].forEach(function (f) {
		Object.defineProperty(Object.getPrototypeOf(f), "constructor", {value: undefined, writable: false, configurable: false});
	});
})()`, true)

// instance is a runtime that ran a program's top level: its handler and
// the glue, ready to call.
type instance struct {
	vm   *goja.Runtime
	glue goja.Callable
}

// instantiate makes a runtime of p: the sandbox, then p's top level, under
// the time limit. An instance that ran a handler to its end without error
// is put back in p's pool and reused by a later run: globals a handler
// sets may or may not be there next time (as in a serverless function's
// warm start), never another program's.
func instantiate(p *Program, limit *limiter) (*instance, error) {
	vm := goja.New()
	vm.SetMaxCallStackSize(maxCallStack)
	limit.watch(vm)
	if _, err := vm.RunProgram(sandbox); err != nil {
		return nil, limit.fail(err)
	}
	if _, err := vm.RunProgram(p.prg); err != nil {
		return nil, limit.fail(err)
	}
	if _, ok := goja.AssertFunction(vm.Get("handler")); !ok {
		return nil, &RunError{Message: "the program does not define function handler(webhook)"}
	}
	g, err := vm.RunProgram(glue)
	if err != nil {
		return nil, limit.fail(err)
	}
	call, _ := goja.AssertFunction(g)
	return &instance{vm: vm, glue: call}, nil
}

// limiter stops a run at its time limit, or when its context ends.
type limiter struct {
	ctx     context.Context
	timeout time.Duration
	timer   *time.Timer
	stopCtx func() bool
	vm      *goja.Runtime
}

func (l *limiter) watch(vm *goja.Runtime) {
	l.vm = vm
	l.timer = time.AfterFunc(l.timeout, func() { vm.Interrupt(errTimeout) })
	l.stopCtx = context.AfterFunc(l.ctx, func() { vm.Interrupt(l.ctx.Err()) })
}

// release stops watching; clean is false when the interrupt may have
// fired, and the runtime must then not be used again.
func (l *limiter) release() (clean bool) {
	if l.vm == nil {
		return false
	}
	t, c := l.timer.Stop(), l.stopCtx()
	return t && c
}

// fail says why a run failed.
func (l *limiter) fail(err error) error {
	var ie *goja.InterruptedError
	var so *goja.StackOverflowError
	var ex *goja.Exception
	switch {
	case errors.As(err, &ie) && errors.Is(ie, errTimeout):
		return &RunError{Timeout: true, Message: fmt.Sprintf("the program ran longer than %v", l.timeout)}
	case errors.As(err, &ie):
		return &RunError{Message: fmt.Sprintf("stopped: %v", ie.Unwrap())}
	case errors.As(err, &so):
		return &RunError{Message: fmt.Sprintf("its calls nest deeper than %d", maxCallStack)}
	case errors.As(err, &ex):
		return &RunError{Message: trim(ex.Error())}
	}
	return &RunError{Message: trim(err.Error())}
}

// run runs p: its top level (in a new runtime, or one of its pool), then,
// when input is not nil, its handler on input. It never panics: a panic
// inside goja is a failed run.
func run(ctx context.Context, p *Program, input []byte, timeout time.Duration) (out string, err error) {
	limit := &limiter{ctx: ctx, timeout: timeout}
	var in *instance
	defer func() {
		clean := limit.release()
		if r := recover(); r != nil {
			out, err = "", &RunError{Message: fmt.Sprintf("the runtime failed: %v", r)}
		}
		if in != nil && clean && err == nil {
			p.pool.Put(in)
		}
	}()
	if input != nil {
		if v, ok := p.pool.Get().(*instance); ok {
			in = v
			limit.watch(in.vm)
		}
	}
	if in == nil {
		if in, err = instantiate(p, limit); err != nil {
			return "", err
		}
	}
	if input == nil {
		return "", nil
	}
	v, err := in.glue(goja.Undefined(), in.vm.ToValue(string(input)))
	if err != nil {
		return "", limit.fail(err)
	}
	s, ok := v.Export().(string)
	if !ok {
		return "", &RunError{Message: "the handler's answer cannot be written as JSON"}
	}
	return s, nil
}

var errTimeout = errors.New("time limit")

// A regular expression that goja cannot hand to Go's regexp (a
// lookahead, a back-reference, a named group) runs in regexp2, which
// backtracks: a pattern like /(?=a)^(a+)+$/ takes time exponential in its
// input, inside one built-in call that Runtime.Interrupt cannot stop. So
// every match is bounded by regexp2's own timeout, set before goja
// compiles any pattern (regexp2 reads it at compile). A match that times
// out is "no match" to goja, which would be a wrong answer, not a failure;
// the bound is the longest a run may last (compileTimeout), so that a
// match cut short always belongs to a run whose own time limit has fired,
// and which fails as a timeout at its next step.
func init() { regexp2.DefaultMatchTimeout = compileTimeout }

// trim bounds an error message that goes into an attempt's record.
func trim(s string) string {
	const max = 500
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// Event is what a handler reads of the event, read-only.
type Event struct {
	ID     string `json:"id"`
	Type   string `json:"type,omitempty"`
	Tenant string `json:"tenant,omitempty"`
}

// Request is a delivery as fanout would send it.
type Request struct {
	Method string
	// URL is absolute: the handler sees and changes its path and query;
	// its scheme, host and port stay.
	URL     string
	Headers map[string]string
	// Body is the event's JSON; a body that is not JSON is handed to the
	// handler as a null payload.
	Body []byte
}

// Outcome is what a run made of a request: the request to send, or a
// cancellation.
type Outcome struct {
	Request   Request
	Cancelled bool
	// Reason is the handler's reason for a cancellation, if it gave one.
	Reason string
}

// Engine runs transformations and keeps them compiled, one per
// destination (and its source); it is safe for concurrent use.
type Engine struct {
	timeout time.Duration
	// workers runs programs; nil runs them in this process.
	workers *pool
	// previews holds a slot per preview running: previews may take half
	// of the workers, deliveries always have the rest.
	previews chan struct{}
	mu       sync.RWMutex
	cache    map[string]*Program
}

// maxCached bounds the compiled programs kept: past it the cache starts
// over, and programs are compiled again as they are used.
const maxCached = 10000

// workerWait bounds how long a run waits for a free worker before it is
// ErrBusy: longer than a run or a check may hold one.
const workerWait = compileTimeout + killGrace + time.Second

// ErrBusy is a run that found no free worker in time: every worker is
// running other programs. A delivery should wait and try again, without
// counting it as a failure of its destination.
var ErrBusy = errors.New("every transformation worker is busy")

// NewEngine returns an engine.
func NewEngine(l Limits) *Engine {
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	e := &Engine{timeout: l.Timeout, cache: map[string]*Program{}}
	if l.Isolation != nil {
		e.workers = newPool(*l.Isolation)
		e.previews = make(chan struct{}, max(1, e.workers.iso.Workers/2))
	}
	return e
}

// Close stops the engine's workers; a run in progress fails.
func (e *Engine) Close() {
	if e.workers != nil {
		e.workers.close()
	}
}

// Compile checks src as a destination's program: it parses it and runs
// its top level once (within compileTimeout), to find a program that does
// not define handler, or throws or loops there, which would fail every
// delivery. Its errors are *SyntaxError, or ErrBusy.
func (e *Engine) Compile(ctx context.Context, src string) error {
	p := newProgram(freshName(), src)
	if err := CheckSource(src); err != nil {
		return err
	}
	var err error
	if e.workers != nil {
		_, err = e.workers.call(ctx, opCheck, p, nil, compileTimeout, workerWait)
	} else if err = compile(p); err == nil {
		_, err = run(ctx, p, nil, compileTimeout)
	}
	var re *RunError
	if errors.As(err, &re) {
		return &SyntaxError{Message: re.Message}
	}
	return err
}

// Preview runs src on req for ev, as a delivery would, in a runtime of its
// own: its check (a *SyntaxError) and its run (a *RunError) in one go, or
// ErrBusy when as many previews run already as may.
func (e *Engine) Preview(ctx context.Context, src string, ev Event, req Request) (*Outcome, error) {
	if err := CheckSource(src); err != nil {
		return nil, err
	}
	p := newProgram(freshName(), src)
	if e.workers == nil {
		if err := e.Compile(ctx, src); err != nil {
			return nil, err
		}
		if err := compile(p); err != nil {
			return nil, err
		}
		return e.Run(ctx, p, ev, req)
	}
	select {
	case e.previews <- struct{}{}:
		defer func() { <-e.previews }()
	default:
		return nil, ErrBusy
	}
	return e.run(ctx, p, ev, req, opPreview)
}

// Program returns key's program of src (a destination's id: each new
// version of the destination with the same transformation reuses it),
// compiled once in this process, or named for the workers, which compile
// it there. A syntax error in this process is an error here; in workers,
// it is the error of each run.
func (e *Engine) Program(key, src string) (*Program, error) {
	e.mu.RLock()
	p := e.cache[key]
	e.mu.RUnlock()
	if p != nil && p.source == src {
		return p, nil
	}
	p = newProgram(key, src)
	if err := CheckSource(src); err != nil {
		return nil, err
	}
	if e.workers == nil {
		if err := compile(p); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	if len(e.cache) >= maxCached {
		clear(e.cache)
	}
	e.cache[key] = p
	e.mu.Unlock()
	return p, nil
}

// Run runs p's handler on req for ev. An error is a *RunError (the
// program failed, or answered something fanout will not send), a
// *SyntaxError (in a worker, a program that does not compile), or ErrBusy.
func (e *Engine) Run(ctx context.Context, p *Program, ev Event, req Request) (*Outcome, error) {
	return e.run(ctx, p, ev, req, opRun)
}

func (e *Engine) run(ctx context.Context, p *Program, ev Event, req Request, op byte) (*Outcome, error) {
	base, err := url.Parse(req.URL)
	if err != nil || base.Host == "" {
		return nil, &RunError{Message: "the destination's URL is not absolute"}
	}
	input, err := encodeInput(ev, req, base)
	if err != nil {
		return nil, err
	}
	var out []byte
	if e.workers != nil {
		out, err = e.workers.call(ctx, op, p, input, e.timeout, workerWait)
	} else {
		var s string
		if s, err = run(ctx, p, input, e.timeout); err == nil {
			err = checkOutput(s)
		}
		out = []byte(s)
	}
	if err != nil {
		return nil, err
	}
	res, err := DecodeResult(out)
	if err != nil {
		return nil, &RunError{Message: err.Error()}
	}
	if res.Cancel {
		return &Outcome{Cancelled: true, Reason: res.Reason}, nil
	}
	u := *base
	u.RawPath, u.Path, u.RawQuery, u.ForceQuery = "", "", res.Query, false
	if err := setPath(&u, res.Path); err != nil {
		return nil, &RunError{Message: err.Error()}
	}
	final := u.String()
	if check, err := url.Parse(final); err != nil || check.Scheme != base.Scheme || check.Host != base.Host {
		return nil, &RunError{Message: fmt.Sprintf("path %q and query %q would change the destination's host", res.Path, res.Query)}
	}
	if len(final) > maxURLBytes {
		return nil, &RunError{Message: fmt.Sprintf("the URL would be longer than %d bytes", maxURLBytes)}
	}
	return &Outcome{Request: Request{Method: res.Method, URL: final, Headers: res.Headers, Body: res.Payload}}, nil
}

// checkOutput refuses a handler's answer over MaxOutputBytes.
func checkOutput(s string) error {
	if len(s) > MaxOutputBytes {
		return &RunError{Message: fmt.Sprintf("the handler's answer is %d bytes of JSON, over the limit of %d", len(s), MaxOutputBytes)}
	}
	return nil
}

// setPath sets u's path to p, a path as written in a URL: kept as it is
// when it is validly escaped, escaped where it needs to be otherwise (a
// space becomes %20).
func setPath(u *url.URL, p string) error {
	unescaped, err := url.PathUnescape(p)
	if err != nil {
		return fmt.Errorf("path %q is not a valid URL path: %v", p, err)
	}
	u.Path, u.RawPath = unescaped, p
	return nil
}

// encodeInput writes the webhook a handler gets, as JSON: the event's own
// bytes are its payload, unparsed here (the runtime parses them once).
func encodeInput(ev Event, req Request, base *url.URL) ([]byte, error) {
	body := req.Body
	if len(body) == 0 || !gjson.ValidBytes(body) {
		body = []byte("null")
	}
	if len(body) > MaxInputBytes {
		return nil, &RunError{Message: fmt.Sprintf("the event is %d bytes, over the %d a transformation is handed", len(body), MaxInputBytes)}
	}
	headers := req.Headers
	if headers == nil {
		headers = map[string]string{}
	}
	method := req.Method
	if method == "" {
		method = "POST"
	}
	b := make([]byte, 0, len(body)+256)
	b = append(b, `{"method":`...)
	b = appendJSON(b, method)
	b = append(b, `,"path":`...)
	path := base.EscapedPath()
	if path == "" {
		path = "/" // what is sent for a URL without a path
	}
	b = appendJSON(b, path)
	b = append(b, `,"query":`...)
	b = appendJSON(b, base.RawQuery)
	b = append(b, `,"headers":`...)
	b = appendJSON(b, headers)
	b = append(b, `,"event":`...)
	b = appendJSON(b, ev)
	b = append(b, `,"cancel":false,"payload":`...)
	b = append(b, body...)
	b = append(b, '}')
	if len(b) > maxInput {
		// A huge type or header values around a payload within its bound.
		return nil, &RunError{Message: fmt.Sprintf("the webhook handed to the program would be %d bytes, over the limit of %d", len(b), maxInput)}
	}
	return b, nil
}

// maxInput bounds the whole webhook a handler is handed: the payload
// (MaxInputBytes) and what goes around it.
const maxInput = MaxInputBytes + 256<<10
