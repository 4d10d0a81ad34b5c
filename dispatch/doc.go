/*
Package dispatch is a durable-functions runtime: the programming model of the
Dispatch SDK (Func, Dispatch, Gather, Await, Batch) together with the
scheduler that runs it, on a store of its own (an embedded SQLite file by
default, see dispatchsqlite).

# Model

Func wraps a plain Go function whose input and output are JSON. For
example, a service that hands each event it receives to several receivers
declares one function that publishes a message and one that handles an
event by gathering a publish per message:

	publish := dispatch.Func("publish", func(ctx context.Context, m Message) (Receipt, error) { ... })
	handle := dispatch.Func("handle", func(ctx context.Context, e Event) (any, error) {
		_, err := publish.Gather(ctx, messagesFor(e))
		return nil, err
	})
	rt, err := dispatch.New(&dispatch.Config{Store: store}, publish, handle)
	rt.Start(ctx)
	id, err := handle.Dispatch(ctx, event) // the call is durable when this returns

# Guarantees

  - Dispatch and Batch.Dispatch return only after the calls are committed to
    the store; a batch is stored whole or not at all.
  - Every call runs at least once, across crashes and restarts: a call is
    leased while it runs, and runs again if its process dies. Functions must
    therefore tolerate running twice; CallFromContext gives the call id to
    use as an idempotency key.
  - A failed attempt is classified (ErrorStatus). Timeouts, throttling,
    transport errors and errors wrapping ErrTemporary are retried with the
    RetryPolicy (exponential backoff with full jitter, honouring RetryAfter
    hints, within a budget); anything else is final. A call whose budget is
    spent ends as failed and stays in the store.
  - Gather holds no goroutine while it waits: the children are stored with
    the caller's suspension in one transaction, the caller stops, and runs
    again from the start when every child is final. Children ids derive from
    the caller's id, so they are never duplicated, and the children of a
    Gather are fixed the first time it runs.
  - Work committed by this process is claimed at once, without polling; the
    store is the source of truth for recovery and for other processes.

Time and the retry policy are injected through Config, so that tests control
both and never sleep.

# Stores

Store (with its optional capabilities DocStore, Notifier, StatsReporter and
CallScan) is the contract between the runtime and its storage; its parameters
and results are the Call* types here. dispatchsqlite and dispatchpg implement
it, and dispatchtest is the conformance suite both pass. What the two drivers
share beyond the contract (deduplication, the retention walk, the bookkeeping
of CallAttach) is in dispatch/internal/storeutil, which is not part of this
API.
*/
package dispatch
