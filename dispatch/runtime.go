package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jonboulle/clockwork"
)

// Config configures a Runtime. The zero value of every field but Store is a
// sensible default.
type Config struct {
	// Store keeps the calls. Required.
	Store Store
	// Owner names this process in leases. It must differ between processes
	// that share a store; the default is the host name, the process id and
	// a random suffix.
	Owner string
	// Workers is how many calls run at once in this process (default 128).
	// A call suspended in Gather does not count: it is not running.
	Workers int
	// ClaimBatch is the most calls claimed in one store operation (default
	// 256). Claiming in batches is what makes the store keep up: one claim
	// per call costs a transaction per call.
	ClaimBatch int
	// LeaseDuration is how long a claimed call stays leased without renewal
	// (default 30s). Leases of running calls are renewed, so it bounds how
	// long the calls of a crashed process wait before they run again, not
	// how long a call may run.
	LeaseDuration time.Duration
	// PollInterval is how often the runtime looks for runnable work that it
	// was not told about (default 1s): work of other processes, calls whose
	// lease expired. Work committed by this process, and retries it
	// scheduled, are picked up without waiting for it.
	PollInterval time.Duration
	// RetryPolicy schedules retries (default DefaultBackoff()).
	RetryPolicy RetryPolicy
	// Retention, when positive, deletes top-level calls that are done, with
	// their descendants, once they were created this long ago. Failed calls
	// are kept for FailedRetention, or forever when it is zero. A call that
	// is not finished is never deleted.
	Retention       time.Duration
	FailedRetention time.Duration
	// Keys returns the configuration of a key (see Call.Key): its
	// concurrency cap, rate, pause and retry policy. It is called often
	// and must be cheap. Nil: keys have no limit but Workers.
	Keys func(key string) KeyConfig
	// OnKeyTrip is called when a key's circuit breaker opens: its calls
	// kept failing (BreakerFailures in a row over at least BreakerWindow).
	// The application decides what a trip means; fanout pauses the
	// destination, so that Keys reports it Paused until someone resumes it.
	OnKeyTrip       func(key, reason string)
	BreakerFailures int
	BreakerWindow   time.Duration
	// DedupWindow is how long a DedupKey is remembered (default 24h).
	DedupWindow time.Duration
	// Clock is the time source (default the real clock); tests inject a
	// fake one and never sleep.
	Clock clockwork.Clock
	// Logger receives the runtime's logs (default slog.Default()).
	Logger *slog.Logger
}

// Runtime runs durable functions: it stores dispatched calls, claims runnable
// calls from the store, runs them on a bounded pool of workers, records their
// outcome, retries them, and resumes callers suspended in Gather.
//
// Calls are run at least once: a call whose process died while running it
// runs again once its lease expires, so functions must tolerate running twice.
//
// Work this process creates while it has free workers (a dispatched call, the
// children of a Gather, a parent whose last child finished) is stored already
// leased to it and handed to a worker as soon as the commit returns: the fast
// path costs no claim and no wait. What does not fit is stored pending and
// claimed in batches when workers free up.
type Runtime struct {
	store  Store
	clock  clockwork.Clock
	policy RetryPolicy
	log    *slog.Logger
	owner  string

	workers       int
	claimBatch    int
	leaseDuration time.Duration
	pollInterval  time.Duration
	retention     time.Duration
	failedKeep    time.Duration
	keyConfig     func(string) KeyConfig
	onTrip        func(key, reason string)
	tripAfter     int
	tripWindow    time.Duration
	dedupWindow   time.Duration

	funcs map[string]AnyFunction
	names []string

	work    chan *Call    // calls leased to this process, waiting for a worker
	quit    chan struct{} // closed by Stop: workers return after their call
	wakeCh  chan struct{}
	backlog atomic.Bool  // the store may hold runnable calls nobody leased
	due     atomic.Int64 // earliest retry this process scheduled, unix nanoseconds; 0 when none

	stats struct {
		claims, claimed, leasedOnCreate, eager, finished, retried, failed atomic.Int64
		resultsFromMemory, resultsFromStore                               atomic.Int64
	}

	results *results // outcomes of children run here, for their parents

	mu       sync.Mutex
	inflight map[string]*inflight // leased to this process: queued or running
	reserved int                  // worker slots promised to calls being stored
	keys     map[string]*keyState // per-key limits and health
	keyTurn  int                  // rotates which key claims first

	state      atomic.Int32
	stopping   atomic.Bool
	loopCancel context.CancelFunc
	runCtx     context.Context
	runCancel  context.CancelFunc
	loops      sync.WaitGroup
	workersWG  sync.WaitGroup
}

