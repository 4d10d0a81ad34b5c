package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"fanout/destination"
	"fanout/destination/match"
	"fanout/dispatch"
)

// Replay (backfill): POST /v1/destinations/{id}/replay gives a destination
// a delivery of every stored event of a time range that it wants (it was
// added later, was disabled, or lost what it received).
//
// A replay is a job: a durable function, replayEvents, whose every attempt
// handles one page of events in id (time) order and records its cursor and
// counts in a document (kind "replay") before it snoozes, to run again at
// once for the next page. Memory is one page whatever the range. Each
// delivery it creates is attached to its event (dispatch.Runtime.Attach):
// an ordinary delivery, signed, retried, listed with the event's others
// and among the dead letters if it fails, and the event is delivering
// again until it is done. A replica that dies in the middle leaves the job
// leased; once the lease expires, any replica runs it again from its
// recorded cursor. A page done twice (the replica died after attaching,
// before recording) creates nothing twice: an event that has a delivery to
// the destination is skipped, or with "force", one that has a delivery
// from this job.

// replayKind is the document kind of a replay's progress.
const replayKind = "replay"

// Bounds of one page of a replay.
const (
	replayPage = 1000
	replayScan = 10000
	// replayCountBound bounds the count a dry run makes.
	replayCountBound = 100000
	// replayKeep is how many finished replays are kept for GET.
	replayKeep = 200
)

// ReplayRequest is the body of POST /v1/destinations/{id}/replay.
type ReplayRequest struct {
	Since string   `json:"since"`
	Until string   `json:"until"`
	Types []string `json:"types"`
	// Force replays events the destination has a delivery of already.
	Force bool `json:"force"`
	// DryRun counts the events instead of replaying them.
	DryRun bool `json:"dry_run"`
}

// replayJob is the input of replayEvents.
type replayJob struct {
	Destination string    `json:"destination"`
	Since       time.Time `json:"since"`
	Until       time.Time `json:"until"`
	Types       []string  `json:"types,omitempty"`
	Force       bool      `json:"force,omitempty"`
	// TenantKey is the key of the events the destination's tenant may
	// get ("" is the default tenant's, and every job's from before
	// tenants); AllTenants, for an operator's destination of every
	// tenant, any key.
	TenantKey  string `json:"tenant_key,omitempty"`
	AllTenants bool   `json:"all_tenants,omitempty"`
}

