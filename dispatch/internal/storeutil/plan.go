package storeutil

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"fanout/dispatch"
)

// The drivers' shared part of local calls (dispatch.Call.Local): the plan a
// parent keeps of the children that run in its owner's process without a
// row of their own until they end.
//
// A plan is stored in the parent's row, in one column, so that the suspend
// that starts the children stays one write. Its encoding is the drivers'
// business, not the runtime's: a version byte, then the gather, how many
// children the gather has in all (local or not), the creation time, the
// number of planned children, and per child its index, function, key, tag and input,
// each string or byte slice as a uvarint length and its bytes. It is small
// (a fanout delivery's is its key and "{}"), and read only when a plan must
// be shown or turned into rows: after a crash, at shutdown, or for a
// listing.

const planVersion = 1

// Plan is the decoded plan of a parent.
type Plan struct {
	Gather int
	// Total is how many children the gather has, planned or stored: the
	// plan is complete once the gather has that many rows.
	Total     int
	CreatedAt time.Time
	Children  []PlanChild
}

// PlanChild is one planned child.
type PlanChild struct {
	Index    int
	Function string
	Key      string
	Tag      string
	Input    []byte
}

// EncodePlan encodes the local children of one gather of a parent, which
// has total children in all; nil for none.
func EncodePlan(children []*dispatch.Call, total int) []byte {
	if len(children) == 0 {
		return nil
	}
	size := 1 + 3*binary.MaxVarintLen64
	for _, c := range children {
		size += 4*binary.MaxVarintLen64 + len(c.Function) + len(c.Key) + len(c.Tag) + len(c.Input)
	}
	b := make([]byte, 0, size)
	b = append(b, planVersion)
	b = binary.AppendUvarint(b, uint64(children[0].Gather))
	b = binary.AppendUvarint(b, uint64(total))
	b = binary.AppendVarint(b, children[0].CreatedAt.UnixNano())
	b = binary.AppendUvarint(b, uint64(len(children)))
	for _, c := range children {
		b = binary.AppendUvarint(b, uint64(c.Index))
		for _, s := range [...]string{c.Function, c.Key, c.Tag} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
		b = binary.AppendUvarint(b, uint64(len(c.Input)))
		b = append(b, c.Input...)
	}
	return b
}

var errPlan = errors.New("dispatch: corrupt plan of local calls")

// DecodePlan decodes a plan encoded by EncodePlan.
func DecodePlan(b []byte) (*Plan, error) {
	if len(b) == 0 || b[0] != planVersion {
		return nil, errPlan
	}
	d := planDecoder{b: b[1:]}
	p := &Plan{Gather: int(d.uvarint()), Total: int(d.uvarint()), CreatedAt: time.Unix(0, d.varint()).UTC()}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		return nil, errPlan
	}
	p.Children = make([]PlanChild, 0, n)
	for range n {
		c := PlanChild{Index: int(d.uvarint()), Function: d.str(), Key: d.str(), Tag: d.str(), Input: d.bytes()}
		if d.err != nil {
			return nil, d.err
		}
		p.Children = append(p.Children, c)
	}
	if len(d.b) != 0 {
		return nil, errPlan
	}
	return p, nil
}

// PlanHead decodes only the gather and total of a plan, without
// allocating: what a finish needs to know whether it completes the plan.
func PlanHead(b []byte) (gather, total int, err error) {
	if len(b) == 0 || b[0] != planVersion {
		return 0, 0, errPlan
	}
	d := planDecoder{b: b[1:]}
	gather, total = int(d.uvarint()), int(d.uvarint())
	return gather, total, d.err
}

type planDecoder struct {
	b   []byte
	err error
}

func (d *planDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err, d.b = errPlan, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *planDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err, d.b = errPlan, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *planDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.err, d.b = errPlan, nil
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *planDecoder) str() string { return string(d.bytes()) }

// ChildID is the id of child index of gather of parent (dispatch's rule:
// a child's id extends its parent's).
func ChildID(parent string, gather, index int) string {
	return parent + "." + strconv.Itoa(gather) + "." + strconv.Itoa(index)
}

// SplitChildID returns the parent of a child id, its gather and index; ok
// is false for an id that is not a child's.
func SplitChildID(id string) (parent string, gather, index int, ok bool) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return "", 0, 0, false
	}
	j := strings.LastIndexByte(id[:i], '.')
	if j <= 0 {
		return "", 0, 0, false
	}
	g, err1 := strconv.Atoi(id[j+1 : i])
	x, err2 := strconv.Atoi(id[i+1:])
	if err1 != nil || err2 != nil || g < 0 || x < 0 {
		return "", 0, 0, false
	}
	return id[:j], g, x, true
}

// LocalParent is what a driver read of a parent whose plan is set.
type LocalParent struct {
	ID           string
	Plan         []byte
	Meta         []byte
	LeaseOwner   string
	LeaseExpires time.Time
}

