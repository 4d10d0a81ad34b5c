package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
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
	// their descendants, this long after they finished. Failed calls are
	// kept for FailedRetention, or forever when it is zero.
	Retention       time.Duration
	FailedRetention time.Duration
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

	funcs map[string]AnyFunction
	names []string

	work   chan *Call
	wakeCh chan struct{}
	due    atomic.Int64 // earliest retry this process scheduled, unix nanoseconds; 0 when none

	mu       sync.Mutex
	inflight map[string]*inflight

	state      atomic.Int32
	stopping   atomic.Bool
	loopCancel context.CancelFunc
	runCtx     context.Context
	runCancel  context.CancelFunc
	loops      sync.WaitGroup
	workersWG  sync.WaitGroup
}

type inflight struct {
	attempt   int
	claimedAt time.Time // or last renewed
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
	r.work = make(chan *Call, r.workers)
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

// Owner returns the name this runtime leases calls under.
func (r *Runtime) Owner() string { return r.owner }

// Store returns the runtime's store.
func (r *Runtime) Store() Store { return r.store }

// Start starts the workers and the scheduler. Calls left running by a process
// that died are picked up once their lease expires.
func (r *Runtime) Start(ctx context.Context) error {
	if !r.state.CompareAndSwap(stateNew, stateStarted) {
		return errors.New("dispatch: runtime already started")
	}
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.loopCancel = cancel
	r.runCtx, r.runCancel = context.WithCancel(context.WithoutCancel(ctx))
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
	close(r.work) // the scheduler, the only sender, has returned

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

// Len returns the number of calls in the batch.
func (b *Batch) Len() int { return len(b.calls) }

// Reset empties the batch.
func (b *Batch) Reset() { b.calls = b.calls[:0] }

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
	ids := make([]string, len(calls))
	for i, c := range calls {
		if _, ok := r.funcs[c.Function]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrNotRegistered, c.Function)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("dispatch: new call id: %w", err)
		}
		ids[i] = id.String()
		rows[i] = &Call{
			ID:        ids[i],
			Function:  c.Function,
			Input:     c.Input,
			State:     StatePending,
			RunAfter:  now,
			CreatedAt: now,
		}
	}
	if err := r.store.CallInsertMany(ctx, rows); err != nil {
		return nil, fmt.Errorf("dispatch: store calls: %w", err)
	}
	r.wake()
	return ids, nil
}

// wake tells the scheduler that there may be work to claim.
func (r *Runtime) wake() {
	select {
	case r.wakeCh <- struct{}{}:
	default:
	}
}

// noteDue remembers a retry time so that the scheduler wakes for it.
func (r *Runtime) noteDue(at time.Time) {
	n := at.UnixNano()
	for {
		cur := r.due.Load()
		if cur != 0 && cur <= n {
			return
		}
		if r.due.CompareAndSwap(cur, n) {
			r.wake()
			return
		}
	}
}

func (r *Runtime) free() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers - len(r.inflight)
}

// schedule claims runnable calls whenever workers are free and there may be
// work: when told (a local commit, a worker that finished, a notification from
// the store), when a retry it knows of is due, and every PollInterval.
func (r *Runtime) schedule(ctx context.Context) {
	defer r.loops.Done()
	threshold := max(1, min(r.claimBatch, r.workers/8))
	var notify <-chan struct{}
	if n, ok := r.store.(Notifier); ok {
		notify = n.Notify()
	}
	failing := false
	for {
		wait := r.pollInterval
		if free := r.free(); free >= threshold || free == r.workers {
			limit := min(free, r.claimBatch)
			now := r.clock.Now()
			if due := r.due.Load(); due != 0 && due <= now.UnixNano() {
				r.due.CompareAndSwap(due, 0)
			}
			calls, err := r.store.CallClaim(ctx, &CallClaimParams{
				Owner:      r.owner,
				Functions:  r.names,
				Limit:      limit,
				Now:        now,
				LeaseUntil: now.Add(r.leaseDuration),
			})
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				if !failing {
					r.log.Error("claim calls; retrying every poll interval", "err", err)
				}
				failing = true
			default:
				if failing {
					r.log.Info("claiming calls again")
				}
				failing = false
				r.startAll(calls)
				if len(calls) == limit {
					continue // there may be more
				}
			}
		}
		if due := r.due.Load(); due != 0 {
			wait = min(wait, max(0, time.Duration(due-r.clock.Now().UnixNano())))
		}
		timer := r.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.wakeCh:
		case <-notify:
		case <-timer.Chan():
		}
		timer.Stop()
	}
}