type inflight struct {
	key       string
	claimedAt time.Time // or last renewed
	ran       bool      // its function returned: it no longer counts against its key
}

const (
	stateNew int32 = iota
	stateStarted
	stateStopped
)

// New returns a runtime for the given functions. Register more with Register
// before Start.
func New(cfg *Config, fns ...AnyFunction) (*Runtime, error) {
	if cfg == nil || cfg.Store == nil {
		return nil, errors.New("dispatch: Config.Store is required")
	}
	r := &Runtime{
		store:         cfg.Store,
		clock:         cfg.Clock,
		policy:        cfg.RetryPolicy,
		log:           cfg.Logger,
		owner:         cfg.Owner,
		workers:       cfg.Workers,
		claimBatch:    cfg.ClaimBatch,
		leaseDuration: cfg.LeaseDuration,
		pollInterval:  cfg.PollInterval,
		retention:     cfg.Retention,
		failedKeep:    cfg.FailedRetention,
		keyConfig:     cfg.Keys,
		onTrip:        cfg.OnKeyTrip,
		tripAfter:     cfg.BreakerFailures,
		tripWindow:    cfg.BreakerWindow,
		dedupWindow:   cfg.DedupWindow,
		keys:          make(map[string]*keyState),
		results:       newResults(10000),
		funcs:         make(map[string]AnyFunction),
		wakeCh:        make(chan struct{}, 1),
		inflight:      make(map[string]*inflight),
	}
	if r.clock == nil {
		r.clock = clockwork.NewRealClock()
	}
	if r.policy == nil {
		r.policy = DefaultBackoff()
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.owner == "" {
		r.owner = defaultOwner()
	}
	if r.workers <= 0 {
		r.workers = 128
	}
	if r.claimBatch <= 0 {
		r.claimBatch = 256
	}
	if r.leaseDuration <= 0 {
		r.leaseDuration = 30 * time.Second
	}
	if r.pollInterval <= 0 {
		r.pollInterval = time.Second
	}
	if r.keyConfig == nil {
		r.keyConfig = func(string) KeyConfig { return KeyConfig{} }
	}
	if r.dedupWindow <= 0 {
		r.dedupWindow = 24 * time.Hour
	}
	r.work = make(chan *Call, r.workers)
	r.quit = make(chan struct{})
	if err := r.Register(fns...); err != nil {
		return nil, err
	}
	return r, nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Register adds functions to the runtime. Names must be unique.
func (r *Runtime) Register(fns ...AnyFunction) error {
	if r.state.Load() != stateNew {
		return errors.New("dispatch: Register after Start")
	}
	for _, fn := range fns {
		name := fn.Name()
		if name == "" {
			return errors.New("dispatch: a function needs a name")
		}
		if _, dup := r.funcs[name]; dup {
			return fmt.Errorf("dispatch: function %s registered twice", name)
		}
		if err := fn.bind(r); err != nil {
			return err
		}
		r.funcs[name] = fn
		r.names = append(r.names, name)
	}
	slices.Sort(r.names)
	return nil
}

// Stats counts what the runtime did since it started.
type Stats struct {
	// Claims is the number of claim operations and Claimed the calls they
	// returned; LeasedOnCreate counts the calls that needed no claim
	// because they were leased to this process as they were stored, and
	// Eager the first attempts made before storing (see Function.Eager).
	Claims, Claimed, LeasedOnCreate, Eager int64
	// Done, Retried and Failed count attempts by outcome.
	Done, Retried, Failed int64
	// ResultsFromMemory and ResultsFromStore count the resumed parents
	// that found their children's results here, and those that read them.
	ResultsFromMemory, ResultsFromStore int64
}

// Stats returns the runtime's counters.
func (r *Runtime) Stats() Stats {
	return Stats{
		Claims: r.stats.claims.Load(), Claimed: r.stats.claimed.Load(), LeasedOnCreate: r.stats.leasedOnCreate.Load(),
		Eager: r.stats.eager.Load(),
		Done:  r.stats.finished.Load(), Retried: r.stats.retried.Load(), Failed: r.stats.failed.Load(),
		ResultsFromMemory: r.stats.resultsFromMemory.Load(), ResultsFromStore: r.stats.resultsFromStore.Load(),
	}
}

// Start starts the workers and the scheduler. Calls left running by a process
// that died are picked up once their lease expires.
func (r *Runtime) Start(ctx context.Context) error {
	if !r.state.CompareAndSwap(stateNew, stateStarted) {
		return errors.New("dispatch: runtime already started")
	}
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.loopCancel = cancel
	r.runCtx, r.runCancel = context.WithCancel(context.WithoutCancel(ctx))
	r.backlog.Store(true) // whatever the store holds from before
	for range r.workers {
		r.workersWG.Add(1)
		go r.worker()
	}
	r.loops.Add(2)
	go r.schedule(loopCtx)
	go r.maintain(loopCtx)
	return nil
}

// Stop stops claiming work, lets the calls that are running finish until ctx
// is done, then cancels those still running and hands every call this runtime
// holds back to the store, to run on the next start or on another process.
// It is safe to call more than once and before Start.
func (r *Runtime) Stop(ctx context.Context) error {
	if r.state.Swap(stateStopped) != stateStarted {
		return nil
	}
	r.stopping.Store(true)
	r.loopCancel()
	r.loops.Wait()
	close(r.quit)

	finished := make(chan struct{})
	go func() { r.workersWG.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
		r.log.Warn("shutdown deadline reached; cancelling the calls still running")
		r.runCancel()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			r.log.Error("calls still running after cancellation; leaving them to lease expiry")
		}
	}
	r.runCancel()

	releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	n, err := r.store.CallLeaseRelease(releaseCtx, &CallLeaseReleaseParams{Owner: r.owner})
	if err != nil {
		return fmt.Errorf("dispatch: release leases: %w", err)
	}
	if n > 0 {
		r.log.Info("handed unfinished calls back to the store", "calls", n)
	}
	return nil
}

// Batch returns an empty batch of calls to dispatch together.
func (r *Runtime) Batch() *Batch { return &Batch{rt: r} }

// Batch is a set of calls dispatched atomically: all are stored, or none.
type Batch struct {
	rt    *Runtime
	calls []*Call
}

// Add appends calls built with Function.BuildCall.
func (b *Batch) Add(calls ...*Call) { b.calls = append(b.calls, calls...) }

// Dispatch stores every call of the batch in one transaction and returns
// their ids, in the order they were added, once they are durable.
func (b *Batch) Dispatch(ctx context.Context) ([]string, error) {
	return b.rt.dispatch(ctx, b.calls)
}

func (r *Runtime) dispatch(ctx context.Context, calls []*Call) ([]string, error) {
	if r.state.Load() == stateStopped {
		return nil, ErrStopped
	}
	if len(calls) == 0 {
		return []string{}, nil
	}
	now := r.clock.Now()
	rows := make([]*Call, len(calls))
	for i, c := range calls {
		if _, ok := r.funcs[c.Function]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrNotRegistered, c.Function)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("dispatch: new call id: %w", err)
		}
		rows[i] = &Call{ID: id.String(), Function: c.Function, Key: c.Key, Input: c.Input, DedupKey: c.DedupKey,
			RunAfter: now, CreatedAt: now}
	}
	// Run the first attempt of eager calls now; lease what is runnable now
	// (the others, and the children of eager calls) to this process.
	//
	// Eager attempts stop once their children would outnumber the idle
	// workers: a burst (a large batch into a busy process) is then stored
	// as plain calls, one row each, and fanned out as workers free up,
	// instead of making the request that brought it pay for the whole
	// fan-out before it is answered.
	runnable, children := rows, []*Call(nil)
	var due time.Time
	if r.running() {
		budget := r.idle()
		runnable = runnable[:0:0]
		for _, c := range rows {
			if budget <= 0 || !r.funcs[c.Function].isEager() {
				runnable = append(runnable, c)
				continue
			}
			kids := r.runEager(ctx, c, now)
			budget -= max(1, len(kids))
			children = append(children, kids...)
			runnable = append(runnable, kids...)
			if c.State == StatePending && (due.IsZero() || c.RunAfter.Before(due)) {
				due = c.RunAfter
			}
		}
	}
	leased := r.leaseNew(runnable, now)
	all := append(rows, children...)
	stored, err := r.store.CallInsertMany(ctx, &CallInsertParams{Calls: all, DedupSince: now.Add(-r.dedupWindow)})
	if err != nil {
		r.unreserve(leased)
		return nil, fmt.Errorf("dispatch: store calls: %w", err)
	}
	ids := stored[:len(rows)]
	// A duplicate and its children were not stored: do not run them.
	var skipped map[string]bool
	for i, c := range all {
		if stored[i] != c.ID {
			if skipped == nil {
				skipped = make(map[string]bool)
			}
			skipped[c.ID] = true
		}
	}
	if skipped != nil {
		kept := leased[:0]
		var dropped []*Call
		for _, c := range leased {
			if skipped[c.ID] {
				dropped = append(dropped, c)
			} else {
				kept = append(kept, c)
			}
		}
		r.unreserve(dropped)
		leased = kept
	}
	if len(children) > 0 {
		byParent := make(map[string][]*Call)
		for _, c := range children {
			byParent[c.ParentID] = append(byParent[c.ParentID], c)
		}
		for parent, kids := range byParent {
			if !skipped[parent] {
				r.results.expect(parent, kids)
			}
		}
	}
	r.admit(leased)
	if len(leased) < len(runnable)-len(skipped) {
		r.signalBacklog()
	}
	if !due.IsZero() {
		r.noteDue(due)
	}
	return ids, nil
}