// PlannedCalls returns the calls of a parent's plan that have no row yet
// (exists says which do), as the store shows them: running, leased with
// their parent, attempt 1. withInput keeps their input.
func PlannedCalls(p *LocalParent, exists func(id string) bool, withInput bool) ([]*dispatch.Call, error) {
	plan, err := DecodePlan(p.Plan)
	if err != nil {
		return nil, fmt.Errorf("parent %s: %w", p.ID, err)
	}
	var out []*dispatch.Call
	for _, pc := range plan.Children {
		id := ChildID(p.ID, plan.Gather, pc.Index)
		if exists != nil && exists(id) {
			continue
		}
		c := &dispatch.Call{ID: id, Function: pc.Function, Key: pc.Key, Tag: pc.Tag, Meta: p.Meta,
			State: dispatch.StateRunning, Attempt: 1, RunAfter: plan.CreatedAt, BudgetStart: plan.CreatedAt,
			LeaseOwner: p.LeaseOwner, LeaseExpires: p.LeaseExpires, ParentID: p.ID, Gather: plan.Gather,
			Index: pc.Index, CreatedAt: plan.CreatedAt, UpdatedAt: plan.CreatedAt}
		if withInput {
			c.Input = pc.Input
		}
		out = append(out, c)
	}
	return out, nil
}

// MaterializeCalls returns the calls of a plan that have no row yet as rows
// to insert: pending at now, never tried, so that any process runs them
// (the children of a parent whose owner died, or stopped, before they
// ended).
func MaterializeCalls(p *LocalParent, exists func(id string) bool, now time.Time) ([]*dispatch.Call, error) {
	calls, err := PlannedCalls(p, exists, true)
	for _, c := range calls {
		c.State, c.Attempt, c.LeaseOwner, c.LeaseExpires = dispatch.StatePending, 0, "", time.Time{}
		c.RunAfter, c.UpdatedAt = now, now
	}
	return calls, err
}

// MergeByID merges two lists ordered by id into one, keeping at most limit
// (0: all).
func MergeByID(a, b []*dispatch.Call, limit int) []*dispatch.Call {
	if len(b) == 0 {
		return a
	}
	out := append(slices.Clip(a), b...)
	slices.SortFunc(out, func(x, y *dispatch.Call) int { return strings.Compare(x.ID, y.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Listed reports whether CallList with p lists c, a running call.
func Listed(p *dispatch.CallListParams, c *dispatch.Call) bool {
	return c.Function == p.Function && c.ID > p.After && (p.Key == nil || *p.Key == c.Key) &&
		(p.CreatedAfter.IsZero() || !c.CreatedAt.Before(p.CreatedAfter)) &&
		(p.CreatedBefore.IsZero() || c.CreatedAt.Before(p.CreatedBefore))
}

// AddCounts adds the running calls to counts ordered by function and state,
// as CallCounts returns them.
func AddCounts(counts []dispatch.CallCount, running []*dispatch.Call) []dispatch.CallCount {
	for _, c := range running {
		i := slices.IndexFunc(counts, func(n dispatch.CallCount) bool {
			return n.Function == c.Function && n.State == dispatch.StateRunning
		})
		if i < 0 {
			counts = append(counts, dispatch.CallCount{Function: c.Function, State: dispatch.StateRunning})
			i = len(counts) - 1
		}
		counts[i].N++
	}
	slices.SortFunc(counts, func(a, b dispatch.CallCount) int {
		return cmp.Or(strings.Compare(a.Function, b.Function), cmp.Compare(a.State, b.State))
	})
	return counts
}

// LocalPlan is what a parent's row holds of its local calls
// (dispatch.Call.Local): their plan, how many children their gather has in
// all, and the lease they run under (Expires in Unix nanoseconds).
type LocalPlan struct {
	Plan    []byte
	Total   int32
	Owner   string
	Expires int64
}

// SplitLocal returns the calls of an insert or a suspend that get a row
// now, and the plans of the local ones by parent id. The local children of
// one parent are those of one gather, given together with their siblings.
func SplitLocal(calls []*dispatch.Call) ([]*dispatch.Call, map[string]*LocalPlan) {
	var local map[string][]*dispatch.Call
	for _, c := range calls {
		if !c.Local {
			continue
		}
		if local == nil {
			local = make(map[string][]*dispatch.Call)
		}
		local[c.ParentID] = append(local[c.ParentID], c)
	}
	if local == nil {
		return calls, nil
	}
	total := make(map[string]int)
	for _, c := range calls {
		if c.ParentID != "" {
			total[c.ParentID]++
		}
	}
	plans := make(map[string]*LocalPlan, len(local))
	for parent, kids := range local {
		plans[parent] = &LocalPlan{Plan: EncodePlan(kids, total[parent]), Total: int32(total[parent]),
			Owner: kids[0].LeaseOwner, Expires: kids[0].LeaseExpires.UnixNano()}
	}
	return WithoutLocal(calls), plans
}

// WithoutLocal returns the calls that are not local, in a new slice when
// some are.
func WithoutLocal(calls []*dispatch.Call) []*dispatch.Call {
	if !slices.ContainsFunc(calls, func(c *dispatch.Call) bool { return c.Local }) {
		return calls
	}
	out := make([]*dispatch.Call, 0, len(calls))
	for _, c := range calls {
		if !c.Local {
			out = append(out, c)
		}
	}
	return out
}