func (r *Runtime) startAll(calls []*Call) {
	if len(calls) == 0 {
		return
	}
	now := r.clock.Now()
	r.mu.Lock()
	for _, c := range calls {
		r.inflight[c.ID] = &inflight{attempt: c.Attempt, claimedAt: now}
	}
	r.mu.Unlock()
	for _, c := range calls {
		r.work <- c // never blocks: at most `workers` calls are in flight
	}
}

func (r *Runtime) worker() {
	defer r.workersWG.Done()
	for c := range r.work {
		if !r.stopping.Load() {
			r.execute(c)
		}
		r.mu.Lock()
		delete(r.inflight, c.ID)
		r.mu.Unlock()
		r.wake()
	}
}

// callContext is what a running call knows about itself; Gather reads and
// writes it through the context.
type callContext struct {
	rt       *Runtime
	call     *Call
	children [][]*Call // recorded children by gather
	next     int       // ordinal of the next Gather
	suspend  *suspension
}

type suspension struct {
	gather   int
	children []*Call
}

type ctxKey struct{}

func callFrom(ctx context.Context) *callContext {
	cc, _ := ctx.Value(ctxKey{}).(*callContext)
	return cc
}

// errSuspended is what Gather returns when the caller must stop and wait.
var errSuspended = errors.New("dispatch: call suspended until its gathered calls are final; return this error")

// CallInfo describes the call a durable function is running as.
type CallInfo struct {
	ID       string
	ParentID string
	// Attempt counts the runs of this call, 1 for the first.
	Attempt int
	// Failures counts the earlier attempts that failed and were retried.
	Failures  int
	CreatedAt time.Time
}

// CallFromContext returns the call a durable function runs as.
func CallFromContext(ctx context.Context) (CallInfo, bool) {
	cc := callFrom(ctx)
	if cc == nil {
		return CallInfo{}, false
	}
	c := cc.call
	return CallInfo{ID: c.ID, ParentID: c.ParentID, Attempt: c.Attempt, Failures: c.Failures, CreatedAt: c.CreatedAt}, true
}

func (r *Runtime) execute(c *Call) {
	// Store writes that record an outcome outlive a shutdown deadline: a
	// result that was produced should not be thrown away.
	storeCtx := context.WithoutCancel(r.runCtx)
	cc := &callContext{rt: r, call: c}
	if c.Gathers > 0 {
		children, err := r.store.CallListChildren(storeCtx, c.ID)
		if err != nil {
			r.finish(storeCtx, c, nil, fmt.Errorf("%w: load results of gathered calls: %v", ErrTemporary, err))
			return
		}
		cc.children = make([][]*Call, c.Gathers)
		for _, child := range children {
			if child.Gather < len(cc.children) {
				cc.children[child.Gather] = append(cc.children[child.Gather], child)
			}
		}
	}

	fn := r.funcs[c.Function]
	ctx := context.WithValue(r.runCtx, ctxKey{}, cc)
	output, err := r.run(ctx, fn, c)
	if r.runCtx.Err() != nil {
		// Cancelled by shutdown: Stop hands the call back untouched.
		return
	}
	if cc.suspend != nil {
		ok, err := r.store.CallSuspend(storeCtx, &CallSuspendParams{
			ID:       c.ID,
			Attempt:  c.Attempt,
			Gather:   cc.suspend.gather,
			Children: cc.suspend.children,
			Now:      r.clock.Now(),
		})
		switch {
		case err != nil:
			r.log.Error("store suspended call; it runs again when its lease expires", "call", c.ID, "err", err)
		case !ok:
			r.log.Warn("call was taken over while it ran; dropping its suspension", "call", c.ID, "attempt", c.Attempt)
		default:
			r.wake()
		}
		return
	}
	r.finish(storeCtx, c, output, err)
}

func (r *Runtime) run(ctx context.Context, fn AnyFunction, c *Call) (output []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("durable function panicked", "function", c.Function, "call", c.ID,
				"panic", p, "stack", string(debug.Stack()))
			output, err = nil, fmt.Errorf("%w: panic: %v", ErrPermanent, p)
		}
	}()
	return fn.run(ctx, c.Input)
}

