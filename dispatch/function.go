package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Function is a durable function: a plain Go function whose calls are stored
// before they run, retried on their own until they succeed or their budget is
// spent, and that can fan out with Gather. Its input and output travel as
// JSON, so plain structs work.
//
// A Function does nothing until it is registered with a Runtime.
type Function[I, O any] struct {
	name         string
	fn           func(context.Context, I) (O, error)
	rt           *Runtime
	eager        bool
	resumeInline bool
}

// Func declares a durable function. name identifies its calls in the store:
// keep it stable across releases, or calls stored under the old name will find
// no function to run them.
func Func[I, O any](name string, fn func(ctx context.Context, in I) (O, error)) *Function[I, O] {
	return &Function[I, O]{name: name, fn: fn}
}

// Name returns the function's name.
func (f *Function[I, O]) Name() string { return f.name }

// Eager makes Dispatch and Batch.Dispatch run the first attempt of each call
// of f right away, in the caller's goroutine, and store the call together
// with the outcome of that attempt (done, failed, a retry, or suspended with
// the children of its first Gather) in the one transaction that stores it.
// A call then costs one write instead of two or three, and its children start
// as soon as the caller has its answer.
//
// Use it only for a function that changes nothing outside the runtime before
// its first Gather (it may read): if the store fails, the attempt will have
// run for a call that was never stored. The attempt runs under the caller's
// context. Call Eager before registering f.
func (f *Function[I, O]) Eager() *Function[I, O] {
	f.eager = true
	return f
}

func (f *Function[I, O]) isEager() bool { return f.eager }

// ResumeInline lets the runtime run a call of f again, once the last child
// of its Gather has run here, in that child's worker and before that child's
// outcome is stored, and store the call as done in the same write, when
// that run returns without an error and without gathering again: the
// resumed call then costs no write, no claim and no hand-off of its own. It
// applies to top-level calls whose children all finished in this process;
// otherwise, or when that run fails, the call resumes as usual. Use it for
// a function that, after its Gather, only makes its result of its
// children's: its run may be made and dropped (the store found other
// children to wait for), and then made again, as at-least-once allows.
// Call ResumeInline before registering f.
func (f *Function[I, O]) ResumeInline() *Function[I, O] {
	f.resumeInline = true
	return f
}

func (f *Function[I, O]) isResumeInline() bool { return f.resumeInline }

// BuildCall encodes a call of f with this input without dispatching it, to
// add it to a Batch.
func (f *Function[I, O]) BuildCall(in I) (*Call, error) {
	input, err := encode(in)
	if err != nil {
		return nil, fmt.Errorf("dispatch: encode input of %s: %w", f.name, err)
	}
	return &Call{Function: f.name, Key: keyOf(in), OrderKey: orderKeyOf(in), Input: input}, nil
}

// Keyed is implemented by inputs that carry a key (see Call.Key): the calls
// made with them share the key's limits. For example, calls that each make a
// request to one of many services can be keyed by the service, so that each
// service gets its own concurrency limit, rate and circuit breaker.
type Keyed interface {
	DispatchKey() string
}

// OrderKeyed is implemented by inputs that put their call in a sequence
// of its key (see Call.OrderKey): such calls of one key and order key run
// one at a time, in the order of their ids. An empty order key is none.
type OrderKeyed interface {
	DispatchOrderKey() string
}

func orderKeyOf(v any) string {
	if k, ok := v.(OrderKeyed); ok {
		return k.DispatchOrderKey()
	}
	return ""
}

func keyOf(v any) string {
	if k, ok := v.(Keyed); ok {
		return k.DispatchKey()
	}
	return ""
}

