package dispatch

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// State is where a call is in its life:
//
//	pending -> running -> done | failed
//	running -> pending            (retry after a retryable failure, or a lost lease)
//	running -> waiting -> pending (suspended in Gather until every child is final)
type State int

// The states. Their numeric values are stored.
const (
	StatePending State = iota
	StateRunning
	StateWaiting
	StateDone
	StateFailed
)

var stateNames = [...]string{"pending", "running", "waiting", "done", "failed"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Final reports whether a call in this state will never run again by itself.
func (s State) Final() bool { return s == StateDone || s == StateFailed }

// Call is one durable function call as the store keeps it.
type Call struct {
	// ID is unique and never reused. Top-level calls get time-ordered ids
	// (UUIDv7); a child's id is its parent's id followed by
	// ".<gather>.<index>", so a parent that runs again derives the same ids.
	ID       string
	Function string
	// Key groups calls that share a limit: the runtime runs at most so
	// many calls of one key at once, can pause a key, and claims backlog
	// key by key so that one key's backlog never hides another's. Calls
	// that each request one of many services can be keyed by the service.
	// Empty for calls without one.
	Key string
	// OrderKey, on a call with a Key, puts it in a sequence (ordered
	// delivery): of the calls of one Key and OrderKey that are not final,
	// only the one with the lowest id, the head, may run; the others are
	// stored pending but parked (RunAfter is Parked, see Queued), and
	// the store unparks the next one in the transaction that makes the
	// head final. So a failing head holds its sequence back until it
	// succeeds or fails for good, and other sequences run meanwhile. A
	// call that carries an order key never runs as a local call. Empty
	// for a call that runs in no order. The order is that of the ids of
	// the calls stored: a call stored once a later one of its sequence has
	// started waits for its turn after the calls stored before it, so a
	// producer that needs a strict order stores a sequence's calls one
	// after the other (each once the previous is durable), or together.
	// A call must not wait (Gather) for a call of its own sequence: the
	// child would wait for its parent, which waits for it.
	OrderKey string
	// OutOfOrder marks a call of an ordered key that runs outside its
	// sequence: re-driven after it failed for good (its sequence moved on
	// when it failed), or attached after it ran (a replay). Its OrderKey is
	// then empty; the application tells the receiver (fanout: a header).
	OutOfOrder bool
	// Input is the JSON encoding of the function's input, byte for byte.
	Input []byte
	State State
	// Attempt counts the times the call was claimed. A worker completes the
	// call only while the attempt it claimed is still current, which fences
	// off a worker whose lease expired and was taken over.
	Attempt int
	// Failures counts the attempts that ended in an error; the retry
	// policy reads it.
	Failures int
	// BudgetStart is when the call's retry budget started: its creation,
	// or the last time it was re-driven after failing for good.
	BudgetStart time.Time
	// RunAfter is when a pending call becomes runnable.
	RunAfter time.Time
	// LeaseOwner and LeaseExpires are set while the call runs. A call whose
	// lease expired runs again (at-least-once).
	LeaseOwner   string
	LeaseExpires time.Time
	// ParentID is the call that gathered this one, empty for a top-level
	// call; Gather and Index place it among its siblings.
	ParentID string
	Gather   int
	Index    int
	// Gathers is how many Gather (or Await) points the call has suspended
	// on; its children of gather g have Gather == g.
	Gathers int
	// Waiting is, while the call is waiting, how many of its children are
	// not final yet.
	Waiting int
	// Output is the JSON encoding of the result of a done call.
	Output []byte
	// Error is the last error of the call, kept for the record after a retry
	// and as the reason of a failed call; Status classifies it.
	Error  string
	Status Status
	// Local, on a child given to CallInsertMany or CallSuspend leased to
	// this process (State running), makes it a local call: it gets no row
	// of its own until it ends. The store records it in its parent's plan
	// instead (its id, function, key, tag and input, in the same write as
	// the parent), leases the parent to the child's LeaseOwner until its
	// LeaseExpires, and stores the child with its outcome when its attempt
	// ends (CallFinishParams.Local): one row written for a call that
	// succeeds at once, where a stored child costs an insert, its finish
	// and its parent's count. Until then the store shows the child, derived
	// from the plan, as running (CallGet, CallListChildren, CallList,
	// CallCounts). When the parent's lease ends unrenewed (a crash) or is
	// released (CallLeaseRelease), the planned children that have no row yet
	// are stored pending, to run again with the same ids, and the plan is
	// dropped. Its siblings given without Local are stored as usual.
	Local bool
	// Tag labels a call for an application's listings (fanout tags an
	// event with its type); empty for none. The runtime stores it and reads
	// it back, nothing more.
	Tag string
	// Meta is a small record an application keeps with a call (fanout: the
	// trace context of the request that brought an event). A child starts
	// with its parent's; a running call finds it in CallFromContext.
	Meta []byte
	// DedupKey, on a top-level call being inserted, makes the insert skip
	// it if a call stored since CallInsertParams.DedupSince has the same
	// key. It is not read back.
	DedupKey string
	// ParentInput is, on a child the runtime is about to run, its parent's
	// Input: the same bytes, not a copy, when the parent ran here; read
	// with the child when a store claims it (CallClaim fills it; a store
	// that cannot leaves it nil). It is not stored. A function reads it
	// with ParentInput(ctx), which asks the store when it is nil, so that a
	// child need not carry a copy of what its parent holds (fanout: the
	// event a delivery sends).
	ParentInput []byte
	CreatedAt   time.Time
	UpdatedAt   time.Time

	// gathered are the children of a parent resumed by the finish of its
	// last child, when the store returned them with it
	// (CallFinishResult.ParentChildren): the parent runs without listing
	// them.
	gathered []*Call
	// parentAttempt is, on a local call, the attempt of its parent that
	// planned it: its finish is fenced on it.
	parentAttempt int
}

// Parked is the RunAfter of a call that waits for its turn in its sequence
// (Call.OrderKey): far enough ahead that no claim reaches it, and within
// what both stores keep (Unix nanoseconds, PostgreSQL timestamps). A store
// compares with it (>=), never for equality.
var Parked = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

// Queued reports whether c waits for the calls before it in its sequence
// (Call.OrderKey) to be final.
func (c *Call) Queued() bool {
	return c.OrderKey != "" && c.State == StatePending && !c.RunAfter.Before(Parked)
}

// Attempt is the record of one failed attempt of a call. A successful
// attempt's record is the call itself: its Output and UpdatedAt.
type Attempt struct {
	CallID   string
	Attempt  int
	Started  time.Time
	Duration time.Duration
	Status   Status
	Error    string
	// Detail is what the failure said of itself, as JSON (see Detailer).
	Detail []byte
}

// Doc is a small JSON document that an application keeps beside its calls,
// in the same database (an application keeps its own records there), so that every
// process sharing the store sees the same ones. Version is incremented by
// every update, which must name the version it replaces.
type Doc struct {
	Kind      string
	ID        string
	Data      []byte
	Version   int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// ErrOutcomeUnknown is wrapped by a Store's error when the change may have
// been applied: the commit was sent and its answer lost, and looking at the
// database afterwards failed too. What was stored is then at-least-once:
// the caller may repeat it (a DedupKey makes the repeat harmless).
var ErrOutcomeUnknown = errors.New("dispatch: the store cannot tell whether the change was applied")

// Errors of documents; a missing one is ErrNotFound.
var (
	ErrDocExists   = errors.New("dispatch: document exists")
	ErrDocConflict = errors.New("dispatch: document changed since it was read")
)

// Store keeps calls durable. The runtime owns the state machine; a store
// applies each transition atomically and says whether it applied.
//
// Every method that changes state must be durable when it returns nil: the
// change is on stable storage (fsynced, or committed to a database that
// promises as much) and survives a crash of the process and of the machine.
// When it returns an error, nothing of that call was changed, unless the
// error wraps ErrOutcomeUnknown: the store could not learn whether its last
// commit went through (a connection lost during COMMIT, and the database
// out of reach while it tried to look).
//
// Implementations must be safe for concurrent use and must pass
// dispatchtest.Exercise.
type Store interface {
	// CallInsertMany commits calls all together or not at all, each as
	// given: pending (runnable at RunAfter); running, leased to LeaseOwner
	// until LeaseExpires (a process that stores work in order to run it
	// itself saves claiming it); or with the outcome of a first attempt
	// already made (done, failed, a retry at RunAfter, or waiting on
	// Waiting children stored in the same call). Inserting an id that
	// exists is an error and inserts nothing.
	//
	// A top-level call whose DedupKey was given to a call stored at or
	// after DedupSince is a duplicate: it is not stored, nor are the calls
	// of the same insert whose ParentID is its id. The result has, for each
	// call, its own id, or for a duplicate the id of the call it repeats.
	//
	// A pending call with an OrderKey is parked (RunAfter Parked) when
	// another call of its Key and OrderKey is not final, stored before or
	// with a lower id in the same insert; it keeps its RunAfter when it is
	// its sequence's head. A call with an OrderKey is never given Local.
	CallInsertMany(ctx context.Context, params *CallInsertParams) ([]string, error)

	// CallClaim leases up to Limit runnable calls of one Key (pending,
	// RunAfter <= Now, Function among Functions) to Owner until
	// LeaseUntil, oldest RunAfter first, increments their Attempt and
	// returns them running, each with its parent's Input in ParentInput
	// and its OrderKey and OutOfOrder.
	CallClaim(ctx context.Context, params *CallClaimParams) ([]*Call, error)

	// CallKeys returns the keys that have runnable calls (pending, RunAfter
	// <= Now), in no particular order. It must cost about one index probe
	// per key, whatever the backlog.
	CallKeys(ctx context.Context, now time.Time) ([]string, error)

	// CallLeaseRenew extends the leases of the given calls that Owner still
	// holds: running calls, and waiting parents of local calls (their
	// plan's lease). Calls it no longer holds are skipped.
	CallLeaseRenew(ctx context.Context, params *CallLeaseRenewParams) error

	// CallLeaseRelease returns running calls to pending: those of Owner
	// when Owner is set (a clean shutdown hands its calls back), and every
	// call whose lease expired before Now otherwise. The plans of local
	// calls (Call.Local) leased so are dropped the same way: their children
	// without a row are stored pending, and their parent waits for its
	// children not final. It returns how many calls it made pending.
	CallLeaseRelease(ctx context.Context, params *CallLeaseReleaseParams) (int, error)

	// CallSuspend parks a running call in a Gather: if the call is still
	// running at Attempt, it becomes waiting, its Gathers becomes Gather+1,
	// and Children are inserted (ids that exist are kept as they are). It
	// returns false, changing nothing, when the attempt is no longer current.
	CallSuspend(ctx context.Context, params *CallSuspendParams) (bool, error)

	// CallFinish ends an attempt of a running call: State is StateDone,
	// StateFailed, or StatePending to retry at RunAfter (or to snooze:
	// Snooze set, Failures unchanged). It applies only while the call is
	// running at Attempt, and then stores Record, if set, as the attempt's
	// record. When a child (ParentID is set) becomes final, its parent's
	// Waiting count drops; at zero the parent becomes runnable: leased to
	// ResumeOwner (running, Attempt incremented) and returned as Parent
	// when ResumeOwner is set, pending otherwise.
	CallFinish(ctx context.Context, params *CallFinishParams) (*CallFinishResult, error)

	// CallRedrive makes failed calls runnable again: each of IDs that is
	// failed becomes pending at Now, its retry budget starting again
	// (Failures 0, BudgetStart Now). Its parent, waiting or failed, waits
	// for it again; a call whose parent is pending or running (about to
	// finish) is skipped, and a failed parent re-driven with its own
	// children waits for them instead of running again (whatever the order
	// of IDs). It returns the ids it re-drove, in the order of IDs. A call
	// with an OrderKey comes back out of its sequence, which moved on when
	// it failed: its OrderKey is emptied and OutOfOrder set.
	CallRedrive(ctx context.Context, params *CallRedriveParams) ([]string, error)

	// CallAttach gives calls new children after they ran (see attach.go):
	// in one transaction, for each parent of Calls, the children that
	// Unless does not skip are inserted as a new gather of it (ordinal its
	// Gathers, which grows by one), pending at Now with the parent's Meta,
	// and the parent waits for them: waiting with Waiting grown by their
	// number if it was waiting, else (done, failed, or pending to run again
	// after its children) waiting for them alone. A parent that is running,
	// or pending with no Gathers yet (its first attempt is to come), is
	// busy and gets nothing. The result says, per child in order, what
	// was done.
	CallAttach(ctx context.Context, params *CallAttachParams) ([]AttachResult, error)

	// CallTake leases one pending call, whatever its RunAfter (a parked
	// one included), to Owner until LeaseUntil, as a claim would, and
	// returns it running; nil when it is not pending (running, final, or
	// unknown). An operator uses it to end a call that is not running
	// (Runtime.Skip).
	CallTake(ctx context.Context, params *CallTakeParams) (*Call, error)

	// CallOrderHeads returns, for the sequences of one Key (see
	// Call.OrderKey) whose order key comes after After, in order-key order,
	// up to Limit: the head of each (its lowest id not final, without its
	// Input) and how many calls are queued behind it. With Blocked, only
	// the sequences whose head has failed at least once and is not final
	// (retrying, or running a retry). It costs a walk of the key's calls
	// not final that carry an order key.
	CallOrderHeads(ctx context.Context, params *CallOrderHeadsParams) ([]*OrderHead, error)

	// CallGet returns the call with this id, or ErrNotFound.
	CallGet(ctx context.Context, id string) (*Call, error)

	// CallListChildren returns the children of a call ordered by Gather and
	// Index, without their Input: the parent reads their outcomes, and the
	// input is the bulk of a row.
	CallListChildren(ctx context.Context, parentID string) ([]*Call, error)

	// CallList returns calls of one function in one state, optionally of
	// one key and created in a time range, ordered by id after the cursor
	// After, without their Input. It is efficient for failed calls by key
	// (the failed calls of one service); other states may scan.
	CallList(ctx context.Context, params *CallListParams) ([]*Call, error)

	// CallAttempts returns the recorded attempts of a call, oldest first.
	CallAttempts(ctx context.Context, callID string) ([]*Attempt, error)

	// CallDeleteFinished deletes up to Limit top-level calls that are done
	// (failed, when Failed is set) and were created before Before, together
	// with all their descendants, their attempts and their dedup keys. It
	// walks top-level calls in the order they were stored (which is their
	// order of creation, but for calls stored at the same moment) and stops
	// at the first created at or after Before, so that it needs no index on
	// age. It returns how many top-level calls it deleted; fewer than Limit
	// means none is left before that point.
	CallDeleteFinished(ctx context.Context, params *CallDeleteFinishedParams) (int, error)

	// CallCounts counts the calls by function and state. It may read the
	// whole table: for checks and occasional reports, not for every request.
	CallCounts(ctx context.Context) ([]CallCount, error)

	// CallBacklog counts the pending calls by key (runnable now or later:
	// retries waiting for their time count too), keys in order, only those
	// with a backlog. It needs only the index of pending calls by key, in
	// time proportional to the backlog: for a metrics scrape, not for
	// every request.
	CallBacklog(ctx context.Context) ([]KeyCount, error)

	// CallRewriteInputs rewrites, in one transaction, the inputs of up to
	// Limit calls of Function that have a parent, those whose ids come after
	// After, in id order: each is given to Rewrite with its ParentInput,
	// ParentID, Key and State, and its stored input is replaced when Rewrite
	// says so. It returns how many inputs it replaced and the id to go on
	// after, "" once none is left; a driver may leave calls that other
	// transactions hold for a later call (Held). An application uses it to
	// change how it stores its inputs, page by page, while the runtime runs
	// (fanout: a delivery that carried a copy of its event now reads it
	// from its parent): Rewrite must return an input that the function
	// reads as it read the old one, since a call may be running with the
	// old one.
	CallRewriteInputs(ctx context.Context, params *CallRewriteInputsParams) (*CallRewriteInputsResult, error)

	// Close releases the store. Calls made after Close fail.
	Close() error
}

// DocStore keeps an application's documents beside its calls. The runtime
// does not use it; the drivers implement it so that an application needs no
// second database, and dispatchtest.Exercise checks it.
type DocStore interface {
	// DocCreate stores a new document at version 1, or returns
	// ErrDocExists.
	DocCreate(ctx context.Context, doc *Doc) error
	// DocGet returns a document, or ErrNotFound.
	DocGet(ctx context.Context, kind, id string) (*Doc, error)
	// DocList returns the documents of a kind, ordered by id.
	DocList(ctx context.Context, kind string) ([]*Doc, error)
	// DocUpdate replaces a document's Data if its stored version is
	// doc.Version, and stores it at doc.Version+1; ErrDocConflict if the
	// version differs, ErrNotFound if there is none.
	DocUpdate(ctx context.Context, doc *Doc) error
	// DocDelete deletes a document, or returns ErrNotFound.
	DocDelete(ctx context.Context, kind, id string) error
}

// ManyFinisher is implemented by stores that can store several finishes
// in one operation: the runtime stores the finishes of local calls of one
// parent that end together with it, one write instead of one each.
type ManyFinisher interface {
	// CallFinishMany applies each of params as CallFinish would, in
	// order, in one transaction, and returns their results in the same
	// order. An error means none was applied (but for ErrOutcomeUnknown).
	CallFinishMany(ctx context.Context, params []*CallFinishParams) ([]*CallFinishResult, error)
}

// StatsReporter is implemented by stores that count their work, for an
// application's metrics and logs.
type StatsReporter interface {
	StoreStats() StoreStats
}

// StoreStats counts a store's work since it was opened.
type StoreStats struct {
	// Commits is the number of transactions its writer committed, and Ops
	// the operations they carried: Ops/Commits is how many operations
	// share a commit (and an fsync).
	Commits, Ops int64
	// Replays counts group commits replayed one operation at a time after
	// one of them failed, and ConnWaits the callers that waited for a
	// database connection; zero where the store has no such thing.
	Replays, ConnWaits int64
	// Rows counts the rows written by committed transactions, by kind: a
	// table and what was done to it ("calls inserted", "calls updated",
	// "attempts inserted", ...). A rolled-back group that is replayed
	// counts what its replay wrote.
	Rows map[string]int64
}

// Notifier is implemented by stores that learn of work committed by other
// processes (another replica on the same database). The runtime claims when
// the channel fires, instead of waiting for its next poll.
type Notifier interface {
	Notify() <-chan struct{}
}

// CallCount is one line of Store.CallCounts.
type CallCount struct {
	Function string
	State    State
	N        int64
}

// KeyCount is one line of Store.CallBacklog.
type KeyCount struct {
	Key string
	N   int64
}

// CallInsertParams are the arguments of Store.CallInsertMany.
type CallInsertParams struct {
	Calls      []*Call
	DedupSince time.Time
}

// CallClaimParams are the arguments of Store.CallClaim.
type CallClaimParams struct {
	Key        string
	Owner      string
	Functions  []string
	Limit      int
	Now        time.Time
	LeaseUntil time.Time
}

// CallLeaseRenewParams are the arguments of Store.CallLeaseRenew.
type CallLeaseRenewParams struct {
	Owner      string
	IDs        []string
	LeaseUntil time.Time
}

// CallLeaseReleaseParams are the arguments of Store.CallLeaseRelease.
type CallLeaseReleaseParams struct {
	// Owner, when set, releases this owner's leases, whatever their expiry.
	Owner string
	// Now releases, when Owner is empty, every lease that expired before it.
	Now time.Time
}

// CallSuspendParams are the arguments of Store.CallSuspend.
type CallSuspendParams struct {
	ID       string
	Attempt  int
	Gather   int
	Children []*Call
	Now      time.Time
}

// CallFinishParams are the arguments of Store.CallFinish.
type CallFinishParams struct {
	ID      string
	Attempt int
	// ParentID is the call's parent, empty for a top-level call.
	ParentID string
	// State is StateDone, StateFailed or StatePending (a retry).
	State State
	// Output is kept for a done call.
	Output []byte
	// Error and Status describe the failure of a failed or retried call.
	Error  string
	Status Status
	// RunAfter is when a retried call runs again.
	RunAfter time.Time
	Now      time.Time
	// ResumeOwner, when set, leases a parent that this finish makes
	// runnable to this owner until ResumeLeaseUntil.
	ResumeOwner      string
	ResumeLeaseUntil time.Time
	// Snooze, with StatePending, reschedules the call without counting a
	// failure: it was not tried (its key was paused, say).
	Snooze bool
	// Record, when set, is stored as the record of this attempt.
	Record *Attempt
	// Local, when set, is the local call (Call.Local) this finish ends, as
	// it was planned: it has no row yet, and gets one with this outcome,
	// only while its parent is still waiting at ParentAttempt and leased to
	// Local.LeaseOwner (else nothing is applied: the parent's lease was
	// lost, and its plan's children were stored to run again). A row of the
	// call that exists already (stored when its parent's plan was dropped)
	// is finished as a stored call, if it is still running at Attempt and
	// leased to Local.LeaseOwner. When this is the last planned child
	// without a row, the plan is complete: the parent's lease and plan are
	// dropped, and its Waiting becomes the number of its children not final
	// (at zero, it is resumed or finished as with a stored call's finish).
	Local         *Call
	ParentAttempt int
	// OrderKey is the call's (Call.OrderKey): when this finish makes it
	// final, the next call of its sequence is unparked (RunAfter Now) in
	// the same transaction.
	OrderKey string
	// FinishParent, for a final child whose parent is top-level, finishes
	// the parent done with ParentOutput instead of making it runnable, when
	// this is the last child it waited for: its Attempt is incremented (the
	// run the runtime made of it, before this finish, with its children's
	// outcomes) and no lease is taken. When other children are still to
	// come, the child is counted off as usual and ParentOutput is dropped.
	// ParentGathers is the parent's number of gathers that run saw: if the
	// stored parent has more (children were attached to it since, by
	// CallAttach, possibly in another process, so the run missed their
	// outcomes), ParentOutput is dropped too and the parent is made
	// runnable as without FinishParent.
	FinishParent  bool
	ParentOutput  []byte
	ParentGathers int
}

// CallFinishResult says what CallFinish did.
type CallFinishResult struct {
	// Applied is false when the attempt was no longer current (the lease was
	// lost and the call taken over): nothing changed.
	Applied bool
	// ParentResumed is true when this was the last child its parent waited
	// for: the parent is now runnable.
	ParentResumed bool
	// Parent is the resumed parent, running and leased to ResumeOwner, when
	// one was given.
	Parent *Call
	// ParentChildren, with Parent, are its children as CallListChildren
	// would list them once this finish is stored (ordered by gather and
	// index; ID, ParentID, Gather, Index, State, Status, Error and Output
	// set), when the store read them in the same transaction: the runtime
	// then runs the parent without listing them. Optional: nil, and the
	// runtime lists them.
	ParentChildren []*Call
	// ParentFinished is true when this was the last child its parent
	// waited for and the parent was finished with ParentOutput
	// (FinishParent); ParentResumed is then false.
	ParentFinished bool
}

// CallTakeParams are the arguments of Store.CallTake.
type CallTakeParams struct {
	ID         string
	Owner      string
	Now        time.Time
	LeaseUntil time.Time
}

// CallOrderHeadsParams are the arguments of Store.CallOrderHeads.
type CallOrderHeadsParams struct {
	Key     string
	Blocked bool
	// After is the cursor: only order keys greater than it.
	After string
	Limit int
}

// OrderHead is one sequence of Store.CallOrderHeads.
type OrderHead struct {
	OrderKey string
	// Head is the sequence's first call not final, without its Input.
	Head *Call
	// Queued counts the calls parked behind it.
	Queued int
}

// CallRedriveParams are the arguments of Store.CallRedrive.
type CallRedriveParams struct {
	IDs []string
	Now time.Time
}

// CallListParams are the arguments of Store.CallList.
type CallListParams struct {
	Function string
	State    State
	// Key, when set, keeps only calls of this key.
	Key *string
	// CreatedAfter and CreatedBefore bound the calls' creation; zero is
	// unbounded.
	CreatedAfter, CreatedBefore time.Time
	// After is the cursor: only ids greater than it.
	After string
	Limit int
}

// CallDeleteFinishedParams are the arguments of Store.CallDeleteFinished.
type CallDeleteFinishedParams struct {
	Before time.Time
	Failed bool
	Limit  int
}

// CallRewriteInputsParams are the arguments of Store.CallRewriteInputs.
type CallRewriteInputsParams struct {
	Function string
	// After is the cursor: only ids greater than it.
	After string
	Limit int
	// Rewrite returns a call's new input and true, or false to leave it.
	// It runs inside the store's transaction: it must be quick, and may
	// run more than once for the same call.
	Rewrite func(c *Call) ([]byte, bool)
}

// CallRewriteInputsResult says what Store.CallRewriteInputs did.
type CallRewriteInputsResult struct {
	Rewritten int
	// Next is the cursor of the next page, "" when none is left.
	Next string
	// Held is true when calls of the page were held by other transactions
	// and left: go on from Next (then possibly After itself, or "") after
	// a pause.
	Held bool
}
