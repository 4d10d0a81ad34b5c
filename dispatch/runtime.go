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

	"github.com/jonboulle/clockwork"
)

// DefaultWorkers is how many calls a runtime runs at once unless
// Config.Workers says otherwise: enough to keep many slow services busy,
// few enough that a process holds a bounded number of goroutines and
// connections. It is also how much new work is leased to this process as it
// is stored (Batch.Dispatch, Gather): with fewer slots than a busy process's
// calls waiting on their commit, new calls are stored unleased and claimed
// again, a second write each, and their parents resume from the store
// (docs/BENCHMARKS.md, issue 12's third pass).
const DefaultWorkers = 1024

// Config configures a Runtime. The zero value of every field but Store is a
// sensible default.
type Config struct {
	// Store keeps the calls. Required.
	Store Store
	// Owner names this process in leases. It must differ between processes
	// that share a store; the default is the host name, the process id and
	// a random suffix.
	Owner string
	// Workers is how many calls run at once in this process (default
	// DefaultWorkers).
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
	// The application decides what a trip means; it may, for example,
	// pause the key, so that Keys reports it Paused until someone resumes
	// it.
	OnKeyTrip func(key, reason string)
	// OnAttempt, when set, is told of every attempt whose outcome was
	// stored (see AttemptReport), in the goroutine that ran it, before that
	// goroutine takes other work: keep it short.
	OnAttempt       func(AttemptReport)
	BreakerFailures int
	BreakerWindow   time.Duration
	// DedupWindow is how long a DedupKey is remembered (default 24h).
	DedupWindow time.Duration
	// NoLocalCalls stores every child of a Gather when it is created, even
	// one this process runs at once (see Call.Local): for comparison, and
	// for a store that does not keep plans.
	NoLocalCalls bool
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
	dedupWindow   time.Duration
	onAttempt     func(AttemptReport)
	local         bool

	funcs map[string]AnyFunction
	names []string

	// What the runtime holds in memory, in three parts with a lock each.
	// A reservation takes the keys' lock, then the pool's (see keyLimiter);
	// no other lock is ever held together with another.
	pool    *pool       // worker slots: calls in flight here, slots promised
	keys    *keyLimiter // per-key limits and health
	results *results    // outcomes of children run here, for their parents

	// For the schedule goroutine (claim.go): what wakes it, and its own turn.
	wakeCh  chan struct{}
	backlog atomic.Bool  // the store may hold runnable calls nobody leased
	due     atomic.Int64 // earliest retry this process scheduled, unix nanoseconds; 0 when none
	keyTurn int          // rotates which key claims first; only the schedule goroutine uses it

	stats struct {
		claims, claimed, leasedOnCreate, eager, finished, retried, failed atomic.Int64
		resultsFromMemory, resultsFromStore, parentInputReads             atomic.Int64
		resumedInline, local                                              atomic.Int64
	}

	state      atomic.Int32
	stopping   atomic.Bool
	quit       chan struct{} // closed by Stop: workers return after their call
	loopCancel context.CancelFunc
	runCtx     context.Context
	runCancel  context.CancelFunc
	loops      sync.WaitGroup
	workersWG  sync.WaitGroup
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
		dedupWindow:   cfg.DedupWindow,
		results:       newResults(10000),
		funcs:         make(map[string]AnyFunction),
		wakeCh:        make(chan struct{}, 1),
		quit:          make(chan struct{}),
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
		r.workers = DefaultWorkers
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
	if r.dedupWindow <= 0 {
		r.dedupWindow = 24 * time.Hour
	}
	r.onAttempt = cfg.OnAttempt
	r.local = !cfg.NoLocalCalls
	r.pool = newPool(r.workers)
	r.keys = &keyLimiter{
		config:     cfg.Keys,
		workers:    r.workers,
		tripAfter:  cfg.BreakerFailures,
		tripWindow: cfg.BreakerWindow,
		onTrip:     cfg.OnKeyTrip,
		log:        r.log,
		keys:       make(map[string]*keyState),
	}
	if r.keys.config == nil {
		r.keys.config = func(string) KeyConfig { return KeyConfig{} }
	}
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
	// ParentInputReads counts the calls that read their parent's input
	// from the store (ParentInput): it was not at hand here.
	ParentInputReads int64
	// ResumedInline counts the parents run by their last child's worker
	// and stored done with it (Function.ResumeInline).
	ResumedInline int64
	// Local counts the children run as local calls (Call.Local): stored
	// only once their first attempt ended.
	Local int64
}

// Stats returns the runtime's counters.
func (r *Runtime) Stats() Stats {
	return Stats{
		Claims: r.stats.claims.Load(), Claimed: r.stats.claimed.Load(), LeasedOnCreate: r.stats.leasedOnCreate.Load(),
		Eager: r.stats.eager.Load(),
		Done:  r.stats.finished.Load(), Retried: r.stats.retried.Load(), Failed: r.stats.failed.Load(),
		ResultsFromMemory: r.stats.resultsFromMemory.Load(), ResultsFromStore: r.stats.resultsFromStore.Load(),
		ParentInputReads: r.stats.parentInputReads.Load(), ResumedInline: r.stats.resumedInline.Load(),
		Local: r.stats.local.Load(),
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
	if b, ok := r.store.(Buckets); ok {
		r.keys.mu.Lock()
		r.keys.bucket, r.keys.clock, r.keys.ctx, r.keys.onTokens = b, r.clock, loopCtx, r.signalBacklog
		r.keys.mu.Unlock()
	}
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
	r.keys.wg.Wait()
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

// Fail ends a call that is pending (waiting for a retry, or queued in its
// sequence) as failed for good, with reason as its error and the record of
// an attempt that says so: an operator skips the head of a blocked sequence
// (Call.OrderKey), which then moves on, as it does when a call is
// dead-lettered. It reports false, changing nothing, when the call is not
// pending (running now, final, or unknown): try again once its attempt
// ended.
func (r *Runtime) Fail(ctx context.Context, id, reason string) (bool, error) {
	now := r.clock.Now()
	c, err := r.store.CallTake(ctx, &CallTakeParams{ID: id, Owner: r.owner, Now: now, LeaseUntil: now.Add(r.leaseDuration)})
	if err != nil || c == nil {
		return false, err
	}
	p := &CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID, State: StateFailed, Error: reason,
		Status: StatusPermanent, Now: now, OrderKey: c.OrderKey,
		Record: &Attempt{CallID: c.ID, Attempt: c.Attempt, Started: now, Status: StatusPermanent, Error: reason}}
	res, err := r.store.CallFinish(ctx, p)
	if err != nil {
		// Taken and not finished: it runs again once its lease expires.
		return false, err
	}
	if c.ParentID != "" {
		r.results.forget(c.ParentID) // this outcome was not seen here
	}
	if res.Applied {
		r.signalBacklog() // the next of its sequence, or its parent
	}
	return res.Applied, nil
}

// KeysChanged tells the runtime that key configurations changed (a key was
// resumed, a limit raised): it looks for work it held back.
func (r *Runtime) KeysChanged() { r.signalBacklog() }

// KeyStatus returns the state of a key in this process.
func (r *Runtime) KeyStatus(key string) KeyStatus { return r.keys.status(key) }

// running reports whether the runtime runs calls: started, not stopping.
func (r *Runtime) running() bool {
	return r.state.Load() == stateStarted && !r.stopping.Load()
}