// running reports whether the runtime runs calls: started, not stopping.
func (r *Runtime) running() bool {
	return r.state.Load() == stateStarted && !r.stopping.Load()
}

// runEager makes the first attempt of a new call and records its outcome in
// the call, before it is stored. It returns the children of a suspension.
func (r *Runtime) runEager(ctx context.Context, c *Call, now time.Time) []*Call {
	r.stats.eager.Add(1)
	c.Attempt = 1
	cc := &callContext{rt: r, call: c}
	started := r.clock.Now()
	output, err := r.run(context.WithValue(ctx, ctxKey{}, cc), r.funcs[c.Function], c)
	if s := cc.suspend; s != nil {
		c.State, c.Gathers, c.Waiting = StateWaiting, s.gather+1, len(s.children)
		return s.children
	}
	p := r.outcome(ctx, c, output, err, started, now)
	c.State, c.Output, c.Error, c.Status = p.State, p.Output, p.Error, p.Status
	if p.State != StateDone && !p.Snooze {
		c.Failures = 1
	}
	if p.State == StatePending {
		c.RunAfter = p.RunAfter
	}
	return nil
}

// Redrive makes failed calls runnable again, with a fresh retry budget; a
// parent that failed because of them waits for them again. It returns the
// ids it re-drove: calls that are not failed are left alone.
func (r *Runtime) Redrive(ctx context.Context, ids []string) ([]string, error) {
	done, err := r.store.CallRedrive(ctx, &CallRedriveParams{IDs: ids, Now: r.clock.Now()})
	if err != nil {
		return nil, err
	}
	if len(done) > 0 {
		r.signalBacklog()
	}
	return done, nil
}

// KeysChanged tells the runtime that key configurations changed (a key was
// resumed, a limit raised): it looks for work it held back.
func (r *Runtime) KeysChanged() { r.signalBacklog() }