// Dispatch stores a call of f and returns its id once the call is durable.
// The call runs later, on this process or, with a shared store, another.
func (f *Function[I, O]) Dispatch(ctx context.Context, in I) (string, error) {
	if f.rt == nil {
		return "", fmt.Errorf("%w: %s", ErrNotRegistered, f.name)
	}
	call, err := f.BuildCall(in)
	if err != nil {
		return "", err
	}
	ids, err := f.rt.dispatch(ctx, []*Call{call})
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// Gather calls f once per input, from inside another durable function, and
// returns the outputs in input order once every call is final.
//
// The first time the caller reaches a Gather, the child calls are stored
// together with the caller's suspension, and Gather returns an error that the
// caller must return: the caller stops running and holds no goroutine while it
// waits. When the last child is final the caller runs again from the start;
// this time Gather returns the recorded results at once. Child ids derive from
// the caller's id, so running again never duplicates a child, and the children
// are those of the first time even if the caller would now ask for others.
//
// Each child is retried on its own. If any child failed for good, Gather
// returns the outputs of the others with a *GatherError naming the failures.
func (f *Function[I, O]) Gather(ctx context.Context, inputs []I) ([]O, error) {
	cc := callFrom(ctx)
	if cc == nil {
		return nil, ErrNotInCall
	}
	if cc.suspend != nil {
		return nil, errSuspended
	}
	if f.rt != cc.rt {
		return nil, fmt.Errorf("%w: %s", ErrNotRegistered, f.name)
	}
	gather := cc.next
	cc.next++

	if gather < cc.call.Gathers {
		return gatherResults[O](cc, gather, len(inputs))
	}
	if len(inputs) == 0 {
		return []O{}, nil
	}

	now := cc.rt.clock.Now()
	children := make([]*Call, len(inputs))
	for i, in := range inputs {
		input, err := encode(in)
		if err != nil {
			return nil, fmt.Errorf("dispatch: encode input %d of %s: %w", i, f.name, err)
		}
		children[i] = &Call{
			ID:        childID(cc.call.ID, gather, i),
			Function:  f.name,
			Key:       keyOf(in),
			OrderKey:  orderKeyOf(in),
			Input:     input,
			ParentID:  cc.call.ID,
			Gather:    gather,
			Index:     i,
			Meta:      cc.call.Meta,
			RunAfter:  now,
			CreatedAt: now,
			// Not stored: the child reads it with ParentInput, from
			// here when it runs here.
			ParentInput: cc.call.Input,
		}
	}
	cc.suspend = &suspension{gather: gather, children: children}
	return nil, errSuspended
}

// Await calls f once from inside another durable function and returns its
// output: a Gather of one. The error is the child's own error when it failed.
func (f *Function[I, O]) Await(ctx context.Context, in I) (O, error) {
	var zero O
	out, err := f.Gather(ctx, []I{in})
	if err != nil {
		if ge, ok := err.(*GatherError); ok && len(ge.Failed) == 1 {
			return zero, &ge.Failed[0]
		}
		return zero, err
	}
	if len(out) == 0 {
		return zero, nil
	}
	return out[0], nil
}

func gatherResults[O any](cc *callContext, gather, asked int) ([]O, error) {
	recorded := cc.children[gather]
	if len(recorded) != asked {
		cc.rt.log.Warn("gather asks for other calls than it recorded; returning the recorded ones",
			"call", cc.call.ID, "gather", gather, "recorded", len(recorded), "asked", asked)
	}
	out := make([]O, len(recorded))
	var failed []ChildError
	for i, child := range recorded {
		if child.State != StateDone {
			failed = append(failed, ChildError{Index: i, CallID: child.ID, Status: child.Status, Message: child.Error})
			continue
		}
		if err := decode(child.Output, &out[i]); err != nil {
			failed = append(failed, ChildError{Index: i, CallID: child.ID, Status: StatusInvalidResponse,
				Message: "decode output: " + err.Error()})
		}
	}
	if len(failed) > 0 {
		return out, &GatherError{Total: len(recorded), Failed: failed}
	}
	return out, nil
}

// GatherError is returned by Gather when some of its calls failed for good.
// It is permanent: running the caller again would only return it again.
type GatherError struct {
	Total  int
	Failed []ChildError
}

func (e *GatherError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d calls failed", len(e.Failed), e.Total)
	for i, f := range e.Failed {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failed)-i)
			break
		}
		b.WriteString("; ")
		b.WriteString(f.Error())
	}
	return b.String()
}

// Status makes a GatherError permanent.
func (e *GatherError) Status() Status { return StatusPermanent }

// ChildError is the failure of one call of a Gather. Status is how the child
// failed; to the caller, the failure is permanent whatever it was, since the
// child already had all its retries.
type ChildError struct {
	Index   int
	CallID  string
	Status  Status
	Message string
}

func (e *ChildError) Error() string {
	return fmt.Sprintf("call %d (%s): %s", e.Index, e.CallID, e.Message)
}

// childID derives the id of the index-th child of a parent's gather-th
// Gather. It is deterministic, so a parent that runs again finds its
// children instead of creating new ones.
func childID(parent string, gather, index int) string {
	b := make([]byte, 0, len(parent)+8)
	b = append(b, parent...)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(gather), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(index), 10)
	return string(b)
}

// AnyFunction is any *Function, whatever its types: what New and Register
// take. Only this package implements it.
type AnyFunction interface {
	Name() string
	isEager() bool
	isResumeInline() bool
	bind(*Runtime) error
	run(ctx context.Context, input []byte) ([]byte, error)
}

func (f *Function[I, O]) bind(rt *Runtime) error {
	if f.rt != nil && f.rt != rt {
		return fmt.Errorf("dispatch: function %s is registered with another runtime", f.name)
	}
	f.rt = rt
	return nil
}

func (f *Function[I, O]) run(ctx context.Context, input []byte) ([]byte, error) {
	var in I
	if err := decode(input, &in); err != nil {
		return nil, fmt.Errorf("%w: decode input of %s: %v", ErrInvalidArgument, f.name, err)
	}
	out, err := f.fn(ctx, in)
	if err != nil {
		return nil, err
	}
	output, err := encode(out)
	if err != nil {
		return nil, fmt.Errorf("%w: encode output of %s: %v", ErrInvalidResponse, f.name, err)
	}
	return output, nil
}

// encode returns v as JSON. A json.RawMessage is kept byte for byte, and a
// top-level json.Marshaler's bytes are kept as it wrote them (encoding/json
// would compact them): a function that relays its input passes on the
// bytes it was given.
func encode(v any) ([]byte, error) {
	switch m := v.(type) {
	case json.RawMessage:
		if m == nil {
			return []byte("null"), nil
		}
		return m, nil
	case json.Marshaler:
		b, err := m.MarshalJSON()
		if err != nil {
			return nil, err
		}
		if !json.Valid(b) {
			return nil, fmt.Errorf("%T.MarshalJSON returned invalid JSON", v)
		}
		return b, nil
	}
	return json.Marshal(v)
}

// decode is json.Unmarshal, except that a json.RawMessage gets the bytes as
// they are, and that a json.Unmarshaler is handed the bytes without
// encoding/json's scan of them first: inputs and outputs were checked when
// they were encoded (see encode), and a type that decodes itself (without
// reflection, for speed) checks what it reads.
func decode(data []byte, v any) error {
	switch t := v.(type) {
	case *json.RawMessage:
		*t = append((*t)[:0], data...)
		return nil
	case json.Unmarshaler:
		return t.UnmarshalJSON(data)
	}
	return json.Unmarshal(data, v)
}