// finish records the outcome of an attempt: done, failed, or retried later.
func (r *Runtime) finish(ctx context.Context, c *Call, output []byte, err error) {
	now := r.clock.Now()
	p := &CallFinishParams{ID: c.ID, Attempt: c.Attempt, Now: now}
	switch {
	case err == nil:
		p.State = StateDone
		p.Output = output
		p.Status = StatusOK
	default:
		p.Status = ErrorStatus(err)
		p.Error = err.Error()
		p.State = StateFailed
		if p.Status.Retryable() {
			hint, _ := retryAfterHint(err)
			if at, ok := r.policy.NextRetry(c.Failures+1, c.CreatedAt, now, hint); ok {
				p.State = StatePending
				p.RunAfter = at
			} else {
				p.Error = fmt.Sprintf("gave up after %d attempts: %s", c.Failures+1, p.Error)
			}
		}
		level := slog.LevelDebug
		if p.State == StateFailed {
			level = slog.LevelWarn
		}
		r.log.Log(ctx, level, "call attempt failed", "function", c.Function, "call", c.ID,
			"attempt", c.Attempt, "status", p.Status, "err", err, "retry", p.State == StatePending)
	}
	res, err := r.store.CallFinish(ctx, p)
	if err != nil {
		r.log.Error("store call outcome; the call runs again when its lease expires", "call", c.ID, "err", err)
		return
	}
	if !res.Applied {
		r.log.Warn("call was taken over while it ran; dropping its outcome", "call", c.ID, "attempt", c.Attempt)
		return
	}
	if res.ParentResumed {
		r.wake()
	}
	if p.State == StatePending {
		r.noteDue(p.RunAfter)
	}
}

// maintain renews the leases of long-running calls, returns expired leases to
// the store (the calls of a crashed process), and applies retention.
func (r *Runtime) maintain(ctx context.Context) {
	defer r.loops.Done()
	every := max(r.leaseDuration/3, 10*time.Millisecond)
	ticker := r.clock.NewTicker(every)
	defer ticker.Stop()
	var lastRetention time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.Chan():
		}
		now := r.clock.Now()
		r.renewLeases(ctx, now, every)
		n, err := r.store.CallLeaseRelease(ctx, &CallLeaseReleaseParams{Now: now})
		if err != nil && ctx.Err() == nil {
			r.log.Error("release expired leases", "err", err)
		}
		if n > 0 {
			r.log.Warn("calls whose lease expired run again", "calls", n)
			r.wake()
		}
		if now.Sub(lastRetention) >= time.Minute {
			lastRetention = now
			r.applyRetention(ctx, now)
		}
	}
}

func (r *Runtime) renewLeases(ctx context.Context, now time.Time, age time.Duration) {
	var ids []string
	r.mu.Lock()
	for id, f := range r.inflight {
		if now.Sub(f.claimedAt) >= age {
			ids = append(ids, id)
		}
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	err := r.store.CallLeaseRenew(ctx, &CallLeaseRenewParams{Owner: r.owner, IDs: ids, LeaseUntil: now.Add(r.leaseDuration)})
	if err != nil && ctx.Err() == nil {
		r.log.Error("renew leases", "calls", len(ids), "err", err)
		return
	}
	r.mu.Lock()
	for _, id := range ids {
		if f, ok := r.inflight[id]; ok {
			f.claimedAt = now
		}
	}
	r.mu.Unlock()
}

func (r *Runtime) applyRetention(ctx context.Context, now time.Time) {
	rules := []struct {
		keep   time.Duration
		failed bool
	}{{r.retention, false}, {r.failedKeep, true}}
	for _, rule := range rules {
		if rule.keep <= 0 {
			continue
		}
		for ctx.Err() == nil {
			n, err := r.store.CallDeleteFinished(ctx, &CallDeleteFinishedParams{
				Before: now.Add(-rule.keep), Failed: rule.failed, Limit: 1000,
			})
			if err != nil {
				if ctx.Err() == nil {
					r.log.Error("delete finished calls", "err", err)
				}
				return
			}
			if n < 1000 {
				break
			}
		}
	}
}