// ReplayView is a replay and how far it got: GET /v1/replays/{id}, and the
// document it keeps.
type ReplayView struct {
	ID          string    `json:"id"`
	Destination string    `json:"destination"`
	Since       time.Time `json:"since"`
	Until       time.Time `json:"until"`
	Types       []string  `json:"types,omitempty"`
	Force       bool      `json:"force,omitempty"`
	// State is queued, running, done or failed.
	State string `json:"state"`
	// Progress is the share of the time range done, from 0 to 1.
	Progress float64 `json:"progress"`
	// Cursor is the last event handled.
	Cursor string `json:"cursor,omitempty"`
	// Total is how many events of the range the destination wants, counted
	// when the job started, up to a bound (TotalMore: there are more).
	Total     int64 `json:"total"`
	TotalMore bool  `json:"total_more,omitempty"`
	// Scanned events were looked at; Created got a delivery; Skipped had
	// one already; Gone were deleted (by retention) before their turn.
	Scanned    int64      `json:"scanned"`
	Created    int64      `json:"created"`
	Skipped    int64      `json:"skipped"`
	Gone       int64      `json:"gone"`
	Error      string     `json:"error,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// ReplayCount is the answer of a dry run.
type ReplayCount struct {
	Events int `json:"events"`
	// More says the count stopped at its bound (replayCountBound).
	More bool `json:"more"`
}

// newReplayFunction is the durable function of replay jobs.
func newReplayFunction(s *Service) *dispatch.Function[replayJob, ReplayCount] {
	return dispatch.Func("replayEvents", s.replayPage)
}

// CheckReplay validates a replay request for a destination.
func (s *Service) CheckReplay(ctx context.Context, scope Scope, id string, in *ReplayRequest, now time.Time) (*replayJob, error) {
	d, err := s.Destination(scope, id)
	if err != nil {
		return nil, err
	}
	job := &replayJob{Destination: d.ID, Types: in.Types, Force: in.Force, AllTenants: d.AllTenants}
	if !d.AllTenants {
		// Only the events of the destination's own tenant: a replay
		// range is never a way into another tenant's history.
		if job.TenantKey, err = s.tenants.key(ctx, d.Owner()); err != nil {
			return nil, err
		}
	}
	if in.Since == "" {
		return nil, Invalid("since is required: the start of the time range to replay (RFC 3339)")
	}
	if job.Since, err = parseTime("since", in.Since); err != nil {
		return nil, err
	}
	if job.Until, err = parseTime("until", in.Until); err != nil {
		return nil, err
	}
	if job.Until.IsZero() || job.Until.After(now) {
		job.Until = now
	}
	if !job.Since.Before(job.Until) {
		return nil, Invalid("since must be before until (and before now)")
	}
	if len(in.Types) > MaxTypePatterns {
		return nil, Invalid("types has more than %d entries", MaxTypePatterns)
	}
	for _, t := range in.Types {
		if _, _, _, err := typeFilter(t); err != nil || t == "" || strings.Contains(t, ",") {
			return nil, Invalid("types entries are event types, exact or prefix.* (%q)", t)
		}
	}
	return job, nil
}

// Replay starts a replay job for a destination, or with DryRun counts the
// events it would look at.
func (s *Service) Replay(ctx context.Context, scope Scope, id string, in *ReplayRequest) (any, error) {
	now := time.Now().UTC()
	job, err := s.CheckReplay(ctx, scope, id, in, now)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return s.countReplay(ctx, job)
	}
	jobID, err := s.replayFn.Dispatch(ctx, *job)
	if errors.Is(err, dispatch.ErrStopped) {
		return nil, fmt.Errorf("%w: %w", ErrShuttingDown, err)
	}
	if err != nil {
		return nil, err
	}
	// The job writes its document on its first attempt (which may already
	// be running): until then GET shows it queued, from its call.
	return &ReplayView{ID: jobID, Destination: job.Destination, Since: job.Since, Until: job.Until, Types: job.Types,
		Force: job.Force, State: "queued", CreatedAt: now, UpdatedAt: now}, nil
}

// countReplay counts the events a replay would give a delivery, up to a
// bound.
func (s *Service) countReplay(ctx context.Context, job *replayJob) (*ReplayCount, error) {
	d, ok := s.Dests.Get(job.Destination)
	if !ok {
		return nil, NotFound("no destination with id %q", job.Destination)
	}
	p := s.ReplayScan(job, "")
	p.WithInput, p.MaxInputBytes, p.CountChildren = false, 0, false
	out := &ReplayCount{}
	scanned := 0
	for {
		p.Limit, p.Scan = replayCountBound, historyChunk
		res, err := s.store.CallScan(ctx, p)
		if err != nil {
			return nil, err
		}
		scanned += res.Scanned
		for _, c := range res.Calls {
			if c.Call.Tag != testEventType && routed(d, c.Call.Tag, s.replayEnvelope(ctx, d, c.Call), s.payloadOf(ctx, c.Call.ID)) {
				out.Events++
			}
		}
		if res.Next == "" {
			return out, nil
		}
		if scanned >= replayCountBound {
			out.More = true
			return out, nil
		}
		p.After = res.Next
	}
}

// replayEnvelope is what a payload filter sees of a stored event besides
// its payload: its tenant (the destination's, unless it takes every
// tenant's events) and when it arrived.
func (s *Service) replayEnvelope(ctx context.Context, d *destination.Destination, c *dispatch.Call) match.Envelope {
	env := match.Envelope{Type: c.Tag, Tenant: d.Owner(), Time: c.CreatedAt}
	if d.AllTenants {
		env.Tenant, _, _ = s.tenants.ofKey(ctx, c.Key)
	}
	return env
}

// payloadOf returns a function that reads an event's payload when asked
// (none of a raw event: filterPayload):
// a replay reads none but those of operational events, which routing needs.
func (s *Service) payloadOf(ctx context.Context, id string) func() ([]byte, bool) {
	return func() ([]byte, bool) {
		c, err := s.store.CallGet(ctx, id)
		if err != nil {
			return nil, false
		}
		return filterPayload(c.Input), true
	}
}

// ReplayScan is the scan of a replay's page after cursor.
func (s *Service) ReplayScan(job *replayJob, cursor string) *dispatch.CallScanParams {
	key := &job.TenantKey
	if job.AllTenants {
		key = nil
	}
	p := &dispatch.CallScanParams{Function: s.fns.HandleEvent.Name(), Key: key, Ascending: true,
		CreatedAfter: job.Since, CreatedBefore: job.Until, Before: idAt(job.Until.Add(time.Millisecond)),
		After: idAt(job.Since.Add(-time.Millisecond)), Limit: replayPage, Scan: replayScan}
	if cursor != "" {
		p.After = cursor
	}
	for _, t := range job.Types {
		tags, prefixes, anyType, _ := typeFilter(t)
		if anyType {
			prefixes = []string{""}
		}
		p.Tags = append(p.Tags, tags...)
		p.TagPrefixes = append(p.TagPrefixes, prefixes...)
	}
	return p
}

// replayPage is one attempt of a replay job: the next page of events.
func (s *Service) replayPage(ctx context.Context, job replayJob) (ReplayCount, error) {
	info, _ := dispatch.CallFromContext(ctx)
	v, version, err := s.loadReplay(ctx, info.ID)
	if errors.Is(err, ErrNotFound) {
		// The first attempt: count what there is to do, for the progress.
		now := time.Now().UTC()
		v = &ReplayView{ID: info.ID, Destination: job.Destination, Since: job.Since, Until: job.Until, Types: job.Types,
			Force: job.Force, CreatedAt: info.CreatedAt, UpdatedAt: now}
		if count, err := s.countReplay(ctx, &job); err == nil {
			v.Total, v.TotalMore = int64(count.Events), count.More
		}
	} else if err != nil {
		return ReplayCount{}, fmt.Errorf("%w: read the replay's progress: %v", dispatch.ErrTemporary, err)
	}
	if v.State == "done" {
		return ReplayCount{Events: int(v.Created)}, nil
	}
	v.State = "running"
	d, ok := s.Dests.Get(job.Destination)
	if !ok {
		v.State, v.Error = "failed", "destination "+job.Destination+" was deleted"
		_ = s.saveReplay(ctx, v, version)
		return ReplayCount{}, fmt.Errorf("%w: %s", dispatch.ErrPermanent, v.Error)
	}
	res, err := s.store.CallScan(ctx, s.ReplayScan(&job, v.Cursor))
	if err != nil {
		return ReplayCount{}, fmt.Errorf("%w: read events: %v", dispatch.ErrTemporary, err)
	}
	var children []*dispatch.Call
	var events []string // the event of each child
	tag := "replay:" + info.ID
	for _, c := range res.Calls {
		if c.Call.Tag == testEventType || !routed(d, c.Call.Tag, s.replayEnvelope(ctx, d, c.Call), s.payloadOf(ctx, c.Call.ID)) {
			continue
		}
		// A delivery carries no copy of its event: it reads its parent's
		// input (see Message).
		child, err := s.fns.PublishEvent.BuildCall(Message{DestinationID: d.ID})
		if err != nil {
			return ReplayCount{}, err
		}
		child.ParentID, child.Tag = c.Call.ID, tag
		// A replay comes after its key's order moved on: out of it, marked.
		child.OutOfOrder = d.Ordering != nil
		children = append(children, child)
		events = append(events, c.Call.ID)
	}
	unless := dispatch.AttachUnlessKey
	if job.Force {
		unless = dispatch.AttachUnlessKeyTag
	}
	cursor, busy := res.Next, false
	if len(children) > 0 {
		out, err := s.rt.Attach(ctx, &dispatch.CallAttachParams{Calls: children, Unless: unless})
		if err != nil {
			return ReplayCount{}, fmt.Errorf("%w: %v", dispatch.ErrTemporary, err)
		}
		for i, o := range out {
			if o.Outcome == dispatch.AttachBusy {
				// Being fanned out right now: this page again from
				// here, in a moment; what is before it is done.
				busy = true
				cursor = v.Cursor
				if i > 0 {
					cursor = events[i-1]
				}
				break
			}
			switch o.Outcome {
			case dispatch.Attached:
				v.Created++
			case dispatch.AttachSkipped:
				v.Skipped++
			case dispatch.AttachNoParent:
				v.Gone++
			}
		}
	}
	if !busy {
		v.Scanned += int64(res.Scanned)
		if cursor == "" && len(res.Calls) > 0 {
			cursor = res.Calls[len(res.Calls)-1].Call.ID
		}
	}
	if cursor != "" {
		v.Cursor = cursor
	}
	done := res.Next == "" && !busy
	now := time.Now().UTC()
	v.UpdatedAt = now
	if done {
		v.State, v.FinishedAt = "done", &now
	}
	if err := s.saveReplay(ctx, v, version); err != nil {
		return ReplayCount{}, fmt.Errorf("%w: record the replay's progress: %v", dispatch.ErrTemporary, err)
	}
	switch {
	case done:
		s.trimReplays(ctx)
		return ReplayCount{Events: int(v.Created)}, nil
	case busy:
		return ReplayCount{}, dispatch.Snooze(time.Second)
	}
	return ReplayCount{}, dispatch.Snooze(0)
}

// loadReplay reads a replay's document and its version.
func (s *Service) loadReplay(ctx context.Context, id string) (*ReplayView, int64, error) {
	doc, err := s.store.DocGet(ctx, replayKind, id)
	if errors.Is(err, dispatch.ErrNotFound) {
		return nil, 0, NotFound("no replay with id %q", id)
	}
	if err != nil {
		return nil, 0, err
	}
	var v ReplayView
	if err := json.Unmarshal(doc.Data, &v); err != nil {
		return nil, 0, fmt.Errorf("replay %s: %w", id, err)
	}
	return &v, doc.Version, nil
}

// saveReplay writes a replay's document: a new one when version is 0,
// else over that version.
func (s *Service) saveReplay(ctx context.Context, v *ReplayView, version int64) error {
	v.Progress = 0 // computed when read
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	doc := &dispatch.Doc{Kind: replayKind, ID: v.ID, Data: data, Version: version}
	if version == 0 {
		return s.store.DocCreate(ctx, doc)
	}
	return s.store.DocUpdate(ctx, doc)
}

// trimReplays deletes the oldest finished replays past replayKeep.
func (s *Service) trimReplays(ctx context.Context) {
	list, err := s.Replays(ctx, AllTenants(), "")
	if err != nil || len(list) <= replayKeep {
		return
	}
	for _, v := range list[replayKeep:] {
		if v.State == "done" || v.State == "failed" {
			_ = s.store.DocDelete(ctx, replayKind, v.ID)
		}
	}
}

// Replay returns a replay job and how far it got.
func (s *Service) ReplayJob(ctx context.Context, scope Scope, id string) (*ReplayView, error) {
	v, _, err := s.loadReplay(ctx, id)
	c, cerr := s.store.CallGet(ctx, id)
	if cerr != nil && !errors.Is(cerr, dispatch.ErrNotFound) {
		return nil, cerr
	}
	if c != nil && c.Function != s.replayFn.Name() {
		c = nil
	}
	switch {
	case errors.Is(err, ErrNotFound) && c != nil:
		// Not started yet, and its document was not written.
		var job replayJob
		if json.Unmarshal(c.Input, &job) != nil {
			return nil, NotFound("no replay with id %q", id)
		}
		v = &ReplayView{ID: id, Destination: job.Destination, Since: job.Since, Until: job.Until, Types: job.Types,
			Force: job.Force, State: "queued", CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt}
	case err != nil:
		return nil, err
	}
	if c != nil && c.State == dispatch.StateFailed && v.State != "done" {
		v.State, v.Error = "failed", c.Error
	}
	if !s.destinationInScope(scope, v.Destination) {
		return nil, NotFound("no replay with id %q", id)
	}
	if v.State == "" {
		v.State = "queued"
	}
	v.Progress = replayProgress(v)
	return v, nil
}

// replayProgress is the share of a replay done: of the events counted at
// its start, or when there were too many to count, of its time range, from
// its cursor (ids carry their time).
func replayProgress(v *ReplayView) float64 {
	if v.State == "done" {
		return 1
	}
	if v.Total > 0 && !v.TotalMore {
		return min(1, float64(v.Created+v.Skipped+v.Gone)/float64(v.Total))
	}
	t, ok := idTime(v.Cursor)
	span := v.Until.Sub(v.Since)
	if !ok || span <= 0 {
		return 0
	}
	return min(1, max(0, float64(t.Sub(v.Since))/float64(span)))
}

// Replays lists replay jobs, newest first, of one destination or all.
func (s *Service) Replays(ctx context.Context, scope Scope, dest string) ([]*ReplayView, error) {
	docs, err := s.store.DocList(ctx, replayKind)
	if err != nil {
		return nil, err
	}
	out := []*ReplayView{}
	for _, d := range docs {
		var v ReplayView
		if json.Unmarshal(d.Data, &v) != nil || (dest != "" && v.Destination != dest) || !s.destinationInScope(scope, v.Destination) {
			continue
		}
		v.Progress = replayProgress(&v)
		out = append(out, &v)
	}
	slices.SortFunc(out, func(a, b *ReplayView) int { return strings.Compare(b.ID, a.ID) })
	return out, nil
}
